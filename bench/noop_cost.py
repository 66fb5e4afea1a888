"""Bench: what a no-op `dvc repro` costs, and what a DVC-side cache of params.yaml would buy.

    python bench/noop_cost.py [DIR] [--repeats N]   # DIR: a finished run (`dvc status` clean)

DVC (3.67.1, the newest release) reads params.yaml once per params dependency of every stage it
checks, with ruamel's pure-Python constructor. The bench times, interleaved, N of each:
  - `dvc repro` as DVC runs it;
  - `dvc repro` in a process whose params-file loader is memoized (parsed once, a deep copy per
    stage): the most a DVC-side cache could save. DVC on disk is not changed.
and prints their medians and ratio, the stages the lock records (those with params), one parse of
params.yaml as DVC does it, and the cost per stage either way: how many stages a 2 s no-op holds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

MEMOIZED = """
import copy, sys
import dvc.dependency.param as param
load, parsed = param.load_path, {}
def load_path(path, fs, **kwargs):
    if path not in parsed:
        parsed[path] = load(path, fs, **kwargs)
    return copy.deepcopy(parsed[path])
param.load_path = load_path
from dvc.cli import main
sys.exit(main(["repro", "--quiet"]))
"""


def timed(command: list[str], root: Path, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=root, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def parse_ms(path: Path, repeats: int = 20) -> float:
    """Milliseconds for one parse of `path` the way DVC's params dependency does it."""
    from ruamel.yaml import YAML

    text = path.read_text()
    started = time.perf_counter()
    for _ in range(repeats):
        YAML(typ="safe").load(text)
    return (time.perf_counter() - started) / repeats * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, nargs="?", default=ROOT, help="a finished DVC run (default: this one)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kind (default 3)")
    args = parser.parse_args()
    root = args.dir.resolve()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # the venv's dvc
    status = subprocess.run(["dvc", "status", "--json"], cwd=root, env=env, capture_output=True, text=True, check=False)
    if status.returncode or json.loads(status.stdout or "{}"):
        print(f"{root}: `dvc status` lists changed stages (or a `dvc repro` runs there); bench a finished run",
              file=sys.stderr)
        return 1
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    with_params = sum(1 for stage in stages.values() if stage.get("params"))
    plain, memoized = [], []
    for _ in range(args.repeats):  # interleaved: load on the 2 cores moves both alike
        plain.append(timed(["dvc", "repro", "--quiet"], root, env))
        memoized.append(timed([sys.executable, "-c", MEMOIZED], root, env))
    imports = timed([sys.executable, "-c", "import dvc.repo, dvc.cli"], root, env)
    as_is, once = statistics.median(plain), statistics.median(memoized)
    print(f"no-op `dvc repro` in {root}: {len(stages)} stages, {with_params} with params; "
          f"one parse of params.yaml as DVC does it: {parse_ms(root / 'params.yaml'):.0f} ms")
    print(f"  as DVC runs it:                  {as_is:.2f} s (median of {' s, '.join(f'{t:.2f}' for t in plain)} s)")
    print(f"  params.yaml parsed once:         {once:.2f} s ({once / as_is:.2f}x; "
          f"{' s, '.join(f'{t:.2f}' for t in memoized)} s)")
    print(f"  of which `import dvc` + CLI:     {imports:.2f} s")
    for label, total in (("as DVC runs it", as_is), ("params.yaml parsed once", once)):
        per_stage = (total - imports) / len(stages)
        print(f"  per stage, {label + ':':<25}{per_stage * 1000:.0f} ms: a 2 s no-op holds "
              f"~{max(0.0, 2.0 - imports) / per_stage:.0f} stages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
