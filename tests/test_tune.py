"""Sweep cells and the Optuna search (auglab/tune.py): entries, seeded search, pruning, output."""

from __future__ import annotations

import math

import numpy as np
import pytest

from auglab import params, train, tune
from auglab.params import Penalty, TuneSection

SPACE = {
    "lr": {"key": "optimizer.lr", "low": 0.0001, "high": 0.1, "log": True},
    "width": {"key": "model_kwargs.width", "low": 8, "high": 64, "integer": True},
    "schedule": {"key": "schedule.name", "choices": ["constant", "cosine"]},
}


def config(**changes) -> TuneSection:
    data = {"experiment": "e", "dataset": "d", "shards": "split/d", "budget": {}, "space": SPACE, "sampler": "tpe",
            "seed": 0, "trials": 12, "startup_trials": 4, "warmup_epochs": 1}
    return params.validate("tune", {**data, **changes})


def quadratic(values: dict, report) -> float:
    """A deterministic stand-in for training: best at lr 1e-2 with cosine; climbs over 3 epochs."""
    score = 1 - (math.log10(values["optimizer.lr"]) + 2) ** 2 / 10 - (values["schedule.name"] == "constant") * 0.1
    for epoch in (1, 2, 3):
        report(epoch, score * epoch / 3)
    return score


def test_with_key_sets_nested_keys_on_a_copy():
    entry = {"model": "cnn", "model_kwargs": {"dropout": 0.2}}
    changed = tune.with_keys(entry, {"model_kwargs.activation": "elu", "optimizer.lr": 0.1})
    assert changed == {"model": "cnn", "model_kwargs": {"dropout": 0.2, "activation": "elu"}, "optimizer": {"lr": 0.1}}
    assert entry == {"model": "cnn", "model_kwargs": {"dropout": 0.2}}  # not mutated
    with pytest.raises(ValueError, match="'model' is not a mapping"):
        tune.with_key(entry, "model.depth", 3)


def test_cells_change_only_their_keys():
    base = {"dataset": "d", "model": "cnn", "model_kwargs": {"batchnorm": True}, "epochs": 3}
    cell = tune.grid_cell(base, "selu", "adadelta", 1.0)
    assert cell["model_kwargs"] == {"batchnorm": True, "activation": "selu"}
    assert cell["optimizer"] == {"name": "adadelta", "lr": 1.0} and cell["epochs"] == 3
    assert tune.batch_cell(base, 512)["batch_size"] == 512
    regularized = tune.regularization_cell(base, Penalty(l1=0.001, l2=0.0), epochs=9, patience=2)
    assert (regularized["l1"], regularized["l2"], regularized["epochs"], regularized["early_stopping"]) == (0.001, 0.0, 9, 2)


def test_same_seed_same_trials_and_tpe_finds_the_optimum():
    first = tune.search(config(), quadratic, log=lambda line: None)
    again = tune.search(config(), quadratic, log=lambda line: None)
    other = tune.search(config(seed=1), quadratic, log=lambda line: None)
    assert [t.params for t in first.trials] == [t.params for t in again.trials]
    assert [t.params for t in first.trials] != [t.params for t in other.trials]
    number, value, best = tune.best(first, config().space)
    assert first.trials[number].value == value and set(best) == {"optimizer.lr", "model_kwargs.width", "schedule.name"}
    assert isinstance(best["model_kwargs.width"], int) and 8 <= best["model_kwargs.width"] <= 64
    assert value > 0.8 and best["schedule.name"] == "cosine"


def test_random_sampler_and_median_pruning():
    study = tune.search(config(sampler="random", trials=16), quadratic, log=lambda line: None)
    rows = tune.trial_rows(study, config().space)
    states = {row["state"] for row in rows}
    assert states <= {"complete", "pruned"} and "pruned" in states  # below-median trials stopped early
    pruned = [row for row in rows if row["state"] == "pruned"]
    assert all(row["epochs"] < 3 and row["value"] is not None for row in pruned)
    completed = [row["value"] for row in rows if row["state"] == "complete"]
    assert max(completed) == tune.best(study, config().space)[1]
    text = tune.rows_csv(rows).decode().splitlines()
    assert text[0] == "trial,state,value,epochs,optimizer.lr,model_kwargs.width,schedule.name" and len(text) == 17


def test_space_errors_name_the_key():
    with pytest.raises(params.ParamsError, match=r"tune.space.lr: optimizer.lr: a log range needs low > 0, got 0.0"):
        config(space={"lr": {"key": "optimizer.lr", "low": 0.0, "high": 1.0, "log": True}})
    with pytest.raises(params.ParamsError, match="expected either choices or low and high"):
        config(space={"lr": {"key": "optimizer.lr", "low": 0.1, "high": 1.0, "choices": [0.1]}})
    with pytest.raises(params.ParamsError, match="expected low < high, got low=1.0, high=0.1"):
        config(space={"lr": {"key": "optimizer.lr", "low": 1.0, "high": 0.1}})
    with pytest.raises(params.ParamsError, match=r"tune.sampler: expected 'tpe' or 'random', got 'grid'"):
        config(sampler="grid")


def test_promote_command_writes_yaml_values():
    line = tune.promote_command("s1_cnn_maxpool", {"optimizer.lr": 0.00123456789, "batch_size": 64, "x": True})
    assert line == ("dvc exp run -S '++train.experiments.s1_cnn_maxpool.optimizer.lr=0.00123457' "
                    "-S '++train.experiments.s1_cnn_maxpool.batch_size=64' -S '++train.experiments.s1_cnn_maxpool.x=true'")


def test_bagging_draws_a_seeded_subset_per_member():
    ids = np.arange(1000).reshape(1000, 1, 1)  # each image is its own index
    drawn, labels = train.resample(ids, ids.ravel() % 10, 0.8, seed=0)
    assert drawn.shape == (800, 1, 1) and np.array_equal(labels, drawn.ravel() % 10)  # pairs stay together
    assert np.array_equal(np.unique(drawn), drawn.ravel())  # no image twice, original order kept
    assert np.array_equal(train.resample(ids, ids.ravel(), 0.8, seed=0)[0], drawn)  # seeded
    assert not np.array_equal(train.resample(ids, ids.ravel(), 0.8, seed=1)[0], drawn)  # each member its own draw
