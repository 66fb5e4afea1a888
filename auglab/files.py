"""Atomic file and directory writes, and checksums: nothing half-written ever sits at a final path.
PNGs are written by auglab.plots."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})  # disk full, quota, file-size limit


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def temp_path(final: Path) -> Path:
    """A hidden sibling of `final` unique to this process: `.name.<pid>.tmp`."""
    final = Path(final)
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def name_output(error: BaseException, temp: Path, final: Path) -> None:
    """Point a no-room OSError at the output being written (`final`, or the file inside it), not
    at a temp name that is gone by the time anyone reads the message; a write() error has no
    file name at all."""
    if not isinstance(error, OSError) or error.errno not in NO_ROOM:
        return
    if error.filename is None or Path(error.filename) == temp:
        error.filename = str(final)
    elif Path(error.filename).is_relative_to(temp):
        error.filename = str(final / Path(error.filename).relative_to(temp))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync it, then rename it into place."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:  # plain open: the umask decides permissions, as for any file
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        name_output(e, tmp, path)
        raise


def write_json_atomic(path: Path, obj: object) -> None:
    """Write `obj` as sorted, indented JSON (stable bytes for DVC) atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temp directory beside `final`; on success it replaces `final` whole.

    On any error the temp directory is removed and `final` (if it existed) is left untouched,
    so a failed stage never leaves a half-written output.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = temp_path(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        name_output(e, tmp, final)
        raise
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
