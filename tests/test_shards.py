"""The shard writer and the validating reader."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from auglab import AuglabError, shards


def layout(split="train", **kwargs):
    return shards.schema(height=28, width=28, dataset="toy", split=split, classes=10, **kwargs)


def rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.arange(n) * 3, (np.arange(n) % 10).astype(np.uint8), rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)


def write(directory, n=23, split="train", batch=None, **kwargs):
    ids, labels, images = rows(n)
    with shards.ShardWriter(directory, layout(split), n, rows_per_shard=10, rows_per_group=4, **kwargs) as w:
        step = batch or n
        for start in range(0, n, step):
            w.write(ids[start : start + step], labels[start : start + step], images[start : start + step])
        info = w.close()
    shards.write_manifest(directory, {split: info}, dataset="toy")
    return info


def digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_round_trip_shard_names_and_row_groups(tmp_path):
    info = write(tmp_path)
    assert info.shards == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert info.rows == 23 and info.class_counts == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", *info.shards]  # no temp files
    files = [pq.ParquetFile(tmp_path / name) for name in info.shards]
    assert [f.metadata.num_rows for f in files] == [10, 10, 3]
    assert [files[0].metadata.row_group(i).num_rows for i in range(files[0].num_row_groups)] == [4, 4, 2]
    split = shards.read_split(tmp_path, "train")
    ids, labels, images = rows(23)
    np.testing.assert_array_equal(split.ids, ids)
    np.testing.assert_array_equal(split.labels, labels)
    np.testing.assert_array_equal(split.images, images)
    assert split.metadata["dataset"] == "toy" and split.images.flags.writeable


def test_bytes_do_not_depend_on_batching(tmp_path):
    write(tmp_path / "a", batch=None)
    write(tmp_path / "b", batch=3)
    write(tmp_path / "c", batch=7)
    assert digests(tmp_path / "a") == digests(tmp_path / "b") == digests(tmp_path / "c")


def test_unlabelled_split(tmp_path):
    ids, _, images = rows(5)
    info = shards.write_split(tmp_path, layout("test", labelled=False), ids, None, images)
    shards.write_manifest(tmp_path, {"test": info})
    split = shards.read_split(tmp_path, "test")
    assert split.labels is None and split.metadata["labelled"] == "false"


def test_augmented_columns_round_trip(tmp_path):
    ids, labels, images = rows(6)
    origin = np.array(["real", "augment", "gan"] * 2)
    source_id = np.array([0, 0, -1, 3, 3, -1])
    with shards.ShardWriter(tmp_path, layout(augmented=True), 6) as w:
        w.write(ids, labels, images, source_id=source_id, origin=origin)
        shards.write_manifest(tmp_path, {"train": w.close()})
    split = shards.read_split(tmp_path, "train")
    assert split.extra["origin"].tolist() == origin.tolist()
    np.testing.assert_array_equal(split.extra["source_id"], source_id)


def test_writer_refuses_wrong_input(tmp_path):
    ids, labels, images = rows(5)
    with pytest.raises(AuglabError, match=r"expected images uint8 \(5, 28, 28\), got uint8 \(5, 32, 32\)"):
        shards.write_split(tmp_path, layout(), ids, labels, np.zeros((5, 32, 32), np.uint8))
    with pytest.raises(AuglabError, match="more than the declared 4 rows"):
        shards.ShardWriter(tmp_path, layout(), 4).write(ids, labels, images)
    writer = shards.ShardWriter(tmp_path, layout(), 9)
    writer.write(ids, labels, images)
    with pytest.raises(AuglabError, match="wrote 5 rows, declared 9"):
        writer.close()
    with pytest.raises(AuglabError, match=r"expected extra columns \['source_id', 'origin'\], got \[\]"):
        shards.ShardWriter(tmp_path, layout(augmented=True), 5).write(ids, labels, images)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_failure_inside_writer_leaves_no_temp_file(tmp_path):
    ids, labels, images = rows(12)
    with pytest.raises(RuntimeError), shards.ShardWriter(tmp_path, layout(), 12, rows_per_shard=10,
                                                          rows_per_group=4) as w:
        w.write(ids[:6], labels[:6], images[:6])
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = bytearray()
    elif how == "bit-flip":
        data[len(data) // 3] ^= 0x10  # inside the image column's data pages
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "empty", "bit-flip"])
def test_damaged_shard_is_named(tmp_path, how):
    write(tmp_path)
    target = tmp_path / "train-00001-of-00003.parquet"
    corrupt(target, how)
    with pytest.raises(AuglabError, match=rf"{target}: unreadable Parquet shard"):
        shards.read_split(tmp_path, "train")


def test_schema_must_match_exactly(tmp_path):
    """A shard whose label column is int64 (a silent cast elsewhere) is refused."""
    write(tmp_path)
    target = tmp_path / "train-00002-of-00003.parquet"
    table = pq.read_table(target)
    wrong = table.set_column(1, pa.field("label", pa.int64()), table.column("label").cast(pa.int64()))
    pq.write_table(wrong, target)
    with pytest.raises(AuglabError, match=rf"{target}: schema is .*label: int64.*, expected .*label: uint8"):
        shards.read_split(tmp_path, "train")


def test_missing_shard_and_row_count_mismatch(tmp_path):
    write(tmp_path)
    (tmp_path / "train-00001-of-00003.parquet").unlink()
    with pytest.raises(AuglabError, match=r"shards of 'train' are \['train-00000-of-00003.parquet', 'train-00002-of-00003.parquet'\], the manifest lists"):
        shards.read_split(tmp_path, "train")
    write(tmp_path / "b")
    manifest = shards.read_manifest(tmp_path / "b")
    manifest["splits"]["train"]["rows"] = 24
    info = shards.SplitInfo(**manifest["splits"]["train"])
    shards.write_manifest(tmp_path / "b", {"train": info})
    with pytest.raises(AuglabError, match=r"train-\*: 23 rows, the manifest says 24"):
        shards.read_split(tmp_path / "b", "train")
    with pytest.raises(AuglabError, match=r"no split 'val' in the manifest; has: train"):
        shards.read_split(tmp_path / "b", "val")
    with pytest.raises(AuglabError, match=r"manifest.json: missing"):
        shards.read_split(tmp_path / "nowhere", "train")


def test_label_out_of_range_is_refused(tmp_path):
    ids, labels, images = rows(5)
    labels[2] = 10
    info = shards.write_split(tmp_path, layout(), ids, labels, images)
    shards.write_manifest(tmp_path, {"train": info})
    with pytest.raises(AuglabError, match=r"label 10 out of range 0..9"):
        shards.read_split(tmp_path, "train")


def test_ids_must_increase(tmp_path):
    ids, labels, images = rows(5)
    info = shards.write_split(tmp_path, layout(), ids[::-1].copy(), labels, images)
    shards.write_manifest(tmp_path, {"train": info})
    with pytest.raises(AuglabError, match="ids are not strictly increasing"):
        shards.read_split(tmp_path, "train")
