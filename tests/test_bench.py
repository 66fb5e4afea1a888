"""bench/pipeline_cost.py's reading of a timed run: the logs its --record writes, and what it
counts as start-up; bench/noop_cost.py on a real DVC project; bench/train_speed.py's device choice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, script_module

pipeline_cost = script_module("bench/pipeline_cost.py")
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # the venv's dvc


def write_logs(root, log: list[tuple[float, str]], processes: list[tuple[float, float, str]]) -> None:
    logs = root / pipeline_cost.LOGS
    logs.mkdir(parents=True)
    (logs / "repro.log").write_text("".join(f"{t:.3f}\t{text}\n" for t, text in log))
    (logs / "processes.tsv").write_text("".join(f"{a:.3f}\t{b:.3f}\t0\t{argv}\n" for a, b, argv in processes))


def test_a_resumed_run_counts_each_run_up_to_where_it_stopped(tmp_path):
    """A run killed inside `train@b`, then resumed with --resume (appending to the logs): the
    table covers a, then b and c of the second run; the killed run's wall ends at DVC's start of
    b, and the hours between the runs count nowhere."""
    write_logs(tmp_path, [
        (100.0, "# dvc repro started"),
        (102.0, "Running stage 'train@a':"),
        (103.0, "a: mlp on 1,000 images (train)"),
        (112.0, "Running stage 'train@b':"),
        (113.0, "b: mlp on 1,000 images (train)"),  # killed here: no process row, no end line
        (5000.0, "# dvc repro started"),
        (5004.0, "Stage 'train@a' didn't change, skipping"),
        (5005.0, "Running stage 'train@b':"),
        (5020.0, "Running stage 'report':"),
        (5030.0, "# dvc repro ended: 0"),
    ], [
        (102.5, 110.0, "stages/train.py --experiment a"),
        (5005.5, 5018.0, "stages/train.py --experiment b"),
        (5020.5, 5029.0, "stages/report.py"),
    ])
    stages, dvc_start, wall = pipeline_cost.read_run(tmp_path)
    assert [s["name"] for s in stages] == ["train@a", "train@b", "report"]
    assert [s["script"] for s in stages] == ["train", "train", "report"]
    assert [round(s["after"], 3) for s in stages] == [2.0, 2.5, 1.0]  # a: up to the killed b's start
    assert [text for _, text in stages[0]["lines"]] == ["a: mlp on 1,000 images (train)"]
    assert round(dvc_start, 3) == 2.5 + 5.5
    assert round(wall, 3) == 12.0 + 30.0


def test_a_run_with_more_stages_than_timed_processes_is_refused(tmp_path):
    write_logs(tmp_path, [
        (0.0, "# dvc repro started"),
        (1.0, "Running stage 'train@a':"),
        (2.0, "Running stage 'train@b':"),
        (3.0, "Running stage 'train@c':"),
        (9.0, "# dvc repro ended: 0"),
    ], [(1.5, 1.8, "stages/train.py --experiment a")])
    with pytest.raises(SystemExit, match="3 stages ran but 1 processes were timed"):
        pipeline_cost.read_run(tmp_path)


@pytest.mark.slow  # a script as a subprocess
@pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a host without a GPU")
def test_train_speed_on_cuda_without_a_gpu_is_a_one_line_error():
    done = subprocess.run([sys.executable, "bench/train_speed.py", "--device", "cuda"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["error: device 'cuda': no CUDA device here; use 'auto' or 'cpu'"]


@pytest.mark.slow  # the script and its torch probes as subprocesses
def test_as_avx2_host_hides_avx512_and_bf16_from_torch_and_auglab():
    """Under bench/as_avx2_host.py a child process sees what an AVX2-only CPU shows: ATen at
    AVX2, no native bf16, so `precision: auto` trains in fp32."""
    done = subprocess.run([sys.executable, "bench/as_avx2_host.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    emulated = done.stdout.splitlines()[0]
    assert emulated.split(":", 1)[1].strip() == "capability AVX2, native bf16 False, precision auto -> None"


def test_as_avx2_host_passes_the_commands_exit_status_on():
    as_avx2_host = script_module("bench/as_avx2_host.py")
    assert as_avx2_host.main([sys.executable, "-c", "import os, sys; sys.exit(os.environ['ATEN_CPU_CAPABILITY'] == 'avx2' and 3)"]) == 3
    assert as_avx2_host.main(["no-such-command-here"]) == 127


def test_stages_recorded_in_a_copy_import_the_copys_auglab(tmp_path):
    """A script in stages/ puts stages/ first on sys.path, so `import auglab` finds the venv's
    editable install, which points at the checkout the venv was built in; a timed run in a copy
    (the tour) must run the copy's code, the code its dvc.lock hashes."""
    (tmp_path / "auglab").mkdir()
    (tmp_path / "auglab/__init__.py").write_text("")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages/probe.py").write_text("import auglab\nprint(auglab.__file__)\n")

    def found(env):
        return subprocess.run([sys.executable, "stages/probe.py"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, check=True).stdout.strip()

    assert found(pipeline_cost.own_code(tmp_path)) == str(tmp_path / "auglab/__init__.py")
    assert found(None) == str(ROOT / "auglab/__init__.py")  # what the copy ran before


@pytest.mark.slow  # a torch process
def test_the_first_optimizer_of_a_process_imports_torch_dynamo():
    """What pipeline_cost moves from "evaluation & other" into start-up for the families that train:
    with this torch, importing torch leaves torch._dynamo out and the first optimizer brings it in."""
    probe = ("import sys, torch; before = 'torch._dynamo' in sys.modules; "
             "torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], 0.1); print(before, 'torch._dynamo' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]
    assert 0.0 < pipeline_cost.lazy_dynamo(ROOT) < 30.0


@pytest.mark.slow  # real `dvc repro`s
def test_noop_cost_times_a_finished_project_and_refuses_a_changed_one(tmp_path):
    (tmp_path / "params.yaml").write_text("a: {n: 1}\nb: {n: 2}\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  a:\n    cmd: python -c \"open('a.txt', 'w').write('a')\"\n    params: [a]\n    outs: [a.txt]\n"
        "  b:\n    cmd: python -c \"open('b.txt', 'w').write('b')\"\n    deps: [a.txt]\n    params: [b]\n"
        "    outs: [b.txt]\n"
        "  c:\n    cmd: python -c \"open('c.txt', 'w').write('c')\"\n    deps: [b.txt]\n    outs: [c.txt]\n")
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, env=ENV, check=True)
    subprocess.run(["dvc", "repro", "-q"], cwd=tmp_path, env=ENV, check=True)
    lock = (tmp_path / "dvc.lock").read_bytes()
    bench = [sys.executable, str(ROOT / "bench/noop_cost.py"), str(tmp_path), "--repeats", "1"]
    done = subprocess.run(bench, env=ENV, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"no-op `dvc repro` in {tmp_path}: 3 stages, 2 with params; ")
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "as DVC runs it", "params.yaml parsed once", "of which `import dvc` + CLI",
        "per stage, as DVC runs it", "per stage, params.yaml parsed once"]
    assert (tmp_path / "dvc.lock").read_bytes() == lock  # no-ops: nothing re-ran

    (tmp_path / "params.yaml").write_text("a: {n: 3}\nb: {n: 2}\n")  # stage a (and b, c after it) changed
    done = subprocess.run(bench, env=ENV, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    refused = f"{tmp_path}: `dvc status` lists changed stages (or a `dvc repro` runs there); bench a finished run"
    assert done.stderr.splitlines() == [refused]
    assert (tmp_path / "dvc.lock").read_bytes() == lock  # the bench ran nothing
