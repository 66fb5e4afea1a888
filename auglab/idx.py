"""The IDX format of MNIST-family files: big-endian header, then uint8 payload.

Layout: two zero bytes, a type code (0x08 = uint8), the number of dimensions, one big-endian
uint32 per dimension, then the C-order payload. We only read and write uint8, which is what
every MNIST-family file holds.

A raw dataset directory (the download stage's output) holds the four files uncompressed plus
manifest.json: the source used, the sha256 of every file, and the class counts.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import numpy as np

from auglab import AuglabError
from auglab.files import sha256_bytes, write_bytes_atomic, write_json_atomic

UINT8 = 0x08

# The four canonical files of an MNIST-family dataset, by role; `ndim` is what each must hold.
FILES = {
    "train_images": ("train-images-idx3-ubyte", 3),
    "train_labels": ("train-labels-idx1-ubyte", 1),
    "test_images": ("t10k-images-idx3-ubyte", 3),
    "test_labels": ("t10k-labels-idx1-ubyte", 1),
}


def encode(array: np.ndarray) -> bytes:
    """Canonical IDX bytes of a uint8 array (any ndim)."""
    if array.dtype != np.uint8:
        raise AuglabError(f"IDX encode: expected a uint8 array, got {array.dtype}")
    header = bytes([0, 0, UINT8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array).tobytes()


def decode(data: bytes, name: str, ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes into a read-only uint8 array; `name` is used in error messages.

    Raises AuglabError on a bad magic number, a type other than uint8, a wrong number of
    dimensions, or a payload whose length does not match the header.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise AuglabError(f"{name}: bad IDX magic 0x{data[:4].hex()}, expected 0x000008 then ndim")
    if data[2] != UINT8:
        raise AuglabError(f"{name}: IDX type code 0x{data[2]:02x}, expected 0x08 (uint8)")
    dims = data[3]
    if ndim is not None and dims != ndim:
        raise AuglabError(f"{name}: {dims} dimensions in the IDX header, expected {ndim}")
    header_len = 4 + 4 * dims
    if len(data) < header_len:
        raise AuglabError(f"{name}: IDX header truncated ({len(data)} bytes, needs {header_len})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=dims, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(data) - header_len
    if actual != expected:
        raise AuglabError(
            f"{name}: IDX payload has {actual} bytes, header {shape} says {expected}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def read_bytes(path: Path) -> bytes:
    """Bytes of an IDX file, gunzipped when the name ends in .gz; a truncated gzip raises."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise AuglabError(f"{path}: not a complete gzip file ({e})") from None


def read(path: Path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (.gz or not) into a uint8 array."""
    return decode(read_bytes(path), str(path), ndim)


def write_dataset(directory: Path, dataset: str, arrays: dict[str, np.ndarray], source: dict,
                  class_names: list[str]) -> dict:
    """Write the canonical uncompressed IDX files and manifest.json into `directory`."""
    classes = len(class_names)
    files = {}
    for role, array in arrays.items():
        name = FILES[role][0]
        data = encode(array)
        write_bytes_atomic(Path(directory) / name, data)
        files[name] = sha256_bytes(data)
    counts = {split: np.bincount(arrays[f"{split}_labels"], minlength=classes).tolist()
              for split in ("train", "test") if f"{split}_labels" in arrays}
    manifest = {"dataset": dataset, "source": source, "sha256": files, "class_counts": counts,
                "class_names": class_names, "test_labelled": "test_labels" in arrays}
    write_json_atomic(Path(directory) / "manifest.json", manifest)
    return manifest


def read_dataset(directory: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a raw dataset directory, checking every file against its manifest sha256."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except FileNotFoundError:
        raise AuglabError(f"{directory}/manifest.json: missing; run the download stage") from None
    arrays = {}
    for role, (name, ndim) in FILES.items():
        if name not in manifest["sha256"]:
            continue
        data = (directory / name).read_bytes()
        if sha256_bytes(data) != manifest["sha256"][name]:
            raise AuglabError(f"{directory / name}: sha256 differs from manifest.json (corrupted?)")
        arrays[role] = decode(data, str(directory / name), ndim)
    return arrays, manifest
