"""A learnable toy dataset on disk, laid out as the stages read it, for the tests that run stage
scripts in several processes (tests/test_distributed.py, tests/test_tune_shared.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import ROOT
from ruamel.yaml import YAML

from auglab import params, split

CLASSES = [str(k) for k in range(10)]


def digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) uint8, labels (n,) uint8): class k is a bright bar at row 2k + 4 over
    noise, so a small model learns it in an epoch or two."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 * label + 4 : 2 * label + 6, 4:24] = 255
    return images, labels


def project(root: Path, train_size: int = 320, val_size: int = 80) -> Path:
    """Write data/split/toy (train, val, train_100, test shards) and data/preprocessed/toy.json
    under `root`, and a params.yaml holding the real train.defaults and tune sections; returns root."""
    images, labels = digits(train_size + val_size + 40, seed=0)
    arrays = {"train_images": images[:-40], "train_labels": labels[:-40],
              "test_images": images[-40:], "test_labels": labels[-40:]}
    split.write_splits(root / "data/split/toy", "toy", arrays, "tail", val_size, [10], 0, CLASSES)
    stats = {"mean": float(images.mean() / 255), "std": float(images.std() / 255)}
    (root / "data/preprocessed").mkdir(parents=True)
    (root / "data/preprocessed/toy.json").write_text(json.dumps(stats))
    real = params.read_yaml(ROOT / "params.yaml")
    write_params(root, {"train": {"defaults": real["train"]["defaults"], "experiments": {}, "finetune": {},
                                  "recipes": {}, "members": {}},
                        "tune": real["tune"]})
    return root


def write_params(root: Path, data: dict) -> None:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False  # block style: DVC's C parser refuses `{url: https://...}`
    with open(root / "params.yaml", "w") as f:
        yaml.dump(data, f)
