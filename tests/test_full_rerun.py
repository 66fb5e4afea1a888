"""ci/full_rerun.sh, the scheduled full rerun's script, run twice in a scratch clone on the CI
profile (cut to one experiment's chain) with a local-directory DVC remote and a bare git origin:
the first run pushes its outputs and records itself, the second diffs its metrics against the first."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

TARGETS = "train@s2_lenet_100"  # download, split, preprocess of MNIST, then 3 epochs on 100 images, scored


def sh(root: Path, *command: str, env: dict | None = None) -> str:
    done = subprocess.run(command, cwd=root, env=env or ENV, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "CI": "1",
       "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A git + DVC copy of the project on the CI profile, committed, with a bare repo as origin."""
    root = tmp_path_factory.mktemp("clone")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)
    (root / "dvc.lock").unlink(missing_ok=True)  # rebuild from nothing, as a fresh runner does
    sh(root, "python", "ci/profile.py", "params.yaml")
    sh(root, "git", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "CI profile")
    origin = tmp_path_factory.mktemp("origin")
    sh(origin, "git", "init", "-q", "--bare")
    sh(root, "git", "remote", "add", "origin", str(origin))
    return root


@pytest.mark.slow
def test_two_scheduled_runs_push_and_the_second_diffs_against_the_first(clone, tmp_path):
    refused = subprocess.run(["bash", "ci/full_rerun.sh"], cwd=clone, capture_output=True, text=True,
                             env={k: v for k, v in ENV.items() if k != "CI"}, check=False)
    assert refused.returncode == 2 and "run it in CI or in a scratch clone" in refused.stderr
    remote = tmp_path / "remote"
    env = {**ENV, "DVC_REMOTE_URL": str(remote), "TARGETS": TARGETS}
    summary = tmp_path / "summary.md"

    first = sh(clone, "bash", "ci/full_rerun.sh", str(summary), env=env)
    assert "Running stage 'train@s2_lenet_100'" in first
    recorded = sh(clone, "git", "ls-remote", "origin", "refs/heads/full-rerun").split()[0]
    assert recorded == sh(clone, "git", "rev-parse", "HEAD").strip()
    assert "dvc.lock" in sh(clone, "git", "show", "--name-only", "--format=", recorded)
    assert any(remote.rglob("*")), "nothing pushed to the DVC remote"
    text = summary.read_text()
    assert "(first scheduled run: no previous one on origin/full-rerun to compare with)" in text
    assert "artifacts/metrics/s2_lenet_100.json" in text  # dvc metrics show of this run

    summary.write_text("")
    sh(clone, "bash", "ci/full_rerun.sh", str(summary), env=env)
    second = sh(clone, "git", "ls-remote", "origin", "refs/heads/full-rerun").split()[0]
    assert second != recorded and sh(clone, "git", "rev-parse", f"{second}~1").strip() == recorded
    text = summary.read_text()
    assert f"Previous run: `{recorded[:7]}`" in text
    table = [line for line in text.splitlines() if line.startswith("| artifacts/metrics/s2_lenet_100.json")]
    assert any("| accuracy " in line for line in table), text  # the diff's row for the test accuracy
    header = next(line for line in text.splitlines() if line.startswith("| Path"))
    assert recorded[:7] in header and "Change" in header, header  # columns: first run -> this one
