"""A 5-minute tour: the whole pipeline on the CI profile (ci/profile.py: real data, every stage
family, seconds per stage) in a scratch copy of this checkout, timed per stage; then where its
report is and how to see where the time went (bench/pipeline_cost.py). Your params.yaml, dvc.lock, outputs and DVC cache
are only read: the copy has its own git repository and cache.

Usage: python ci/tour.py [--full] [DIR]   (DIR: a new or empty folder; default a fresh temp folder)
`make tour` runs it with the venv on PATH. tests/test_pipeline.py builds its copy with `clone`.
--full keeps params.yaml as it is: a cold `make repro` of the default graph, timed, in the copy
(hours on a 2-core CPU; README quick start), whose dvc.lock then records a change to the stages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=tour", "-c", "user.email=tour@localhost"]


def clone(source: Path, dest: Path) -> None:
    """Copy what a clone of `source` would hold, with uncommitted edits (tracked and untracked
    files git does not ignore), into `dest` as a fresh one-commit git repository without
    dvc.lock, so `dvc repro` there builds every stage from nothing."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=source, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (source / name).is_file() and name != "dvc.lock":  # a deleted tracked file is still listed
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, dest / name)
    subprocess.run([*GIT, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*GIT, "commit", "-qm", f"copy of {source}"], cwd=dest, check=True)


def prepare(dest: Path, full: bool) -> None:
    """`dest` as the run starts: a copy of this checkout (`clone`), on the CI profile unless `full`."""
    clone(ROOT, dest)
    if not full:
        subprocess.run([sys.executable, "ci/profile.py", "params.yaml"], cwd=dest, check=True)
        subprocess.run([*GIT, "commit", "-qam", "CI profile"], cwd=dest, check=True)


def main(argv: list[str]) -> int:
    full = "--full" in argv
    argv = [arg for arg in argv if arg != "--full"]
    if len(argv) > 1 or any(arg.startswith("-") for arg in argv):
        print(f"error: {' '.join(argv)}: expected [--full] [DIR]\n\n{__doc__.strip()}", file=sys.stderr)
        return 2
    dest = Path(argv[0]).resolve() if argv else Path(tempfile.mkdtemp(prefix="auglab-tour-"))
    if dest.exists() and any(dest.iterdir()):
        print(f"error: {dest} is not empty, expected a new or empty folder", file=sys.stderr)
        return 1
    if dest.is_relative_to(ROOT):
        print(f"error: {dest} is inside {ROOT}, expected a folder outside the project", file=sys.stderr)
        return 1
    dest.mkdir(parents=True, exist_ok=True)
    print(f"== tour in {dest}: a copy of {ROOT} on {'its own params.yaml' if full else 'the CI profile'}", flush=True)
    prepare(dest, full)
    done = subprocess.run([sys.executable, "bench/pipeline_cost.py", "--record", str(dest)], cwd=dest, check=False)  # dvc repro, timed
    if done.returncode != 0:
        print(f"error: dvc repro failed in {dest}; its output is above", file=sys.stderr)
        return done.returncode
    subprocess.run([*GIT, "add", "-A"], cwd=dest, check=True)  # dvc.lock: `dvc metrics diff` compares to it
    subprocess.run([*GIT, "commit", "-qm", "tour run"], cwd=dest, check=True)
    print(f"\nreport: {dest / 'reports/report.md'} (figures in {dest / 'reports/figures'})")
    print(f"where the time went: python bench/pipeline_cost.py {dest}")
    if full:
        print(f"its dvc.lock, from this cold run: {dest / 'dvc.lock'}")
    # PYTHONPATH: the copy's stages import the copy's auglab, not the checkout the venv points at
    print(f"try a change: cd {dest} && PYTHONPATH={dest} dvc exp run -S train.experiments.s2_lenet_100.epochs=5"
          " && dvc metrics diff")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
