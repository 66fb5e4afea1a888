import pytest

from auglab.files import atomic_dir, sha256_file, write_json_atomic


def test_atomic_dir_replaces_whole_on_success(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_dir(final) as staging:
        (staging / "new.txt").write_text("new")
        assert not (final / "new.txt").exists()  # nothing visible until done
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_keeps_the_good_output_on_failure(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "good.txt").write_text("good")
    with pytest.raises(RuntimeError), atomic_dir(final) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("stage failed")
    assert [p.name for p in final.iterdir()] == ["good.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_clears_what_a_killed_run_left(tmp_path):
    stale = tmp_path / ".out.99999.tmp"
    stale.mkdir()
    (stale / "partial").write_text("x")
    with atomic_dir(tmp_path / "out") as staging:
        (staging / "f").write_text("f")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_json_is_stable_and_hashable(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    write_json_atomic(tmp_path / "b.json", {"a": [1, 2], "b": 1})
    assert sha256_file(tmp_path / "a.json") == sha256_file(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_text().startswith('{\n  "a"')
