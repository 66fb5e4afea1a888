"""Split the official train set into train/val, and draw nested class-balanced subsets of train.

Row ids are positions in the official files: train rows 0..N-1, test rows N..N+M-1, so every
id names one image of the dataset and augmented rows can point back at their source.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from auglab import AuglabError, shards

# Independent random streams from one seed: np.random.default_rng([seed, stream]).
STREAM_VAL, STREAM_SUBSETS = 0, 1


def allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split `total` over classes in proportion to `counts`, each within 1 (largest remainder)."""
    exact = counts * total / counts.sum()
    share = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - share), kind="stable")  # largest remainders first, ties by class
    share[order[: total - share.sum()]] += 1
    return share


def stratified(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class draw of `val_size` rows; returns sorted (train, val) row indices."""
    if not 0 < val_size < len(labels):
        raise AuglabError(f"val_size {val_size}: expected 1..{len(labels) - 1} for {len(labels)} images")
    counts = np.bincount(labels)
    val_counts = allocate(counts, val_size)
    rng = np.random.default_rng([seed, STREAM_VAL])
    val = []
    for label, (count, take) in enumerate(zip(counts, val_counts)):
        if count and not 0 < take < count:
            raise AuglabError(
                f"class {label} has {count} image(s): too few to put {take} in val "
                f"and at least one in both train and val"
            )
        val.append(rng.permutation(np.flatnonzero(labels == label))[:take])
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(labels)), val), val


def tail(count: int, val_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The last `val_size` rows are val (S2's protocol); returns (train, val) row indices."""
    if not 0 < val_size < count:
        raise AuglabError(f"val_size {val_size}: expected 1..{count - 1} for {count} images")
    return np.arange(count - val_size), np.arange(count - val_size, count)


def nested_subsets(labels: np.ndarray, sizes: list[int], classes: int, seed: int) -> dict[int, np.ndarray]:
    """Class-balanced subsets (size/classes per class), each containing every smaller one.

    One seeded permutation per class; a subset takes the first size/classes of each, which is
    what makes 100 within 1000 within 10000. Returns sorted row indices into `labels`.
    """
    for size in sizes:
        if size % classes:
            raise AuglabError(f"subset {size}: expected a multiple of {classes} (one share per class)")
    rng = np.random.default_rng([seed, STREAM_SUBSETS])
    orders = [rng.permutation(np.flatnonzero(labels == label)) for label in range(classes)]
    subsets = {}
    for size in sorted(sizes):
        per_class = size // classes
        for label, order in enumerate(orders):
            if len(order) < per_class:
                raise AuglabError(
                    f"subset {size}: needs {per_class} images of class {label}, "
                    f"the train split has {len(order)}"
                )
        subsets[size] = np.sort(np.concatenate([order[:per_class] for order in orders]))
    return subsets


def make_splits(
    train_labels: np.ndarray,
    mode: str,
    val_size: int,
    subsets: list[int],
    classes: int,
    seed: int,
    slices: dict[str, list[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Row indices into the official train set for train, val, `train_<size>` subsets and the
    named contiguous `slices` ([start, stop) in file order, which must lie inside train)."""
    if mode == "stratified":
        train, val = stratified(train_labels, val_size, seed)
    elif mode == "tail":
        train, val = tail(len(train_labels), val_size)
    else:
        raise AuglabError(f"split mode {mode!r}: expected 'stratified' or 'tail'")
    rows = {"train": train, "val": val}
    for size, chosen in nested_subsets(train_labels[train], subsets, classes, seed).items():
        rows[f"train_{size}"] = train[chosen]
    for name, (start, stop) in (slices or {}).items():
        if name in rows:
            raise AuglabError(f"slice {name!r}: expected a name other than {', '.join(rows)}")
        chosen = np.arange(start, stop)
        if stop > len(train_labels) or not np.isin(chosen, train).all():
            raise AuglabError(f"slice {name!r} [{start}, {stop}): expected rows of the train split only "
                              f"(the official train set has {len(train_labels)} rows, val takes {val_size})")
        rows[name] = chosen
    return rows


def write_splits(
    directory: Path,
    dataset: str,
    arrays: dict[str, np.ndarray],
    mode: str,
    val_size: int,
    subsets: list[int],
    seed: int,
    class_names: list[str],
    slices: dict[str, list[int]] | None = None,
) -> dict[str, shards.SplitInfo]:
    """Write train, val, train_<size> and test shards plus manifest.json into `directory`.

    `arrays` are the raw dataset (see idx.read_dataset); test rows get ids after the train rows.
    """
    classes = len(class_names)
    images, labels = arrays["train_images"], arrays["train_labels"]
    height, width = images.shape[1:]
    rows = make_splits(labels, mode, val_size, subsets, classes, seed, slices)
    written = {}
    for name, chosen in tqdm(rows.items(), desc=f"{dataset} splits", unit="split", file=sys.stderr, disable=None):
        layout = shards.schema(height=height, width=width, dataset=dataset, split=name, classes=classes)
        written[name] = shards.write_split(directory, layout, chosen, labels[chosen], images[chosen])
    if "test_images" in arrays:
        test_images, test_labels = arrays["test_images"], arrays.get("test_labels")
        layout = shards.schema(height=height, width=width, dataset=dataset, split="test",
                               classes=classes, labelled=test_labels is not None)
        test_ids = len(labels) + np.arange(len(test_images))
        written["test"] = shards.write_split(directory, layout, test_ids, test_labels, test_images)
    shards.write_manifest(directory, written, dataset=dataset, mode=mode, val_size=val_size, seed=seed,
                          class_names=class_names, **({"slices": slices} if slices else {}))
    return written
