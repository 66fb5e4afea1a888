"""Split properties: disjoint, complete, stratified, nested, seeded, with clear errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from conftest import synthetic_arrays

from auglab import AuglabError, shards, split


def skewed_labels(seed=0):
    """1,000 labels with unequal classes, shuffled."""
    counts = np.array([50, 150, 80, 120, 100, 90, 110, 70, 130, 100])
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(10), counts)).astype(np.uint8)


def test_allocate_is_proportional_within_one():
    counts = np.array([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    share = split.allocate(counts, 12000)
    assert share.sum() == 12000
    assert np.all(np.abs(share - counts * 12000 / counts.sum()) < 1)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_stratified_is_disjoint_complete_and_stratified(seed):
    labels = skewed_labels()
    train, val = split.stratified(labels, 200, seed)
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(len(labels)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    counts = np.bincount(labels)
    expected = counts * 200 / counts.sum()
    assert np.all(np.abs(np.bincount(labels[val], minlength=10) - expected) <= 1)


def test_fashion_protocol_gives_4800_per_class():
    labels = np.repeat(np.arange(10), 6000).astype(np.uint8)
    train, val = split.stratified(labels, 12000, seed=0)
    assert np.bincount(labels[train]).tolist() == [4800] * 10
    assert np.bincount(labels[val]).tolist() == [1200] * 10


def test_same_seed_same_split_other_seed_other_split():
    labels = skewed_labels()
    a, b, c = (split.stratified(labels, 200, s)[1] for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_tail_takes_the_last_rows():
    train, val = split.tail(60000, 5000)
    assert train[-1] == 54999 and val[0] == 55000 and len(val) == 5000


def test_nested_balanced_subsets():
    labels = skewed_labels()
    subsets = split.nested_subsets(labels, [500, 100, 20], classes=10, seed=0)
    assert set(subsets[20]) <= set(subsets[100]) <= set(subsets[500])
    for size, rows in subsets.items():
        assert np.bincount(labels[rows], minlength=10).tolist() == [size // 10] * 10
    other = split.nested_subsets(labels, [100], classes=10, seed=1)
    assert not np.array_equal(other[100], subsets[100])


def test_make_splits_subsets_come_from_train_only():
    labels = skewed_labels()
    rows = split.make_splits(labels, "tail", 300, [100, 200], classes=10, seed=0)
    assert set(rows["train_100"]) <= set(rows["train_200"]) <= set(rows["train"])
    assert not set(rows["train_200"]) & set(rows["val"])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: split.stratified(np.array([0, 0, 0, 1, 2, 2, 2], np.uint8), 3, 0),
         "class 1 has 1 image(s): too few to put"),
        (lambda: split.stratified(skewed_labels(), 1000, 0), "val_size 1000: expected 1..999 for 1000 images"),
        (lambda: split.tail(10, 0), "val_size 0: expected 1..9 for 10 images"),
        (lambda: split.nested_subsets(skewed_labels(), [105], 10, 0), "subset 105: expected a multiple of 10"),
        (lambda: split.nested_subsets(skewed_labels(), [600], 10, 0),
         "subset 600: needs 60 images of class 0, the train split has 50"),
        (lambda: split.make_splits(skewed_labels(), "random", 10, [], 10, 0),
         "split mode 'random': expected 'stratified' or 'tail'"),
    ],
    ids=["class-too-small", "val-too-big", "tail-zero", "subset-not-multiple", "subset-too-big", "mode"],
)
def test_errors_name_the_value(call, message):
    with pytest.raises(AuglabError) as error:
        call()
    assert message in str(error.value)


def test_write_splits_is_byte_identical_for_a_seed(tmp_path):
    arrays = synthetic_arrays(per_class=30)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        split.write_splits(tmp_path / name, "toy", arrays, "stratified", 50, [10, 20], seed, list("abcdefghij"))
    digest = lambda d: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    manifest = shards.read_manifest(tmp_path / "a")
    assert {k: v["rows"] for k, v in manifest["splits"].items()} == {
        "train": 250, "val": 50, "train_10": 10, "train_20": 20, "test": 50
    }
    assert manifest["class_names"] == list("abcdefghij")
    test = shards.read_split(tmp_path / "a", "test")
    assert test.ids[0] == 300  # test ids follow the 300 official train rows
    np.testing.assert_array_equal(test.images, arrays["test_images"])
    val = shards.read_split(tmp_path / "a", "val")
    np.testing.assert_array_equal(val.images, arrays["train_images"][val.ids])


def test_slices_are_contiguous_rows_of_train_in_file_order():
    labels = (np.arange(300) % 10).astype(np.uint8)
    rows = split.make_splits(labels, "tail", 50, [100], 10, 0, {"first_20": [0, 20], "late": [200, 250]})
    assert rows["first_20"].tolist() == list(range(20)) and rows["late"].tolist() == list(range(200, 250))
    with pytest.raises(AuglabError, match=r"slice 'deep' \[240, 260\): expected rows of the train split only"):
        split.make_splits(labels, "tail", 50, [100], 10, 0, {"deep": [240, 260]})  # 250.. is val
    with pytest.raises(AuglabError, match=r"slice 'train_100': expected a name other than train, val, train_100"):
        split.make_splits(labels, "tail", 50, [100], 10, 0, {"train_100": [0, 10]})


def test_slice_must_have_start_before_stop(tmp_path):
    from auglab.params import DatasetSplit
    with pytest.raises(ValueError, match=r"slices.empty: expected \[start, stop\] with start < stop, got \[5, 5\]"):
        DatasetSplit(mode="tail", val_size=10, slices={"empty": [5, 5]})
