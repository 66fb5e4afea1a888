"""A shared Optuna search: workers on one journal storage take trials from one study, none twice,
until it holds tune.trials; the tune stage alone writes the results, from the study."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
import toy
from conftest import ROOT
from test_tune import config, quadratic

from auglab import AuglabError, params, tune

ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("kind", ["journal", "database"])
def test_two_workers_on_one_storage_share_the_trials(tmp_path, kind):
    """Two workers in threads, each with its own storage object on one journal file or one SQLite
    database (standing in for PostgreSQL/MySQL), as processes would be; each one's first trial
    waits for the other's, so both are sure to run trials."""
    where = str(tmp_path / "study.journal") if kind == "journal" else f"sqlite:///{tmp_path}/study.db"
    budget = config(trials=10, startup_trials=3)
    met = threading.Barrier(2, timeout=120)
    ran: dict[str, int] = {}

    def objective(values, report):
        name = threading.current_thread().name
        ran[name] = ran.get(name, 0) + 1
        if ran[name] == 1:
            met.wait()  # both workers are inside a trial at once
        return quadratic(values, report)

    def work():
        study = tune.make_study(budget, "shared", tune.storage(where))
        tune.search(budget, objective, log=lambda line: None, study=study)

    workers = [threading.Thread(target=work, name=name) for name in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert ran["a"] >= 1 and ran["b"] >= 1 and ran["a"] + ran["b"] == 10  # shared, not run twice
    study = optuna.load_study(study_name="shared", storage=tune.storage(where))
    rows = tune.trial_rows(study, budget.space)
    assert [row["trial"] for row in rows] == list(range(10))
    assert {row["state"] for row in rows} <= {"complete", "pruned"}
    assert tune.best(study, budget.space)[1] == max(row["value"] for row in rows if row["state"] == "complete")


def test_trials_left_running_by_gone_processes_are_failed(tmp_path):
    study = tune.make_study(config(), "s", tune.storage(tmp_path / "study.journal"))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=False)
    host = socket.gethostname()
    dead, alive, elsewhere, _unclaimed = (study.ask() for _ in range(4))
    dead.set_user_attr("worker", f"{host}:{int(gone.stdout)}")  # exited and reaped: no such process
    alive.set_user_attr("worker", f"{host}:{os.getpid()}")
    elsewhere.set_user_attr("worker", f"{host}-other-machine:{int(gone.stdout)}")  # cannot be checked
    said = []
    tune.fail_abandoned(study, said.append)  # the unclaimed trial is younger than 30 s
    assert [t.state.name for t in study.trials] == ["FAIL", "RUNNING", "RUNNING", "RUNNING"]
    assert said == [f"tune: trial 0 was left running by process {int(gone.stdout)}, which is gone: marked failed"]
    tune.fail_abandoned(study, said.append, unclaimed=0.0)
    assert [t.state.name for t in study.trials] == ["FAIL", "RUNNING", "RUNNING", "FAIL"]
    assert said[-1] == "tune: trial 3 was left running by a process that never named itself (0 s): marked failed"


def test_first_opens_of_a_new_database_at_once_all_succeed(tmp_path):
    """Workers started together on a new database all create its tables at the same moment; the
    losers of that race ("table alembic_version already exists", seen in `make test-fast`) retry."""
    def open_it(where: str, start: threading.Barrier) -> None:
        start.wait()
        tune.make_study(config(), "shared", tune.storage(where))

    for round_ in range(3):
        where, start = f"sqlite:///{tmp_path}/round{round_}.db", threading.Barrier(4, timeout=60)
        with ThreadPoolExecutor(4) as pool:  # a worker's error is raised here
            list(pool.map(open_it, [where] * 4, [start] * 4))
        assert optuna.study.get_all_study_names(tune.storage(where)) == ["shared"]


def test_study_name_follows_the_params_and_not_the_storage():
    name = tune.study_name(config(), {"epochs": 3}, {"model": "cnn"})
    assert name == tune.study_name(config(storage="/shared/study.journal"), {"epochs": 3}, {"model": "cnn"})
    assert name.startswith("e-") and name != tune.study_name(config(seed=1), {"epochs": 3}, {"model": "cnn"})
    assert name != tune.study_name(config(), {"epochs": 4}, {"model": "cnn"})


def test_bad_storage_url_names_the_value():
    with pytest.raises(AuglabError, match=r"^tune.storage 'nosuchdb://x': cannot open .*expected a journal file path"):
        tune.storage("nosuchdb://x")
    with pytest.raises(params.ParamsError, match=r"tune.storage: expected str, got 3"):
        config(storage=3)


def stage(root: Path, outputs: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "stages/tune.py"), "--splits", "data/split/toy", "--shards", "data/split/toy",
            "--stats", "data/preprocessed/toy.json", "--checkpoint", "artifacts/checkpoints/tune_trial.pt",
            "--trials", f"{outputs}/trials.csv", "--history", f"{outputs}/history.png", "--best", f"{outputs}/best.json",
            "--study", "artifacts/tune/study.journal", *extra]


def tune_project(tmp_path: Path) -> Path:
    """The toy project with a 6-trial search over a small MLP's lr and batch size."""
    root = toy.project(tmp_path)
    data = params.read_yaml(root / "params.yaml")
    data["train"]["experiments"]["toy_mlp"] = {
        "dataset": "toy", "shards": "split/toy", "train": ["train"], "model": "mlp", "epochs": 2, "precision": "fp32",
        "model_kwargs": {"hidden": [32], "dropout": 0.0, "activation": "relu"}}
    data["tune"].update(experiment="toy_mlp", dataset="toy", shards="split/toy", budget={}, trials=6,
                        startup_trials=2, warmup_epochs=1,
                        space={"lr": {"key": "optimizer.lr", "low": 0.0001, "high": 0.01, "log": True},
                               "batch_size": {"key": "batch_size", "choices": [16, 32]}})
    toy.write_params(root, data)
    return root


@pytest.mark.slow
def test_stage_and_a_worker_share_one_study_and_the_stage_writes_once(tmp_path):
    root = tune_project(tmp_path)
    worker = subprocess.Popen(stage(root, "worker_outputs", "--worker"), cwd=root, env=ENV, text=True,
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    joined = worker.stderr.readline()  # the worker has opened the study and starts its trials
    assert joined.startswith("tune worker: study toy_mlp-"), joined
    leader = subprocess.run(stage(root, "artifacts/tune"), cwd=root, env=ENV, text=True, capture_output=True,
                            timeout=600, check=False)
    worker_log = joined + worker.stderr.read()
    assert worker.wait(timeout=600) == 0 and leader.returncode == 0, worker_log + leader.stderr
    name = joined.split()[3].rstrip(",")
    assert f"tune: study {name} on artifacts/checkpoints/tune_trial.journal" in leader.stderr  # the same study

    assert not (root / "artifacts/checkpoints/tune_trial.journal").exists()  # scratch: removed when done
    study = optuna.load_study(study_name=name, storage=tune.storage(root / "artifacts/tune/study.journal"))  # the copy
    trials = [t for t in study.trials if not t.user_attrs.get("over_budget")]
    assert sorted(t.number for t in trials) == list(range(6))  # no trial number twice, total = the budget
    by = {t.user_attrs["worker"] for t in trials}
    assert len(by) <= 2 and any(w.endswith(f":{worker.pid}") for w in by)  # the worker ran trials
    ran_here = int(worker_log.split("tune worker: ")[-1].split()[0])
    assert ran_here == sum(t.user_attrs["worker"].endswith(f":{worker.pid}") for t in trials) >= 1

    assert not (root / "worker_outputs").exists()  # the worker writes nothing; the stage writes once
    with open(root / "artifacts/tune/trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["trial"]) for row in rows] == list(range(6))
    best = json.loads((root / "artifacts/tune/best.json").read_text())
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    top = max(complete, key=lambda t: t.value)
    assert best["trials"] == 6 and best["best_trial"] == top.number and best["best_val_accuracy"] == top.value
    assert best["baseline_val_accuracy"] == study.user_attrs["baseline"]


@pytest.mark.slow
def test_killed_stage_resumes_its_study(tmp_path):
    root = tune_project(tmp_path)
    first = subprocess.Popen(stage(root, "artifacts/tune"), cwd=root, env=ENV, text=True,
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    lines = []
    while not (lines and lines[-1].startswith("trial 2: running in ")):  # trial 2 has named its process
        lines.append(first.stderr.readline())
        assert lines[-1], "".join(lines)  # the stage ended before trial 2
    first.kill()  # SIGKILL, mid-way through trial 2
    first.wait()
    again = subprocess.run(stage(root, "artifacts/tune"), cwd=root, env=ENV, text=True, capture_output=True,
                           timeout=600, check=False)
    assert again.returncode == 0, again.stderr
    assert "trial 0:" not in again.stderr and "trial 1:" not in again.stderr  # not run again
    # seen at once (the process is gone), not after UNCLAIMED_SECONDS
    assert f"tune: trial 2 was left running by process {first.pid}, which is gone" in again.stderr, again.stderr
    with open(root / "artifacts/tune/trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["trial"]) for row in rows] == list(range(6))
    trial_0 = next(line for line in lines if line.startswith("trial 0: val acc "))
    assert float(rows[0]["value"]) == float(trial_0.split("val acc ")[1].split()[0])  # the first run's
    assert rows[2]["state"] == "fail"
