"""End to end: `dvc repro` of the real pipeline on real MNIST and Fashion-MNIST in a temp copy."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, script_module
from ruamel.yaml import YAML

from auglab import shards

pytestmark = [pytest.mark.slow, pytest.mark.network]  # `dvc repro` from the official data sources


def script(name: str):
    """A module of ci/ (scripts, not a package)."""
    return script_module(f"ci/{name}.py")


tour, profile = script("tour"), script("profile")
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "CI": "1"}


def sh(root: Path, *command: str) -> str:
    done = subprocess.run(command, cwd=root, env=ENV, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def digests(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


TRAINED = {"train@s2_lenet_100", "train@s2_lenet_synthetic", "train@s1_cnn_maxpool", "finetune@s0_transfer_tuned",
           "member@s2_code_100", "gan@fashion_mnist", "gan_sample@fashion_mnist", "gan_score@fashion_mnist", "report"}
SWEEPS = {"grid", "batch", "regularize", "tune",
          "ensemble@fashion_headline"}  # the CI profile's grid of 2 x 2 cells; batch, regularize: 2 cells each


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A fresh git + DVC copy of the project (what a clone holds), after `ci/review.sh HEAD`: the
    CI profile reproduced on HEAD in a worktree, then on the working tree, sharing one cache."""
    root = tmp_path_factory.mktemp("clone")
    tour.clone(ROOT, root)  # what `make tour` copies: a clone's files with uncommitted edits, no dvc.lock
    assert not (root / "dvc.lock").exists() and (root / "params.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()
    refused = subprocess.run(["bash", "ci/review.sh"], cwd=root, env={k: v for k, v in ENV.items() if k != "CI"},
                             capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "run it in CI or in a scratch clone" in refused.stderr
    output = sh(root, "bash", "ci/review.sh", "HEAD", str(root / "summary.md"))
    return root, output


def test_review_script_reports_a_metrics_diff(built):
    root, output = built
    assert "== CI profile on HEAD" in output and "== CI profile on the working tree" in output
    summary = (root / "summary.md").read_text()
    assert summary.startswith("### dvc metrics diff: CI profile, HEAD -> this change")
    experiments = YAML(typ="safe").load(root / "params.yaml")["train"]["experiments"]
    assert set(experiments) == {"s2_lenet_100", "s2_lenet_synthetic", "s1_cnn_maxpool"}  # the profile applied
    report = (root / "reports/report.md").read_text()
    assert "## S2 LeNet-5, augmentation as regularizer" in report and "`s2_lenet_synthetic`" in report


def test_repro_builds_every_stage_with_the_expected_splits(built):
    root, output = built
    builds = {"mnist_s2_expand", "mnist_s2_code", "mnist_s2_prose", "mnist_s0_light", "fashion_mnist_s2_expand",
              "fashion_mnist_s1_copies", "fashion_mnist_s0_light"}
    assert ran(output) == {f"{stage}@{dataset}" for stage in ("download", "split", "preprocess")
                           for dataset in ("mnist", "fashion_mnist")} | {f"augment@{b}" for b in builds} | TRAINED | SWEEPS
    listed = set(sh(root, "dvc", "stage", "list", "--name-only").split())
    assert SWEEPS <= listed
    cells = sorted(str(p.relative_to(root / "artifacts/sweeps/grid")) for p in (root / "artifacts/sweeps/grid").rglob("*.json"))
    assert cells == ["adam/relu.json", "adam/tanh.json", "sgd/relu.json", "sgd/tanh.json"]  # the profile's 2 x 2
    mnist = shards.read_manifest(root / "data/split/mnist")["splits"]
    assert {k: v["rows"] for k, v in mnist.items()} == {
        "train": 55000, "val": 5000, "train_100": 100, "train_1000": 1000, "train_10000": 10000, "test": 10000,
        "s2_first_100": 100, "s2_first_1000": 1000, "s2_1000": 1000, "s2_10000": 10000,  # S2's slices
    }
    assert shards.read_split(root / "data/split/mnist", "s2_1000").ids.tolist() == list(range(550, 1550))
    assert mnist["train_100"]["class_counts"] == [10] * 10
    fashion = shards.read_manifest(root / "data/split/fashion_mnist")["splits"]
    val = profile.FASHION_VAL  # the profile's val split, stratified: the rest of the 60,000 is train
    assert fashion["train"]["class_counts"] == [(60_000 - val) // 10] * 10 and fashion["val"]["class_counts"] == [val // 10] * 10
    for dataset in ("mnist", "fashion_mnist"):
        raw = json.loads((root / f"data/raw/{dataset}/manifest.json").read_text())
        assert raw["source"]["verified"] == "pinned sha256 of every file and golden class counts"
        train = shards.read_split(root / f"data/split/{dataset}", "train")
        assert train.images.shape[1:] == (28, 28)
    stats = json.loads((root / "data/preprocessed/mnist.json").read_text())
    assert abs(stats["mean"] - 0.1307) < 1e-3 and abs(stats["std"] - 0.3081) < 1e-3
    rows = {b: shards.read_manifest(root / "data/augmented" / b.replace("_s", "/s", 1))["splits"] for b in builds}
    assert rows["mnist_s2_expand"]["s2_expand"]["class_counts"] == [1000] * 10
    assert profile.AUGMENT_SOURCE == "train_10000"  # three views of it, and two copies
    assert rows["fashion_mnist_s1_copies"]["s1_copies"]["rows"] == 30_000
    assert rows["mnist_s0_light"]["s0_light"]["rows"] == 20_000
    assert rows["mnist_s2_code"]["s2_code"]["rows"] == rows["mnist_s2_prose"]["s2_prose"]["rows"] == 10_000
    expanded = shards.read_split(root / "data/augmented/mnist/s2_expand", "s2_expand")
    subset = shards.read_split(root / "data/split/mnist", "train_100")
    assert set(expanded.extra["source_id"].tolist()) == set(subset.ids.tolist())
    generated = shards.read_manifest(root / "data/gan/fashion_mnist")["splits"]["gan"]
    assert generated["class_counts"] == [profile.GAN_PER_CLASS] * 10
    score = json.loads((root / "artifacts/gan/fashion_mnist/score.json").read_text())
    cas_real = fashion[profile.CAS_REAL]["rows"]  # CAS trains on as many GAN images as this real split holds
    assert cas_real == 10 * profile.GAN_PER_CLASS and score["cas_train_images"] == cas_real
    assert score["fid_images"] == profile.FID_SAMPLES and score["fid"] > 0


def test_second_repro_runs_nothing(built):
    root, _ = built
    output = sh(root, "dvc", "repro")
    assert ran(output) == set() and "Data and pipelines are up to date." in output


def test_rerun_is_byte_identical(built):
    root, _ = built
    before = digests(root / "data")
    model = root / "artifacts/models/s2_lenet_100/model.pt"
    trained = hashlib.sha256(model.read_bytes()).hexdigest()
    outputs = ("generator.pt", "grid.png", "losses.png")  # not live/metrics.json: it holds img/s
    generator = {name: digests(root / "artifacts/gan/fashion_mnist")[name] for name in outputs}
    forced = ("split@mnist", "split@fashion_mnist", "preprocess@fashion_mnist", "augment@mnist_s2_expand",
              "augment@fashion_mnist_s1_copies", "train@s2_lenet_100", "gan@fashion_mnist",
              "gan_sample@fashion_mnist")  # run in this order
    output = sh(root, "dvc", "repro", "--force", "--single-item", *forced)  # one DVC start for all eight
    assert ran(output) == set(forced)
    assert digests(root / "data") == before  # GAN samples included
    assert hashlib.sha256(model.read_bytes()).hexdigest() == trained  # training is deterministic on CPU
    assert {name: digests(root / "artifacts/gan/fashion_mnist")[name] for name in outputs} == generator


def test_push_then_pull_restores_outputs(built, tmp_path):
    root, _ = built
    before = digests(root / "data/split")
    sh(root, "dvc", "remote", "add", "--local", "-f", "scratch", str(tmp_path / "remote"))
    sh(root, "dvc", "push", "-r", "scratch")
    for dataset in ("mnist", "fashion_mnist"):
        shutil.rmtree(root / "data/split" / dataset)
    shutil.rmtree(root / ".dvc/cache")
    sh(root, "dvc", "pull", "-r", "scratch")
    assert digests(root / "data/split") == before


def test_exp_run_of_one_recipe_reruns_only_its_stages(built):
    """`dvc exp run -S <a recipe's key>` re-runs the recipe's builds and what depends on them, no
    other stage. What it would re-run, without re-running it (the seed test below and the queued
    sweep run experiments for real): the override applied as `dvc exp run` applies it (DVC's own
    Hydra code), the stages `dvc status` then finds changed, and every stage downstream of them in
    DVC's graph."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.utils.hydra import apply_overrides

    root, _ = built
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")  # the profile and its dvc.lock:
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock")  # what experiments start from
    apply_overrides(root / "params.yaml", ["augment.recipes.s2_expand.views.keras.rotation=30"])
    try:
        assert "rotation: 30           # degrees" in (root / "params.yaml").read_text()  # comments kept
        status = sh(root, "dvc", "status", "--json")
        # (the forced rerun above left ensemble@ and report behind: their models' live metrics hold img/s)
        changed = {name for name, reasons in json.loads(status).items() if "params.yaml" in str(reasons)}
        assert changed == {"augment@mnist_s2_expand", "augment@fashion_mnist_s2_expand"}, status
        with Repo(str(root)) as repo:
            graph = repo.index.graph  # edges point from a stage to the stages it depends on
            stages = {stage.name: stage for stage in graph}  # one dvc.yaml: names are unique
            below = {other.name for name in changed for other in nx.ancestors(graph, stages[name])}
    finally:
        sh(root, "git", "checkout", "params.yaml")
    # ensembles depend on artifacts/models as a whole (dvc.yaml cannot list a params list as deps): a
    # retrained model re-scores them (seconds), and the report reads every result
    assert below == {"train@s2_lenet_synthetic", "ensemble@fashion_headline", "report"}


def test_exp_run_of_one_grid_lr_trains_only_that_optimizers_cells(built):
    """`dvc exp run -S sweeps.grid.lr.sgd=...` re-runs stage grid alone, and in it only sgd's cells
    train: the grid's folder persists (dvc.yaml) and adam's cells, whose params, data and code are
    those they were trained with, are kept byte for byte."""
    root, _ = built
    grid = root / "artifacts/sweeps/grid"
    before = digests(grid)
    try:
        output = sh(root, "dvc", "exp", "run", "-S", "sweeps.grid.lr.sgd=0.02", "grid")
        assert ran(output) == {"grid"}
        after = digests(grid)
        assert sorted(after) == sorted(before) == ["adam/relu.json", "adam/tanh.json", "sgd/relu.json", "sgd/tanh.json"]
        assert sorted(name for name in after if after[name] != before[name]) == ["sgd/relu.json", "sgd/tanh.json"]
        assert re.findall(r"grid@(\S+): kept", output) == ["relu-adam", "tanh-adam"]
        assert json.loads((grid / "sgd/tanh.json").read_text())["changed"]["lr"] == 0.02
    finally:
        sh(root, "git", "checkout", "params.yaml", "dvc.lock")  # the committed CI profile, for the tests below
        sh(root, "dvc", "checkout", "-q")
    assert digests(grid) == before


def test_exp_run_with_new_seed_reruns_split_and_below_only(built):
    """`dvc exp run -S split.seed=1` re-runs split@* and below, never download@*. One real run up to
    a training of each dataset's split (retraining the whole profile again proves no more), then
    `dvc status` names every other stage but the downloads: what a plain `dvc exp run` re-runs."""
    root, _ = built
    everything = set(sh(root, "dvc", "stage", "list", "--name-only").split())
    output = sh(root, "dvc", "exp", "run", "-S", "split.seed=1", "train@s2_lenet_100", "train@s1_cnn_maxpool")
    stages = ran(output)
    assert stages == {"split@mnist", "split@fashion_mnist", "preprocess@mnist", "preprocess@fashion_mnist",
                      "train@s2_lenet_100", "train@s1_cnn_maxpool"}  # upstream of the targets, downloads kept
    assert shards.read_manifest(root / "data/split/fashion_mnist")["seed"] == 1
    status = subprocess.run(["dvc", "status", "--json"], cwd=root, env=ENV, capture_output=True, text=True, check=True)
    changed = set(json.loads(status.stdout))
    downloads = {"download@mnist", "download@fashion_mnist"}
    # gan_sample@ reads generator.pt alone: it changes, and shows here, once gan@ has re-run
    later = {"gan_sample@fashion_mnist"}
    assert downloads | later <= everything and changed == everything - stages - downloads - later, status.stdout


def test_queued_sweep_runs_in_parallel_and_shows_in_exp_show(built):
    """The README's sweep loop: queue a comma sweep with -S, run the queue on 2 workers, read
    the results back with `dvc exp show`."""
    root, _ = built
    sh(root, "git", "checkout", "params.yaml", "dvc.lock")  # back to the committed CI profile
    sh(root, "dvc", "checkout", "-q")
    key = "train.experiments.s2_lenet_100.optimizer.lr"  # the entry inherits `optimizer`: `++` adds the key
    queued = sh(root, "dvc", "exp", "run", "--queue", "-S", f"++{key}=0.003,0.0003")
    names = set(re.findall(r"Queued experiment '([^']+)'", queued))
    assert len(names) == 2, queued
    # The workers it starts are daemons that inherit its stdout: into a pipe, run() would wait for
    # them to exit, which an idle worker may never do (seen here: a 20-minute hang after both
    # experiments had succeeded). A file does not wait; `dvc queue stop` ends them below.
    with open(root / "queue-start.log", "w") as log:
        started = subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=root, env=ENV, stdout=log,
                                 stderr=subprocess.STDOUT, check=False)
    assert started.returncode == 0, (root / "queue-start.log").read_text()
    deadline = time.monotonic() + 900
    try:
        while re.search(r"\b(Queued|Running)\b", status := sh(root, "dvc", "queue", "status")):
            assert time.monotonic() < deadline, status
            time.sleep(5)
    finally:
        subprocess.run(["dvc", "queue", "stop"], cwd=root, env=ENV, capture_output=True, check=False)
    assert status.count("Success") == 2, status
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=root, env=ENV, capture_output=True, text=True, check=True)
    results = {}
    for commit in json.loads(shown.stdout):
        for experiment in commit.get("experiments") or []:
            # the clone also holds the experiments of the tests above, which set other keys
            if (experiment.get("name") or experiment["revs"][0].get("name")) not in names:
                continue
            data = experiment["revs"][0]["data"]
            lr = data["params"]["params.yaml"]["data"]["train"]["experiments"]["s2_lenet_100"]["optimizer"]["lr"]
            results[lr] = data["metrics"]["artifacts/metrics/s2_lenet_100.json"]["data"]["accuracy"]
    assert set(results) == {0.003, 0.0003}, results
    assert all(0 < accuracy <= 1 for accuracy in results.values()) and results[0.003] != results[0.0003]
