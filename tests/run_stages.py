"""Run stage commands (`python stages/<name>.py ...`, as dvc.yaml writes them) one after another in
this one process: the same scripts with the same arguments, in the same folder, as DVC's one
process per stage, without paying Python's and torch's imports (~3 s) once per stage.

Each step is {"cmd": command, "params": text for params.yaml (optional), "hide": [files to move
aside as .<name>.hidden], "show": [hidden files to bring back]}. The run stops at the first step
that fails: its stage's own error line is on stderr, then `failed: <cmd>`, and the exit status
is the stage's.

Usage: python tests/run_stages.py STEPS.json   (run in the project folder)
"""

from __future__ import annotations

import json
import runpy
import shlex
import sys
from pathlib import Path


def run(step: dict) -> int:
    for name in step.get("hide", []):
        if Path(name).exists():
            Path(name).rename(f".{name}.hidden")
    for name in step.get("show", []):
        if Path(f".{name}.hidden").exists():
            Path(f".{name}.hidden").rename(name)
    if "params" in step:
        Path("params.yaml").write_text(step["params"])
    argv = shlex.split(step["cmd"])
    if argv[0] != "python" or not argv[1].startswith("stages/"):
        raise SystemExit(f"error: {step['cmd']!r} is not `python stages/<name>.py ...`")
    sys.argv = argv[1:]
    try:
        runpy.run_path(argv[1], run_name="__main__")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def main(path: str) -> int:
    for step in json.loads(Path(path).read_text()):
        status = run(step)
        if status:
            print(f"failed: {step['cmd']}", file=sys.stderr)
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
