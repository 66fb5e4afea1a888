"""Sweeps and search over one train experiment.

S1's studies change one thing at a time in a base experiment (activation x optimizer, batch
size, weight penalty); the Optuna search draws several keys at once and prunes trials whose
val accuracy trails the median. Both work on train entries (mappings shaped like
`train.experiments.<name>`) and on the rows `train.train` returns; stages/sweep.py and
stages/tune.py load the data and run them.

A search may be shared: processes on one Optuna storage (a journal file on a shared disk, or a
PostgreSQL/MySQL URL) open the same study, named after its params, and take trials from it
until it holds `tune.trials`; trial numbers come from the storage, so none runs twice.
"""

from __future__ import annotations

import copy
import csv
import datetime
import hashlib
import io
import json
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from auglab import AuglabError, shards, train
from auglab.files import temp_path
from auglab.params import Dimension, Experiment, Penalty, TuneSection
from auglab.runtime import DeviceData
from auglab.train import Result

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the stage logs one line per trial itself


def with_key(entry: Mapping[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of `entry` with the dotted key set, creating mappings on the way."""
    result = copy.deepcopy(dict(entry))
    target = result
    *parents, last = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ValueError(f"{dotted}: {part!r} is not a mapping in the entry")  # noqa: TRY004  a bad value
    target[last] = value
    return result


def with_keys(entry: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    for dotted, value in values.items():
        entry = with_key(entry, dotted, value)
    return dict(entry)


def device_data(experiment: Experiment, shard_dir: Path, split_dir: Path,
                device: torch.device) -> tuple[DeviceData, DeviceData]:
    """(train, val) of an experiment on the device, as train@<exp> loads them: its `train`
    splits of `shard_dir`, plus its `real` split of `split_dir` when set; val from `split_dir`."""
    parts = [shards.read_split(shard_dir, name) for name in experiment.train]
    if experiment.real is not None:
        parts.insert(0, shards.read_split(split_dir, experiment.real))
    images = np.concatenate([p.images for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    if experiment.bag < 1:
        images, labels = train.resample(images, labels, experiment.bag, experiment.seed)
    val = shards.read_split(split_dir, experiment.val)
    return DeviceData.from_numpy(images, labels, device), DeviceData.from_numpy(val.images, val.labels, device)


# --- S1's one-change sweeps -------------------------------------------------------------------


def grid_cell(base: Mapping[str, Any], activation: str, optimizer: str, lr: float) -> dict[str, Any]:
    """The base entry with the pair's activation and optimizer (at the grid's lr for it)."""
    return with_keys(base, {"model_kwargs.activation": activation, "optimizer.name": optimizer, "optimizer.lr": lr})


def batch_cell(base: Mapping[str, Any], size: int) -> dict[str, Any]:
    return with_key(base, "batch_size", size)


def regularization_cell(base: Mapping[str, Any], penalty: Penalty, epochs: int, patience: int) -> dict[str, Any]:
    """The base entry with the penalty, trained until val loss stops improving (at most `epochs`)."""
    return with_keys(base, {"l1": penalty.l1, "l2": penalty.l2, "epochs": epochs, "early_stopping": patience})


def summary(result: Result, early_stopping: bool, test_accuracy: float, test_loss: float) -> dict[str, Any]:
    """One sweep cell's numbers: test and val scores of the model kept (the best epoch's under early
    stopping, else the last), epochs to converge (the lowest val loss), and timing."""
    rows = result.history
    kept = rows[result.best_epoch - 1] if early_stopping else rows[-1]
    seconds = sum(r["seconds"] for r in rows)
    return {
        "test_accuracy": test_accuracy, "test_loss": test_loss,
        "val_accuracy": kept["val_acc"], "val_loss": kept["val_loss"],
        "epochs_run": len(rows), "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
        "train_seconds": round(seconds, 2), "seconds_per_epoch": round(seconds / len(rows), 2),
        "img_per_s": round(sum(r["img_per_s"] for r in rows) / len(rows)),
        "history": [{key: row[key] for key in ("epoch", "train_loss", "val_loss", "val_acc", "seconds")}
                    for row in rows],
    }


# --- Optuna search --------------------------------------------------------------------------

Objective = Callable[[dict[str, Any], Callable[[int, float], None]], float]


def suggest(trial: optuna.Trial, space: Mapping[str, Dimension]) -> dict[str, Any]:
    """The trial's draw for every dimension, keyed by the experiment key it sets."""
    values = {}
    for name, dim in space.items():
        if dim.choices is not None:
            values[dim.key] = trial.suggest_categorical(name, dim.choices)
        elif dim.integer:
            values[dim.key] = trial.suggest_int(name, math.ceil(dim.low), math.floor(dim.high), log=dim.log)
        else:
            values[dim.key] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
    return values


def storage(where: str | Path) -> optuna.storages.BaseStorage:
    """The Optuna storage at `where`: a URL with `://` is a database (sqlite:///file.db,
    postgresql://..., mysql+pymysql://...: machines that reach the server share it); anything
    else is a journal file (processes that share its filesystem share it)."""
    if "://" in str(where):
        for attempt in range(1, STORAGE_TRIES + 1):
            try:
                return RDBStorage(str(where))
            except Exception as e:  # noqa: BLE001  sqlalchemy's errors for bad URLs, missing drivers, refused connections
                # a worker starting at the same moment may be creating the tables ("table ... already
                # exists", "database is locked"): wait and retry; any other error is the URL's
                racing = any(s in str(e) for s in ("already exists", "is locked", "UNIQUE constraint"))
                if attempt == STORAGE_TRIES or not racing:
                    raise AuglabError(f"tune.storage {str(where)!r}: cannot open ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0]}); expected a journal file path or a database "
                                      "URL Optuna can open") from None
                time.sleep(0.5 * attempt)
    path = Path(where)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a process killed while appending leaves the journal's lock file behind: after LOCK_GRACE
    # seconds (appends take milliseconds) the next process releases it instead of waiting forever
    lock = JournalFileOpenLock(str(path), grace_period=LOCK_GRACE)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))


def study_name(config: TuneSection, defaults: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
    """`<experiment>-<digest>`: every worker started on the same params joins the same study, and
    changed params start a new one on a shared storage instead of mixing with the old trials."""
    searched = {"tune": config.model_dump(mode="json", exclude={"storage"}), "defaults": defaults, "entry": entry}
    return f"{config.experiment}-{hashlib.sha256(json.dumps(searched, sort_keys=True).encode()).hexdigest()[:12]}"


def make_study(config: TuneSection, name: str | None = None,
               where: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """A maximizing study: seeded TPE (or random) sampler, median pruner on val accuracy; in memory,
    or the study `name` on the storage `where`, created by whichever process comes first."""
    if config.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.startup_trials)
    else:
        sampler = optuna.samplers.RandomSampler(seed=config.seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=config.startup_trials, n_warmup_steps=config.warmup_epochs)
    return optuna.create_study(storage=where, study_name=name, load_if_exists=where is not None,
                               direction="maximize", sampler=sampler, pruner=pruner)


def worker_id() -> str:
    """`host:pid`, recorded with every trial as the `worker` that ran it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def search(config: TuneSection, objective: Objective, log: Callable[[str], None] = print,
           study: optuna.Study | None = None) -> optuna.Study:
    """Run trials until the study holds `config.trials` of them, counting those other processes
    run on the same storage. `objective(values, report)` trains with the drawn values and calls
    `report(epoch, val_accuracy)` after each epoch; report raises optuna.TrialPruned when the
    pruner stops the trial. Returns the study (trials of other processes may still be running)."""
    study = make_study(config) if study is None else study
    worker = worker_id()
    while len(study.get_trials(deepcopy=False)) < config.trials:
        trial = study.ask()
        if trial.number >= config.trials:  # another process took the last trial since the count
            trial.set_user_attr("over_budget", True)
            study.tell(trial, state=TrialState.FAIL)
            break
        trial.set_user_attr("worker", worker)
        values = suggest(trial, config.space)
        log(f"trial {trial.number}: running in {worker} with {values}")  # named: a kill from here on is seen

        def report(epoch: int, value: float, trial: optuna.Trial = trial) -> None:  # this iteration's trial
            trial.set_user_attr("epochs", epoch)
            trial.report(value, epoch)
            if trial.should_prune():
                log(f"trial {trial.number}: pruned after epoch {epoch} at val acc {value:.4f}")
                raise optuna.TrialPruned()

        try:
            value = objective(values, report)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            continue
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        study.tell(trial, value)
        log(f"trial {trial.number}: val acc {value:.4f} with {values}")
    return study


UNCLAIMED_SECONDS = 30.0  # a trial's process names itself milliseconds after opening it
LOCK_GRACE = 30  # seconds before a journal lock file left by a killed process is released
STORAGE_TRIES = 5  # opens of a database URL while another worker may be creating its tables


def fail_abandoned(study: optuna.Study, log: Callable[[str], None], unclaimed: float = UNCLAIMED_SECONDS) -> None:
    """Mark failed the running trials nothing will end: those of processes of this machine that are
    gone (a killed stage or worker), and those no process named itself on within `unclaimed`
    seconds (killed between opening the trial and naming itself). Other machines' cannot be checked."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
        started = trial.datetime_start  # UTC-aware from a journal, naive local time from a database
        if where == host and pid.isdigit() and not _alive(int(pid)):
            gone = f"process {pid}, which is gone"
        elif not pid and (datetime.datetime.now(started.tzinfo) - started).total_seconds() > unclaimed:
            gone = f"a process that never named itself ({unclaimed:.0f} s)"
        else:
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        log(f"tune: trial {trial.number} was left running by {gone}: marked failed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


def wait_for_trials(study: optuna.Study, budget: int, log: Callable[[str], None], poll: float = 2.0) -> None:
    """Return once no trial below `budget` is running (other workers finish theirs; those of gone
    processes of this machine are marked failed). A worker killed on another machine leaves its
    trial running: `study.tell(<number>, state=TrialState.FAIL)` ends the wait."""
    told: set[int] = set()
    while True:
        fail_abandoned(study, log)
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if t.number < budget}
        if not running:
            return
        if running != told:
            log(f"tune: waiting for trial(s) {sorted(running)} of other workers")
            told = running
        time.sleep(poll)


def snapshot(name: str, where: optuna.storages.BaseStorage, path: Path) -> None:
    """Copy the study `name` from `where` into a fresh journal file at `path`, written beside it
    and renamed into place: the stage's own record of a study held elsewhere."""
    temp = temp_path(path)
    temp.unlink(missing_ok=True)
    try:
        optuna.copy_study(from_study_name=name, from_storage=where,
                          to_storage=JournalStorage(JournalFileBackend(str(temp))))
        temp.replace(path)
    finally:
        temp.unlink(missing_ok=True)
        Path(f"{temp}.lock").unlink(missing_ok=True)


def trial_rows(study: optuna.Study, space: Mapping[str, Dimension]) -> list[dict[str, Any]]:
    """One row per trial: number, state, value (last reported for pruned ones), epochs and params.
    A trial that a worker opened past the budget (a race at the end) is no row."""
    rows = []
    for trial in study.trials:
        if trial.user_attrs.get("over_budget"):
            continue
        reported = trial.intermediate_values
        value = trial.value if trial.value is not None else reported[max(reported)] if reported else None
        rows.append({"trial": trial.number, "state": trial.state.name.lower(), "value": value,
                     "epochs": trial.user_attrs.get("epochs", 0),
                     **{dim.key: trial.params.get(name) for name, dim in space.items()}})
    return rows


def rows_csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def best(study: optuna.Study, space: Mapping[str, Dimension]) -> tuple[int, float, dict[str, Any]]:
    """(trial number, val accuracy, {experiment key: value}) of the best completed trial."""
    trial = study.best_trial
    return trial.number, trial.value, {dim.key: trial.params[name] for name, dim in space.items()}


def promote_command(experiment: str, values: Mapping[str, Any]) -> str:
    """The `dvc exp run` line that writes `values` into train.experiments.<experiment>. Hydra, which
    parses -S, refuses to set a key the entry does not have yet (an entry that inherits its
    optimizer from train.defaults has no `optimizer`); `++` sets it whether it exists or not."""
    sets = " ".join(f"-S '++train.experiments.{experiment}.{key}={_yaml_value(value)}'" for key, value in values.items())
    return f"dvc exp run {sets}"


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
