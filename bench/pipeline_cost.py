"""Bench: where a `dvc repro` spends its wall time, per stage family: learning (epochs, GAN
steps), evaluation and other in-process work, process start-up + imports, data loading, and
DVC's bookkeeping between stages (hashing outputs, the cache, rewriting dvc.lock, checks).

    python bench/pipeline_cost.py --record DIR   # run `dvc repro` in DIR, timing every stage
    python bench/pipeline_cost.py --record DIR --targets grid batch   # `dvc repro grid batch`, timed
    python bench/pipeline_cost.py --record DIR --resume   # go on with an interrupted timed run
    python bench/pipeline_cost.py [DIR]          # the table for DIR's timed run (default: here)

`make tour` records its run; `--record` in the working copy times only the stages that are not
up to date (`dvc repro -f` is not offered: it would retrain everything). Recording puts a `python`
shim first on PATH for the stage commands, which logs each process's start and end, and
timestamps every output line; nothing in stages/ or auglab/ changes. The table then reads:
  - stage process wall and DVC's time between processes: the shim's log;
  - learning: train_seconds of DVCLive summaries (train, finetune, member) and sweep cells, the GAN's
    `seconds`; elsewhere each "epoch k/n: ... X img/s" line after "on N images" counts N / X s
    (gan_score's CAS classifiers); tune logs no epochs: its trials (training and per-epoch val)
    count as learning, an upper bound;
  - start-up + imports: `python stages/<script>.py --help` (imports, then argparse exits), once;
    in the families that train, plus the ~1 s torch's first optimizer spends importing
    torch._dynamo (torch.optim wraps Optimizer.__init__ in a lazy dynamo.disable), measured once;
  - data loading: from process start to the stage's first log line, which the training stages
    print after loading, less start-up; the data stages (download ... augment) are all data;
  - evaluation & other: the rest of the process (per-epoch val, scoring, checkpoints, plots).
Then a no-op `dvc repro` is timed twice. Two cores shared with other work move every number: compare
shares, not seconds, across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOGS = Path(".dvc/tmp/pipeline_cost")  # DVC's scratch space: ignored by git and DVC
DATA_FAMILIES = {"download", "split", "preprocess", "augment"}
LOG_AFTER_LOADING = {"train", "finetune", "member", "grid", "batch", "regularize", "gan", "gan_score", "tune"}
SHIM = """#!/bin/sh
# bench/pipeline_cost.py: times each stage process `dvc repro` starts, then runs the real python
start=$(date +%s.%N)
"{python}" "$@"
status=$?
printf '%s\\t%s\\t%s\\t%s\\n' "$start" "$(date +%s.%N)" "$status" "$*" >> "{log}"
exit $status
"""


def own_code(root: Path) -> dict[str, str]:
    """This environment with `root` first on PYTHONPATH, so `python stages/x.py` in `root` imports
    root's auglab: the venv's editable install points at the checkout it was built in, which for
    a tour's copy is another folder (whose edits the copy's dvc.lock would then not record)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root.resolve()), os.environ.get("PYTHONPATH")]))}


def record(root: Path, targets: list[str] | None = None, resume: bool = False) -> int:
    """Run `dvc repro [targets]` in `root` with the timing shim; every output line is echoed and
    logged with its arrival time. `resume` appends to the logs of an interrupted run instead of
    starting new ones. Returns dvc's exit status."""
    logs = root / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    if resume and not (logs / "repro.log").exists():
        raise SystemExit(f"error: --resume: no timed run in {root} to resume: expected {LOGS}/repro.log")
    for name in ("processes.tsv", "repro.log"):
        if not resume:
            (logs / name).unlink(missing_ok=True)
    shim = logs / "bin" / "python"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(SHIM.format(python=sys.executable, log=logs / "processes.tsv"))
    shim.chmod(0o755)
    env = {**own_code(root), "PATH": f"{shim.parent}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with open(logs / "repro.log", "a", buffering=1) as log:  # line by line: a killed run keeps its log
        log.write(f"{time.time():.3f}\t# dvc repro started\n")
        process = subprocess.Popen(["dvc", "repro", *(targets or [])], cwd=root, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(f"{time.time():.3f}\t{line.rstrip()}\n")
        status = process.wait()
        log.write(f"{time.time():.3f}\t# dvc repro ended: {status}\n")
    return status


def read_run(root: Path) -> tuple[list[dict], float, float]:
    """The timed stages in order ({name, script, start, end, after, lines}; `after`: DVC's time
    until the next stage or the end of its run), DVC's start before the first stage and the wall
    time, summed over the runs of the log (a run resumed with --resume is several)."""
    logs = root / LOGS
    if not (logs / "repro.log").exists():
        raise SystemExit(f"error: no timed run in {root}: expected {LOGS}/repro.log; "
                         f"run `python bench/pipeline_cost.py --record {root}` or `make tour`")
    runs: list[list[tuple[float, str]]] = []
    for row in (logs / "repro.log").read_text().splitlines():
        t, text = row.split("\t", 1)
        if text == "# dvc repro started" or not runs:
            runs.append([])
        runs[-1].append((float(t), text))
    processes = [row.split("\t") for row in (logs / "processes.tsv").read_text().splitlines()] \
        if (logs / "processes.tsv").exists() else []
    stages: list[dict] = []
    dvc_start = wall = 0.0
    for lines in runs:
        began, ended = lines[0][0], lines[-1][0]
        names = [(t, m.group(1)) for t, text in lines if (m := re.match(r"Running stage '([^']+)'", text))]
        timed = [p for p in processes if began <= float(p[0]) <= ended]
        if len(names) == len(timed) + 1:  # a killed or unfinished run: its last stage has no end
            ended, name = names.pop()  # the run counts up to DVC's start of that stage
            print(f"note: a run stopped inside {name}; the table covers the stages before it\n")
        if len(names) != len(timed):
            raise SystemExit(f"error: {len(names)} stages ran but {len(timed)} processes were timed; "
                             "expected one process per stage")
        run = []
        for (_, name), (start, end, _, argv) in zip(names, timed):
            start, end = float(start), float(end)
            script = re.match(r"stages/(\w+)\.py", argv)
            run.append({"name": name, "script": script.group(1) if script else None, "start": start, "end": end,
                        "lines": [(t, text) for t, text in lines if start <= t <= end]})
        for stage, following in zip(run, [*run[1:], None]):
            stage["after"] = (following["start"] if following else ended) - stage["end"]
        dvc_start += (run[0]["start"] if run else ended) - began
        wall += ended - began
        stages += run
    return stages, dvc_start, wall


def logged_learning(stage: dict) -> float:
    """Seconds of epochs from the stage's log: N / (img/s) per epoch line, N from "on N images"."""
    seconds, images = 0.0, None
    for _, text in stage["lines"]:
        if m := re.search(r" on ([\d,]+) (?:\w+ )?images", text):
            images = int(m.group(1).replace(",", ""))
        elif (m := re.match(r"epoch \d+/\d+: .*?([\d,]+) img/s$", text)) and images:
            seconds += images / int(m.group(1).replace(",", ""))
    return seconds


def learning(root: Path, stage: dict) -> float | None:
    """Seconds of learning the stage's outputs record; None where they record none."""
    family, _, key = stage["name"].partition("@")
    if family in ("train", "finetune", "member"):
        return json.loads((root / f"artifacts/models/{key}/live/metrics.json").read_text())["train_seconds"]
    if family in ("grid", "batch", "regularize"):  # the cells this process wrote, not those it kept
        cells = (root / f"artifacts/sweeps/{family}").rglob("*.json")
        return sum(json.loads(path.read_text())["train_seconds"] for path in cells
                   if stage["start"] <= path.stat().st_mtime <= stage["end"])
    if family == "gan":
        return json.loads((root / f"artifacts/gan/{key}/live/metrics.json").read_text())["seconds"]
    return logged_learning(stage) or None


def startup(root: Path, script: str) -> float:
    """Seconds for `python stages/<script>.py --help`: interpreter start-up and the imports."""
    started = time.perf_counter()
    subprocess.run([sys.executable, f"stages/{script}.py", "--help"], cwd=root, env=own_code(root), check=True,
                   capture_output=True)
    return time.perf_counter() - started


def lazy_dynamo(root: Path) -> float:
    """Seconds the first torch optimizer of a process takes (its lazy `import torch._dynamo`),
    timed inside a process that imported torch; the median of three."""
    code = ("import time, torch; weight = torch.nn.Parameter(torch.zeros(1)); started = time.perf_counter(); "
            "torch.optim.SGD([weight], 0.1); print(time.perf_counter() - started)")
    runs = [float(subprocess.run([sys.executable, "-c", code], cwd=root, check=True, capture_output=True,
                                 text=True).stdout) for _ in range(3)]
    return sorted(runs)[1]


def split(root: Path) -> tuple[dict[str, dict[str, float]], float, float]:
    """Seconds per family and part; DVC's own start (before the first stage) and the run's wall."""
    stages, dvc_start, wall = read_run(root)
    imports = {script: startup(root, script) for script in sorted({s["script"] for s in stages if s["script"]})}
    dynamo = lazy_dynamo(root)
    families: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for stage in stages:
        family = stage["name"].partition("@")[0]
        process, after = stage["end"] - stage["start"], stage["after"]
        imported = imports.get(stage["script"], 0.0)
        start_up = min(imported + (dynamo if family in LOG_AFTER_LOADING else 0.0), process)
        first_log = next((t for t, _ in stage["lines"]), stage["end"])
        if family in DATA_FAMILIES:
            loading = process - start_up
        elif family in LOG_AFTER_LOADING:
            loading = max(0.0, first_log - stage["start"] - imported)  # dynamo's import comes after the log line
        else:  # evaluate, ensemble, report: a test split of 10,000 images, inside evaluation
            loading = 0.0
        learned = 0.0 if family in DATA_FAMILIES else learning(root, stage)
        if learned is None:
            learned = process - start_up - loading if family == "tune" else 0.0
        row = families[family]
        row["stages"] += 1
        row["wall"] += process + after
        row["learning"] += learned
        row["start-up + imports"] += start_up
        row["data loading"] += loading
        row["evaluation & other"] += max(0.0, process - start_up - loading - learned)
        row["DVC bookkeeping"] += after
    return families, dvc_start, wall


def noop_repro(root: Path) -> list[float] | None:
    """Two timed `dvc repro` runs when everything is up to date, else None."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # the venv's dvc
    status = subprocess.run(["dvc", "status", "--json"], cwd=root, env=env, capture_output=True, text=True, check=False)
    if status.returncode or json.loads(status.stdout or "{}"):  # stages changed, or a run holds the lock
        return None
    times = []
    for _ in range(2):
        started = time.perf_counter()
        subprocess.run(["dvc", "repro"], cwd=root, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return times


COLUMNS = ("learning", "evaluation & other", "start-up + imports", "data loading", "DVC bookkeeping")


def table(families: dict[str, dict[str, float]], dvc_start: float, wall: float) -> str:
    """Markdown: one row per family, slowest first, then DVC's own start and the total."""
    head = ["family", "stages", "wall s", *(f"{c} s" for c in COLUMNS), "learning share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name: str, stages: str, values: dict[str, float], total: float) -> str:
        share = f"{values['learning'] / total:.0%}" if total else "-"
        return "| " + " | ".join([name, stages, f"{total:.1f}", *(f"{values[c]:.1f}" for c in COLUMNS), share]) + " |"

    for name, values in sorted(families.items(), key=lambda item: -item[1]["wall"]):
        lines.append(row(name, f"{values['stages']:.0f}", values, values["wall"]))
    lines.append(row("dvc start (before the first stage)", "", {c: 0.0 for c in COLUMNS[:-1]} | {"DVC bookkeeping": dvc_start},
                     dvc_start))
    totals = {c: sum(v[c] for v in families.values()) for c in COLUMNS}
    totals["DVC bookkeeping"] += dvc_start
    lines.append(row("**total**", f"{sum(v['stages'] for v in families.values()):.0f}", totals, wall))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, nargs="?", default=ROOT, help="a DVC project (default: this one)")
    parser.add_argument("--record", action="store_true", help="run `dvc repro` in DIR, timed, and stop")
    parser.add_argument("--targets", nargs="+", default=[], metavar="STAGE",
                        help="with --record: what `dvc repro` reproduces (stages or foreach groups; default all)")
    parser.add_argument("--resume", action="store_true",
                        help="with --record: continue an interrupted timed run, appending to its logs")
    args = parser.parse_args()
    if args.resume and not args.record:
        parser.error("--resume goes with --record")
    root = args.dir.resolve()
    if args.record:
        return record(root, args.targets, args.resume)
    families, dvc_start, wall = split(root)
    print(f"`dvc repro` in {root}: {wall:.0f} s wall, {sum(v['stages'] for v in families.values()):.0f} stages\n")
    print(table(families, dvc_start, wall))
    times = noop_repro(root)
    print("\nno-op `dvc repro`: " + (" s, ".join(f"{t:.2f}" for t in times) + " s" if times
                                      else "not timed: `dvc status` lists changed stages (or a `dvc repro` still runs)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
