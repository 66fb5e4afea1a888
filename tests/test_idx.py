import gzip
import re

import numpy as np
import pytest

from auglab import AuglabError, idx


def test_round_trip_matches_official_header_layout():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = idx.encode(images)
    assert data[:4] == bytes([0, 0, 0x08, 3])
    assert data[4:16] == bytes([0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])
    np.testing.assert_array_equal(idx.decode(data, "x", ndim=3), images)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x00\x08\x01" + b"\x00\x00\x00\x01" + b"\x07", "bad IDX magic 0x01000801"),
        (b"\x00\x00\x0d\x01" + b"\x00\x00\x00\x01" + b"\x00\x00\x00\x00", "IDX type code 0x0d, expected 0x08 (uint8)"),
        (b"\x00\x00\x08\x03" + b"\x00\x00\x00\x01", "IDX header truncated"),
        (b"\x00\x00\x08\x01" + b"\x00\x00\x00\x05" + b"\x01\x02", "IDX payload has 2 bytes, header (5,) says 5"),
        (b"\x00\x00\x08\x01" + b"\x00\x00\x00\x01" + b"\x01\x02", "IDX payload has 2 bytes, header (1,) says 1"),
        (b"", "bad IDX magic 0x, expected"),
    ],
    ids=["bad-magic", "not-uint8", "short-header", "count-short", "count-long", "empty"],
)
def test_decode_rejects_bad_files(data, message):
    with pytest.raises(AuglabError, match=re.escape("labels.idx: " + message)):
        idx.decode(data, "labels.idx")


def test_decode_rejects_wrong_dimensions():
    data = idx.encode(np.zeros((4, 2, 2), dtype=np.uint8))
    with pytest.raises(AuglabError, match="3 dimensions in the IDX header, expected 1"):
        idx.decode(data, "train-labels", ndim=1)


def test_encode_rejects_non_uint8():
    with pytest.raises(AuglabError, match="expected a uint8 array, got int64"):
        idx.encode(np.zeros(3, dtype=np.int64))


def test_read_plain_and_gz(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    (tmp_path / "a").write_bytes(idx.encode(labels))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx.encode(labels)))
    np.testing.assert_array_equal(idx.read(tmp_path / "a", ndim=1), labels)
    np.testing.assert_array_equal(idx.read(tmp_path / "a.gz", ndim=1), labels)


def test_truncated_gzip_names_the_file(tmp_path):
    packed = gzip.compress(idx.encode(np.zeros((50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(AuglabError, match=r"train-images-idx3-ubyte.gz: not a complete gzip file"):
        idx.read(path)


def test_dataset_directory_round_trip_checks_every_file(tmp_path, arrays):
    manifest = idx.write_dataset(tmp_path, "toy", arrays, {"kind": "folder", "value": "x"}, list("0123456789"))
    assert manifest["class_counts"]["train"] == [20] * 10
    got, _ = idx.read_dataset(tmp_path)
    np.testing.assert_array_equal(got["train_images"], arrays["train_images"])
    path = tmp_path / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AuglabError, match=r"t10k-images-idx3-ubyte: sha256 differs from manifest.json"):
        idx.read_dataset(tmp_path)
