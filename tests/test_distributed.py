"""Training in several processes: 2 gloo ranks on CPU under torchrun, through auglab.train
(tests/ddp_worker.py) and through the train stage, which relaunches itself when nproc > 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ddp_worker
import pytest
import torch
import toy
from conftest import ROOT

from auglab import AuglabError, checkpoint, params, runtime, train

ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def torchrun(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *command], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of 2 gloo ranks ended with (see tests/ddp_worker.py), and the output folder."""
    out = tmp_path_factory.mktemp("ddp")
    done = torchrun(str(ROOT / "tests/ddp_worker.py"), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)], out


@pytest.mark.slow
def test_two_ranks_hold_identical_weights_after_a_step(ranks):
    (first, second), _ = ranks
    assert first["step"].keys() == second["step"].keys()
    for name, tensor in first["step"].items():  # weights and BatchNorm buffers
        assert torch.equal(tensor, second["step"][name]), name
    for name, tensor in first["whole"][1].items():
        assert torch.equal(tensor, second["whole"][1][name]), name


@pytest.mark.slow
def test_every_epoch_trains_on_every_image_once_across_ranks(ranks):
    (first, second), _ = ranks
    for history in (first["whole"][0], second["whole"][0]):
        assert [row["images"] for row in history] == [ddp_worker.TRAIN] * 2  # not 2 x 320, not 160
    numbers = lambda history: [(r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"]) for r in history]
    assert numbers(first["whole"][0]) == numbers(second["whole"][0])  # all-reduced: the same on both ranks


@pytest.mark.slow
def test_a_batch_that_leaves_a_rank_without_images_is_refused(ranks):
    (first, second), _ = ranks
    assert first["refused"] == second["refused"] == (
        f"batch_size {ddp_worker.TRAIN - 1} on {ddp_worker.TRAIN} images leaves a batch of 1 images for 2 processes; "
        "expected at least one image per process in every batch")


@pytest.mark.slow
def test_only_rank_zero_writes_checkpoints_and_a_killed_run_resumes(ranks):
    (first, _), out = ranks
    assert (out / "rank0" / "checkpoint.pt").exists() and not (out / "rank1").exists()
    history, weights = first["resumed"]
    assert [row["val_loss"] for row in history] == [row["val_loss"] for row in first["whole"][0]]
    for name, tensor in first["whole"][1].items():  # stopped after epoch 1, resumed: the same end
        assert torch.equal(tensor, weights[name]), name


@pytest.mark.slow
def test_accuracy_matches_one_process_with_the_same_global_batch(ranks, tmp_path):
    (first, _), _ = ranks
    alone = train.train(ddp_worker.experiment(nproc=1), *ddp_worker.data(torch.device("cpu")), ddp_worker.STATS,
                        tmp_path / "checkpoint.pt", log=lambda line: None)
    assert [row["images"] for row in alone.history] == [ddp_worker.TRAIN] * 2
    for shared, single in zip(first["whole"][0], alone.history, strict=True):
        # same data, batches and gradients; only BatchNorm (per-rank halves on CPU) and dropout differ
        assert shared["val_loss"] == pytest.approx(single["val_loss"], rel=0.05)
        assert abs(shared["val_acc"] - single["val_acc"]) <= 0.1
    assert first["whole"][0][-1]["val_acc"] > first["whole"][0][0]["val_acc"]  # it learns: not a flat line


@pytest.mark.slow
def test_train_stage_with_nproc_2_runs_torchrun_and_rank_zero_writes(tmp_path):
    root = toy.project(tmp_path)
    data = params.read_yaml(root / "params.yaml")
    data["train"]["experiments"]["toy_ddp"] = {
        "dataset": "toy", "shards": "split/toy", "train": ["train"], "model": "cnn", "nproc": 2, "epochs": 2,
        "batch_size": 32, "model_kwargs": {"blocks": [[8]], "dense": [16], "batchnorm": True}}
    toy.write_params(root, data)
    command = [sys.executable, str(ROOT / "stages/train.py"), "--experiment", "toy_ddp", "--splits", "data/split/toy",
               "--shards", "data/split/toy", "--stats", "data/preprocessed/toy.json",
               "--checkpoint", "artifacts/checkpoints/toy_ddp.pt", "--out", "artifacts/models/toy_ddp",
               "--eval", "artifacts/eval/toy_ddp", "--metrics", "artifacts/metrics/toy_ddp.json",
               "--confusion", "artifacts/confusion/toy_ddp.csv"]
    done = subprocess.run(command, cwd=root, env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x 2 processes" in done.stderr  # relaunched under torchrun, 2 ranks
    assert done.stderr.count("epoch 2/2: train loss") == 1  # rank 0 alone logs
    out = root / "artifacts/models/toy_ddp"
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy_ddp"]  # no second writer's staging left
    losses = (out / "live/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert len(losses) == 1 + 2  # header and one row per epoch: one DVCLive writer
    _, state = checkpoint.load_model(out / "model.pt", torch.device("cpu"))
    assert state["name"] == "cnn" and not any(".module." in key for key in state["state_dict"])
    assert not (root / "artifacts/checkpoints/toy_ddp.pt").exists()  # finished: removed
    assert json.loads((root / "artifacts/metrics/toy_ddp.json").read_text())["split"] == "test"  # then scored


def test_nproc_defaults_to_one_process_and_must_be_positive():
    defaults = params.load_key(ROOT / "params.yaml", "train.defaults")
    entry = {"dataset": "d", "shards": "s", "train": ["train"], "model": "mlp"}
    assert "nproc" not in defaults and params.experiment(defaults, entry, "x").nproc == 1
    assert params.experiment(defaults, {**entry, "nproc": 4}, "x").nproc == 4
    with pytest.raises(params.ParamsError, match=r"^x.nproc: expected greater than 0, got 0$"):
        params.experiment(defaults, {**entry, "nproc": 0}, "x")
    with pytest.raises(params.ParamsError, match=r"^x.nproc: expected int, got '2'$"):
        params.experiment(defaults, {**entry, "nproc": "2"}, "x")


def test_more_processes_than_gpus_is_refused_before_torchrun(monkeypatch):
    """On CUDA, torchrun's rank r takes GPU r: nproc 2 on a one-GPU machine would die in rank 1 with
    CUDA's "invalid device ordinal". torch is told it has one GPU (this host has none)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    runtime.check_processes("cuda", 1)  # one process per GPU: fine
    runtime.check_processes("cpu", 4)  # gloo ranks share the cores
    with pytest.raises(AuglabError, match=r"^nproc 2 on device cuda: this machine has 1 GPU\(s\); expected nproc <= "):
        runtime.check_processes("auto", 2)
