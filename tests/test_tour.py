"""ci/tour.py before its `dvc repro`: the scratch copy it makes (CI profile, or --full: params.yaml
as it is) and its refusals. tests/test_pipeline.py runs the copy's graph."""

from __future__ import annotations

import subprocess

import pytest
from conftest import ROOT, script_module
from ruamel.yaml import YAML

tour = script_module("ci/tour.py")


def commits(root) -> list[str]:
    return subprocess.run(["git", "log", "--format=%s"], cwd=root, capture_output=True, text=True, check=True).stdout.split("\n")[:-1]


@pytest.mark.parametrize("full", [False, True])
def test_the_copy_is_on_the_ci_profile_unless_full(tmp_path, full):
    tour.prepare(tmp_path, full)
    assert not (tmp_path / "dvc.lock").exists()  # every stage runs, and the lock written is this run's alone
    same = (tmp_path / "params.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()
    experiments = YAML(typ="safe").load(tmp_path / "params.yaml")["train"]["experiments"]
    assert same == full
    assert (set(experiments) == {"s2_lenet_100", "s2_lenet_synthetic", "s1_cnn_maxpool"}) != full
    assert commits(tmp_path) == ([] if full else ["CI profile"]) + [f"copy of {ROOT}"]


@pytest.mark.parametrize("argv", [["--fast", "{dir}"], ["{dir}", "b"], ["--full", "{dir}", "--x"]])
def test_anything_but_full_and_one_folder_is_refused_before_the_copy(argv, tmp_path, capsys):
    dest = tmp_path / "tour"
    assert tour.main([arg.format(dir=dest) for arg in argv]) == 2
    assert capsys.readouterr().err.startswith("error: ") and not dest.exists()
