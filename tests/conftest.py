"""Shared fixtures: a small synthetic MNIST-like dataset and the repository root."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
from pathlib import Path

# Under `pytest -n N` (make test) the workers share the host's cores: each, with the stage processes
# it starts, gets its share of OpenMP threads rather than all of them. Oversubscribed threads spin:
# tests/test_models.py's memorization tests beside a busy core took 38 s with 2 threads, 16 s with 1
# (12 s with 2 on an idle host). Set before anything here imports torch; an OMP_NUM_THREADS of the
# caller's stands.
if (workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // workers)))

import numpy as np
import pytest
from ruamel.yaml import YAML

from auglab import idx
from auglab.sources import Facts

ROOT = Path(__file__).resolve().parents[1]


def script_module(relative: str):
    """A script of the repository (stages/, ci/: scripts, not a package) loaded as a module."""
    spec = importlib.util.spec_from_file_location(Path(relative).stem, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

# Params files the tests write for DVC and the stages to read: in file order (sources are tried
# in order) and in block style (DVC's C parser, YAML 1.1, refuses `{url: https://...}`).
YAML_SAFE = YAML(typ="safe", pure=True)
YAML_SAFE.default_flow_style = False
YAML_SAFE.sort_base_mapping_type_on_output = False


def synthetic_arrays(per_class: int = 20, test_per_class: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Random 28x28 uint8 images, labels cycling 0..9 (so classes are balanced)."""
    rng = np.random.default_rng(seed)
    train_n, test_n = 10 * per_class, 10 * test_per_class
    return {
        "train_images": rng.integers(0, 256, (train_n, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(train_n) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (test_n, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(test_n) % 10).astype(np.uint8),
    }


def write_idx_folder(folder: Path, arrays: dict[str, np.ndarray], gz: bool = False) -> Facts:
    """Write the four IDX files into `folder` and return the Facts that verify them."""
    folder.mkdir(parents=True, exist_ok=True)
    md5, sha = {}, {}
    for role, (name, _) in idx.FILES.items():
        data = idx.encode(arrays[role])
        sha[role] = hashlib.sha256(data).hexdigest()
        packed = gzip.compress(data, mtime=0)
        md5[role] = hashlib.md5(packed).hexdigest()
        (folder / (f"{name}.gz" if gz else name)).write_bytes(packed if gz else data)
    return Facts(
        md5_gz=md5,
        sha256=sha,
        train_counts=tuple(np.bincount(arrays["train_labels"], minlength=10).tolist()),
        test_counts=tuple(np.bincount(arrays["test_labels"], minlength=10).tolist()),
    )


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    return synthetic_arrays()


# The longest file first: under `pytest -n 2 --dist loadfile` (make test) it starts at once on one
# worker while the other takes the rest, instead of starting last and running alone.
LONGEST_FIRST = ("test_pipeline.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: the rest keep their order
