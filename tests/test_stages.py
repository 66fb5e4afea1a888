"""Every stage script, run as DVC would run it, on synthetic data, with only its declared params."""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import ROOT, YAML_SAFE, script_module, synthetic_arrays, write_idx_folder
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo
from dvc.utils.hydra import apply_overrides
from dvc.utils.serialize import load_yaml

PLUMBING = {"__init__", "cli", "params", "schema", "files"}  # shape no output; not listed as stage deps
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
OTHER_PARAMS_FILES = ("report.yaml",)  # params files besides params.yaml; hidden from stages not declaring them


def stages(root: Path) -> list:
    """DVC's own resolution of dvc.yaml (foreach expanded), in pipeline order."""
    with Repo(str(root)) as repo:
        return [
            {
                "name": stage.name,
                "cmd": stage.cmd,
                "params": [key for d in stage.deps if isinstance(d, ParamsDependency) and d.def_path == "params.yaml"
                           for key in d.params],
                "files": [str(d.def_path) for d in stage.deps if isinstance(d, ParamsDependency)
                          and d.def_path != "params.yaml" and not d.params],  # whole other params files
                "deps": [str(d.def_path) for d in stage.deps if not isinstance(d, ParamsDependency)],
                "outs": [str(o.def_path) for o in stage.outs],
            }
            for stage in repo.index.stages
        ]


def only(data: dict, keys: list[str]) -> dict:
    """The subset of a params mapping holding just the dotted `keys`."""
    result: dict = {}
    for key in keys:
        parts = key.split(".")
        source, target = data, result
        for part in parts[:-1]:
            source, target = source[part], target.setdefault(part, {})
        target[parts[-1]] = source[parts[-1]]
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A DVC project using the real dvc.yaml and stages, a synthetic dataset named `toy`."""
    root = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml",):
        (root / name).write_bytes((ROOT / name).read_bytes())
    (root / "stages").symlink_to(ROOT / "stages")
    (root / "auglab").symlink_to(ROOT / "auglab")
    write_idx_folder(root / "incoming", synthetic_arrays(per_class=30), gz=True)
    params = YAML_SAFE.load((ROOT / "params.yaml").read_text())
    params["download"]["datasets"] = {"toy": {"sources": {"incoming": {"folder": str(root / "incoming")}}}}
    params["split"]["datasets"] = {"toy": {"mode": "stratified", "val_size": 40}}
    params["split"]["subsets"] = [10, 20]
    params["augment"]["recipes"]["s2_expand"]["source"] = "train_10"
    recipes = params["augment"]["recipes"]  # not those of S2's slices: they are MNIST rows
    params["augment"]["builds"] = {f"toy_{r}": {"dataset": "toy", "recipe": r} for r in recipes
                                   if not recipes[r]["source"].startswith("s2_")}
    mlp = {"model": "mlp", "model_kwargs": {"hidden": [16], "dropout": 0.0, "activation": "relu"}, "epochs": 2}
    params["train"]["experiments"] = {
        "toy_mlp": {"dataset": "toy", "shards": "split/toy", "train": ["train_20"], **mlp},
        "toy_synthetic": {"dataset": "toy", "shards": "augmented/toy/s2_expand", "train": ["s2_expand"],
                          "real": "train_10", "model": "lenet5", "epochs": 1},
    }
    params["train"]["finetune"] = {
        "toy_tuned": {"dataset": "toy", "shards": "split/toy", "train": ["train_10"], "init": "toy_mlp",
                      "freeze": True, "val_every": 2, **mlp},
    }
    params["train"]["recipes"] = {"toy_mlp": {"train": ["train_20"], **mlp}}
    params["train"]["members"] = {"toy_seed_1": {"recipe": "toy_mlp", "dataset": "toy", "shards": "split/toy", "seed": 1}}
    params["gan"]["defaults"].update(steps=12, batch_size=16, log_every=5, checkpoint_every=5, samples_per_class=40)
    params["gan"]["builds"] = {"toy": {"dataset": "toy"}}
    params["gan"]["score"]["classifier"]["epochs"] = 1
    params["gan"]["score"]["builds"] = {"toy": {"dataset": "toy", "extractor": "toy_mlp"}}
    params["sweeps"] = {"base": {"dataset": "toy", "shards": "split/toy", "train": ["train_20"], **mlp, "epochs": 1},
                        "grid": {"activations": ["relu", "tanh"], "optimizers": ["adam", "sgd"],
                                 "lr": {"adam": 0.001, "sgd": 0.01}},
                        "batch_sizes": [8, 32],
                        "regularization": {"epochs": 4, "early_stopping": 1,
                                           "penalties": {"none": {"l1": 0.0, "l2": 0.0}, "l2": {"l1": 0.0, "l2": 0.01}}}}
    params["tune"].update(experiment="toy_mlp", dataset="toy", shards="split/toy", budget={"epochs": 2}, trials=4,
                          startup_trials=2, warmup_epochs=0,
                          space={"lr": {"key": "optimizer.lr", "low": 0.0001, "high": 0.1, "log": True},
                                 "batch_size": {"key": "batch_size", "choices": [8, 16]}})
    params["ensembles"] = {"toy_pair": {"dataset": "toy", "members": ["toy_mlp", "toy_synthetic"], "flips": True}}
    rows = {"mlp": {"experiment": "toy_mlp", "reported": 0.5}, "synthetic": {"experiment": "toy_synthetic", "reported": None},
            "tuned": {"experiment": "toy_tuned", "reported": None}}
    headline = {"rows": {"toy pair": {"ensemble": "toy_pair", "value": "member_mean", "goal": 0.5, "study": None,
                                      "anchor": 0.9}},
                "speed": "toy_mlp", "speed_goal": 10.0}
    report = {"studies": {"toy": {"title": "Toy study", "source": "0.5 for the MLP", "curves": True, "rows": rows}},
              "headline": headline,
              "sanity": {"toy_s2_expand": "toy_mlp", "toy_s1_copies": "toy_synthetic"},
              "filters": "toy_synthetic", "confusion": ["toy_mlp", "toy_tuned"]}
    with open(root / "params.yaml", "w") as f:
        YAML_SAFE.dump(params, f)
    with open(root / "report.yaml", "w") as f:
        YAML_SAFE.dump(report, f)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, check=True, env=ENV)
    return root, params, stages(root)


def run_stage(root: Path, stage: dict, params: dict) -> subprocess.CompletedProcess:
    """Run one stage's command with params.yaml cut to its declared keys, and hide the other params
    files (report.yaml) from every stage that does not declare them."""
    with open(root / "params.yaml", "w") as f:
        YAML_SAFE.dump(only(params, stage["params"]), f)
    for name in OTHER_PARAMS_FILES:
        hidden = root / f".{name}.hidden"
        if name in stage["files"] and hidden.exists():
            hidden.rename(root / name)
        elif name not in stage["files"] and (root / name).exists():
            (root / name).rename(hidden)
    return subprocess.run(stage["cmd"], shell=True, cwd=root, env=ENV, capture_output=True, text=True, check=False)


def run_in_one_process(root: Path, found: list[dict], params: dict) -> subprocess.CompletedProcess:
    """run_stage for each stage in turn, inside one process (tests/run_stages.py): the same
    params.yaml cut to each stage's keys and the same hidden files, without ~3 s of imports per
    stage."""
    steps = []
    for stage in found:
        text = io.StringIO()
        YAML_SAFE.dump(only(params, stage["params"]), text)
        steps.append({"cmd": stage["cmd"], "params": text.getvalue(),
                      "hide": [name for name in OTHER_PARAMS_FILES if name not in stage["files"]],
                      "show": [name for name in OTHER_PARAMS_FILES if name in stage["files"]]})
    (root / "steps.json").write_text(json.dumps(steps))
    return subprocess.run([sys.executable, str(ROOT / "tests/run_stages.py"), "steps.json"], cwd=root, env=ENV,
                          capture_output=True, text=True, check=False)


@pytest.mark.slow  # stage scripts, in one subprocess
def test_each_stage_runs_with_only_its_declared_params(project):
    root, params, found = project
    assert [s["name"] for s in found] == [
        "download@toy", "split@toy", "preprocess@toy",
        "augment@toy_s2_expand", "augment@toy_s1_copies", "augment@toy_s0_light",
        "train@toy_mlp", "train@toy_synthetic", "finetune@toy_tuned", "member@toy_seed_1",
        "ensemble@toy_pair", "gan@toy",
        "gan_sample@toy", "gan_score@toy", "grid",
        "batch", "regularize", "tune", "report",
    ]
    done = run_in_one_process(root, found, params)
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in found:
        for out in stage["outs"]:
            assert (root / out).exists(), f"{stage['name']} did not write {out}"
    stats = YAML_SAFE.load((root / "data/preprocessed/toy.json").read_text())
    assert stats["fit_rows"] == 260 and stats["pad_to"] == params["preprocess"]["pad_to"]
    manifest = YAML_SAFE.load((root / "data/augmented/toy/s2_expand/manifest.json").read_text())
    assert manifest["splits"]["s2_expand"]["class_counts"] == [100] * 10 and manifest["source"] == "train_10"
    assert (root / "data/augmented/toy/s1_copies.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((root / "artifacts/models/toy_tuned/live/metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and 0 <= metrics["val"]["acc"] <= 1
    curves = root / "artifacts/models/toy_tuned/live/plots/metrics"  # val_every 2 of 2 epochs: the last alone
    assert len((curves / "train/loss.tsv").read_text().splitlines()) == 1 + 2
    assert (curves / "val/acc.tsv").read_text().splitlines()[1:] == [f"1\t{metrics['val']['acc']}"]
    assert not (root / "artifacts/checkpoints/toy_mlp.pt").exists()  # removed once finished
    seeded = torch.load(root / "artifacts/models/toy_seed_1/model.pt", weights_only=True)  # the recipe's MLP
    assert seeded["name"] == "mlp" and seeded["kwargs"]["hidden"] == [16]
    assert json.loads((root / "artifacts/metrics/toy_seed_1.json").read_text())["images"] == 50
    model = torch.load(root / "artifacts/models/toy_synthetic/model.pt", weights_only=True)
    assert model["name"] == "lenet5" and model["image_size"] == 32 and model["dataset"] == "toy"
    scored = json.loads((root / "artifacts/metrics/toy_synthetic.json").read_text())
    assert scored["split"] == "test" and scored["images"] == 50 and 0 <= scored["f1"] <= 1
    assert len((root / "artifacts/confusion/toy_tuned.csv").read_text().splitlines()) == 51
    gan_manifest = json.loads((root / "data/gan/toy/manifest.json").read_text())
    assert gan_manifest["splits"]["gan"]["class_counts"] == [40] * 10 and gan_manifest["source"] == "train"
    losses = json.loads((root / "artifacts/gan/toy/live/metrics.json").read_text())
    assert losses["step"] == 12 and losses["steps"] == 12
    score = json.loads((root / "artifacts/gan/toy/score.json").read_text())
    assert score["fid"] > 0 and 0 <= score["cas"] <= 1 and score["extractor"] == "toy_mlp"
    assert not (root / "artifacts/checkpoints/gan_toy.pt").exists()
    pair = json.loads((root / "artifacts/ensembles/toy_pair.json").read_text())
    assert set(pair["members"]) == {"toy_mlp", "toy_synthetic"} and pair["flips"] and pair["images"] == 50
    assert pair["member_mean"] == pytest.approx(sum(pair["members"].values()) / 2) and 0 <= pair["accuracy"] <= 1
    assert sorted(p.name for p in (root / "artifacts/sweeps/grid/sgd").iterdir()) == ["relu.json", "tanh.json"]
    cell = json.loads((root / "artifacts/sweeps/grid/sgd/tanh.json").read_text())
    assert cell["changed"] == {"activation": "tanh", "optimizer": "sgd", "lr": 0.01} and cell["epochs_run"] == 1
    assert 0 <= cell["test_accuracy"] <= 1 and cell["val_loss"] > 0
    # a toy epoch can take under 5 ms, which rounds to 0.0 s: check the bookkeeping, not the clock
    assert cell["train_seconds"] == round(sum(row["seconds"] for row in cell["history"]), 2) >= 0
    assert sorted(p.name for p in (root / "artifacts/sweeps/batch").iterdir()) == ["32.json", "8.json"]  # one stage
    batch = json.loads((root / "artifacts/sweeps/batch/8.json").read_text())
    assert batch["changed"] == {"batch_size": 8} and batch["epochs_run"] == 1
    assert sorted(p.name for p in (root / "artifacts/sweeps/regularize").iterdir()) == ["l2.json", "none.json"]
    penalty = json.loads((root / "artifacts/sweeps/regularize/l2.json").read_text())
    assert 1 <= penalty["best_epoch"] <= penalty["epochs_run"] <= 4 and penalty["changed"]["l2"] == 0.01
    assert sorted(p.name for p in (root / "artifacts/sweeps/grid").iterdir()) == ["adam", "sgd"]
    assert not (root / "artifacts/checkpoints/grid").exists()
    assert not (root / "artifacts/checkpoints/batch").exists() and not (root / "artifacts/checkpoints/regularize").exists()
    tuned = json.loads((root / "artifacts/tune/best.json").read_text())
    assert tuned["trials"] == 4 and tuned["completed"] + tuned["pruned"] == 4
    assert tuned["best_val_accuracy"] >= 0 and set(tuned["best"]) == {"optimizer.lr", "batch_size"}
    assert tuned["promote"].startswith("dvc exp run -S '++train.experiments.toy_mlp.optimizer.lr=")
    trials = (root / "artifacts/tune/trials.csv").read_text().splitlines()
    assert trials[0] == "trial,state,value,epochs,optimizer.lr,batch_size" and len(trials) == 5
    check_report(root)


TIMINGS = {"seconds", "img_per_s", "seconds_per_epoch", "train_seconds"}


def untimed(cell: dict) -> dict:
    """A sweep cell's JSON without its clock readings."""
    return {key: [untimed(row) for row in value] if key == "history" else value
            for key, value in cell.items() if key not in TIMINGS}


@pytest.mark.slow  # stage scripts as subprocesses
def test_a_grid_cell_gives_what_it_gives_alone(project):
    """Cells that share a process share nothing else: the tanh x sgd cell of the 2 x 2 grid is the
    cell of a grid of tanh x sgd alone, to the last digit (clock readings aside), and a finished
    grid leaves no checkpoint behind."""
    root, params, found = project
    by_name = {stage["name"]: stage for stage in found}
    for name in ("download@toy", "split@toy", "preprocess@toy"):
        assert run_stage(root, by_name[name], params).returncode == 0
    out = root / "artifacts/sweeps/grid"
    cells = {}
    for activations, optimizers in ((["relu", "tanh"], ["adam", "sgd"]), (["tanh"], ["sgd"])):
        shutil.rmtree(out, ignore_errors=True)  # the folder persists: without it every cell trains
        grid = dict(params["sweeps"]["grid"], activations=activations, optimizers=optimizers)
        done = run_stage(root, by_name["grid"], dict(params, sweeps=dict(params["sweeps"], grid=grid)))
        assert done.returncode == 0, done.stderr
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*.json")) == sorted(
            f"{o}/{a}.json" for a in activations for o in optimizers)
        cells[len(activations) * len(optimizers)] = json.loads((out / "sgd/tanh.json").read_text())
        assert not (root / "artifacts/checkpoints/grid").exists()
    assert untimed(cells[4]) == untimed(cells[1])
    assert cells[4]["changed"] == {"activation": "tanh", "optimizer": "sgd", "lr": 0.01}


@pytest.mark.slow  # stage scripts as subprocesses
def test_the_grid_trains_only_the_cells_whose_params_changed(project):
    """`dvc exp run -S sweeps.grid.lr.sgd=...` re-runs stage grid, whose folder persists: a cell
    whose params, data and code are those it was trained with is kept byte for byte, a cell with a
    new lr or a new activation trains, and the JSON of a cell no longer in params goes."""
    root, params, found = project
    by_name = {stage["name"]: stage for stage in found}
    for name in ("download@toy", "split@toy", "preprocess@toy"):
        assert run_stage(root, by_name[name], params).returncode == 0
    out = root / "artifacts/sweeps/grid"
    shutil.rmtree(out, ignore_errors=True)
    first = run_stage(root, by_name["grid"], params)  # relu, tanh x adam, sgd
    assert first.returncode == 0, first.stderr
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.json")}
    grid = dict(params["sweeps"]["grid"], activations=["tanh", "elu"], lr={"adam": 0.001, "sgd": 0.02})
    again = run_stage(root, by_name["grid"], dict(params, sweeps=dict(params["sweeps"], grid=grid)))
    assert again.returncode == 0, again.stderr
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.json")}
    assert sorted(after) == ["adam/elu.json", "adam/tanh.json", "sgd/elu.json", "sgd/tanh.json"]  # relu's gone
    assert after["adam/tanh.json"] == before["adam/tanh.json"]
    assert after["sgd/tanh.json"] != before["sgd/tanh.json"]
    assert json.loads(after["sgd/tanh.json"])["changed"]["lr"] == 0.02
    trained = sorted(line.split(":")[0] for line in again.stderr.splitlines() + again.stdout.splitlines()
                     if re.match(r"grid@\S+: \w+ on ", line))
    assert trained == ["grid@elu-adam", "grid@elu-sgd", "grid@tanh-sgd"]
    assert "grid@tanh-adam: kept" in again.stdout + again.stderr


def test_a_grid_cells_fingerprint_covers_the_auglab_modules_the_process_imported(tmp_path, monkeypatch):
    """A change to any auglab module loaded in the stage's process retrains every cell; modules
    outside auglab do not count (nor auglab's that the stage never imports, such as report.py)."""
    sweep = script_module("stages/sweep.py")
    digest = sweep.code_digest()
    module = tmp_path / "extra.py"
    module.write_text("A = 1\n")
    monkeypatch.setitem(sys.modules, "notauglab.extra", types.SimpleNamespace(__file__=str(module)))
    assert sweep.code_digest() == digest
    monkeypatch.setitem(sys.modules, "auglab.extra", types.SimpleNamespace(__file__=str(module)))
    with_extra = sweep.code_digest()
    assert with_extra != digest
    module.write_text("A = 2\n")
    assert sweep.code_digest() not in (digest, with_extra)
    monkeypatch.delitem(sys.modules, "auglab.extra")
    assert sweep.code_digest() == digest


def check_report(root: Path) -> None:
    """Every table present and filled, every linked figure written, headline metrics for diff."""
    text = (root / "reports/report.md").read_text()
    for heading in ("## Headline results", "## Toy study", "## S1 sweeps: activation x optimizer", "## S1 sweeps: batch size",
                    "## S1 sweeps: regularization", "## Bayesian search (Optuna)", "## GAN samples",
                    "## Augmentation sanity", "## Confusion matrices", "## First-layer filters", "## Timing"):
        assert heading in text, heading
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert all(cells), f"empty cell in {line!r}"
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) >= 8 and all((root / "reports" / link).read_bytes()[:4] == b"\x89PNG" for link in links)
    assert "| mlp | `toy_mlp` |" in text and "| 0.5 |" in text  # our number beside the study's, as it reports it
    headline = json.loads((root / "reports/metrics.json").read_text())
    assert set(headline["studies"]["toy"]) == {"toy_mlp", "toy_synthetic", "toy_tuned"}
    assert 0 <= headline["gan"]["toy"]["cas"] <= 1 and set(headline["sanity"]) == {"toy_s2_expand", "toy_s1_copies"}
    assert set(headline["sweeps"]["regularization_accuracy"]) == {"none", "l2"}
    assert "| activation \\ optimizer | adam | sgd |" in text and text.count("**") == 2  # the best pair in bold


@pytest.mark.slow  # stage scripts as subprocesses
def test_tune_rerun_with_the_same_seed_finds_the_same_best(project):
    root, params, found = project
    stage = next(s for s in found if s["name"] == "tune")
    if not (root / "data/split/toy").exists():
        for name in ("download@toy", "split@toy", "preprocess@toy"):
            assert run_stage(root, next(s for s in found if s["name"] == name), params).returncode == 0
    runs = []
    for seed in (3, 3, 4):
        done = run_stage(root, stage, dict(params, tune=dict(params["tune"], seed=seed)))
        assert done.returncode == 0, done.stderr
        runs.append(json.loads((root / "artifacts/tune/best.json").read_text()))
    assert runs[0]["best"] == runs[1]["best"] and runs[0]["best_val_accuracy"] == runs[1]["best_val_accuracy"]
    assert runs[2]["best"] != runs[0]["best"]  # the seed does drive the sampler


@functools.cache
def imported_modules(path: Path) -> frozenset[str]:
    """auglab modules a file imports, transitively (once per script: ~150 stages share a dozen)."""
    found: set[str] = set()
    todo = [path]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("auglab"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("auglab")]
            for name in names:
                module = name.split(".")[1] if "." in name else "__init__"
                if (ROOT / "auglab" / f"{module}.py").exists() and module not in found:
                    found.add(module)
                    todo.append(ROOT / "auglab" / f"{module}.py")
    return frozenset(found)


def test_stage_deps_list_every_module_the_stage_imports():
    """Editing a module re-runs exactly the stages whose code it is (plumbing excepted)."""
    for stage in stages(ROOT):
        script = next(d for d in stage["deps"] if d.startswith("stages/"))
        needed = {f"auglab/{m}.py" for m in imported_modules(ROOT / script) - PLUMBING}
        listed = {d for d in stage["deps"] if d.startswith("auglab/")}
        assert needed == listed, f"{stage['name']}: imports {sorted(needed)}, dvc.yaml lists {sorted(listed)}"


def test_recipe_change_marks_its_members_stages_changed(tmp_path, monkeypatch):
    """In a git + DVC copy of this checkout, with the headline members and one other MNIST experiment
    recorded in dvc.lock (dummy outputs, no training): `dvc exp run -S` on the recipe leaves all
    three member@ stages changed and nothing else; on one member's seed, that member alone."""
    script_module("ci/tour.py").clone(ROOT, tmp_path)
    monkeypatch.chdir(tmp_path)  # DVC finds a target stage's dvc.yaml from the working directory
    members = [f"member@headline_mnist_{seed}" for seed in range(3)]
    recorded = [*members, "train@speed_mnist"]
    for path in ("data/split/mnist/manifest.json", "data/preprocessed/mnist.json"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}")
    for name in (stage.partition("@")[2] for stage in recorded):
        for path in (f"models/{name}/model.pt", f"models/{name}/live/metrics.json",
                     f"models/{name}/live/plots/metrics/acc.tsv", f"eval/{name}/predictions.parquet",
                     f"metrics/{name}.json", f"confusion/{name}.csv"):
            (tmp_path / "artifacts" / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "artifacts" / path).write_text(name)
    with Repo(str(tmp_path)) as repo:
        for stage in recorded:
            repo.commit(stage, force=True)
        assert repo.status(targets=recorded) == {}

    def status_after(*overrides: str) -> dict:
        (tmp_path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
        apply_overrides(tmp_path / "params.yaml", list(overrides))  # what `dvc exp run -S` does first
        with Repo(str(tmp_path)) as repo:
            return repo.status(targets=recorded)

    def changed(key: str) -> list:
        return [{"changed deps": {"params.yaml": {key: "modified"}}}]

    epochs = YAML_SAFE.load((ROOT / "params.yaml").read_text())["train"]["recipes"]["headline_mnist"]["epochs"]
    assert status_after(f"train.recipes.headline_mnist.epochs={epochs + 1}") == {  # a real change
        stage: changed("train.recipes.headline_mnist") for stage in members}
    assert status_after("train.members.headline_mnist_1.seed=7") == {
        "member@headline_mnist_1": changed("train.members.headline_mnist_1")}
    assert status_after("train.experiments.speed_mnist.epochs=3") == {
        "train@speed_mnist": changed("train.experiments.speed_mnist")}


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.slow  # stage scripts as subprocesses
def test_failing_stage_exits_nonzero_with_one_line_and_keeps_good_output(project):
    root, params, found = project
    download_stage, split_stage = found[:2]
    for stage in (download_stage, split_stage):
        assert run_stage(root, stage, params).returncode == 0
    before = tree_digest(root / "data/split/toy")
    bad = dict(params, split=dict(params["split"], subsets=[10, 1000]))
    done = run_stage(root, split_stage, bad)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: subset 1000: needs 100 images of class 0, the train split has 26"
    )
    assert "Traceback" not in done.stderr
    assert tree_digest(root / "data/split/toy") == before
    assert not [p for p in (root / "data/split").iterdir() if p.name.startswith(".")]  # no temp dirs


@pytest.mark.slow  # stage scripts as subprocesses
def test_unknown_dataset_and_bad_params_messages(project):
    root, params, _ = project
    with open(root / "params.yaml", "w") as f:
        YAML_SAFE.dump(params, f)
    done = subprocess.run([sys.executable, "stages/split.py", "--dataset", "nope", "--raw", "x", "--out", "y"],
                          cwd=root, capture_output=True, text=True, env=ENV, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: split.datasets.nope: missing required key; present: toy"
    broken = dict(params, preprocess={"pad_to": "32"})
    with open(root / "params.yaml", "w") as f:
        YAML_SAFE.dump(broken, f)
    done = subprocess.run([sys.executable, "stages/preprocess.py", "--splits", "data/split/toy", "--out", "o.json"],
                          cwd=root, capture_output=True, text=True, env=ENV, check=False)
    assert done.returncode == 1 and done.stderr.strip() == "error: preprocess.pad_to: expected int, got '32'"
    assert not (root / "o.json").exists()


def test_lock_records_only_stages_of_the_pipeline():
    """DVC rewrites a stage's dvc.lock entry when it runs and never drops the entry of a stage that
    left dvc.yaml: stale entries grow the file every `dvc repro` parses (twice per no-op run) and
    rewrites after each stage. The committed lock holds the stages dvc.yaml expands to, no others."""
    with Repo(str(ROOT)) as repo:
        stages = {stage.addressing for stage in repo.index.stages}
    recorded = set(load_yaml(str(ROOT / "dvc.lock"))["stages"])  # DVC's own reader (C parser): 0.3 s, not 1 s
    assert recorded - stages == set(), f"dvc.lock records stages dvc.yaml no longer has: {sorted(recorded - stages)}"
