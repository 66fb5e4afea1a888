"""Fault cases (issue 18), each a real run of a stage script or of `dvc` on a toy project: a full
disk while writing shards or a model, Ctrl-C during training, a repo locked by another
`dvc repro`, a checkpoint cut short, and the scoring given a model.pt for other data or another
architecture. Each checks the one line printed, the exit status, and that what was good before
(outputs, checkpoints) is still there byte for byte, with no temp file left beside it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, script_module, synthetic_arrays, write_idx_folder
from ruamel.yaml import YAML

from auglab import AuglabError, checkpoint, params, runtime, shards, train

YAML_SAFE = YAML(typ="safe", pure=True)
YAML_SAFE.default_flow_style = False  # block style: DVC's C parser refuses `{url: https://...}`
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
       "DVC_NO_ANALYTICS": "1"}
EPOCHS = 12  # enough for a Ctrl-C to land mid-run (after epoch 1, before the last), ~1 s of MLP
MLP = {"model": "mlp", "model_kwargs": {"hidden": [16], "dropout": 0.0, "activation": "relu"},
       "precision": "fp32", "epochs": EPOCHS, "batch_size": 32}
WAIT = 120  # seconds before a test gives up on a child that should have moved on (a guard, not a check)

pytestmark = pytest.mark.slow


def stage(root: Path, script: str, *args: str, file_limit: int | None = None) -> subprocess.CompletedProcess:
    """Run stages/<script> from `root` as dvc.yaml does; `file_limit` caps every file it writes at
    that many bytes (RLIMIT_FSIZE), so a write past it fails with EFBIG as on a full disk."""

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not death by signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run([sys.executable, str(ROOT / "stages" / script), *args], cwd=root, env=ENV,
                          capture_output=True, text=True, preexec_fn=limit_files if file_limit else None, check=False)


def train_args(name: str) -> list[str]:
    """The train stage's arguments for toy_mlp, writing artifacts/models/<name> (and its scores under
    artifacts/eval, metrics, confusion) and checkpointing to artifacts/checkpoints/<name>.pt (each
    test its own, so none sees another's files)."""
    return ["--experiment", "toy_mlp", "--splits", "data/split/toy", "--shards", "data/split/toy",
            "--stats", "data/preprocessed/toy.json", "--checkpoint", f"artifacts/checkpoints/{name}.pt",
            "--out", f"artifacts/models/{name}", "--eval", f"artifacts/eval/{name}",
            "--metrics", f"artifacts/metrics/{name}.json", "--confusion", f"artifacts/confusion/{name}.csv"]


def outputs(root: Path, name: str) -> tuple[Path, Path]:
    """(model directory, checkpoint) of train_args(name)."""
    return root / "artifacts/models" / name, root / "artifacts/checkpoints" / f"{name}.pt"


def one_error(done: subprocess.CompletedProcess) -> str:
    """The run failed with status 1 and its stderr ends in its only `error:` line, no traceback."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], done.stderr
    return lines[-1]


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (or of `path` itself), by relative name."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def hidden(folder: Path) -> list[str]:
    """Temp files and directories (`.name.<pid>.tmp`, `.name.old`) left in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A toy project (download, split, preprocess run by the real stages) and one uninterrupted
    training run of `toy_mlp`, whose output every resumed run must reproduce byte for byte."""
    root = tmp_path_factory.mktemp("faults")
    write_idx_folder(root / "incoming", synthetic_arrays(per_class=30), gz=True)
    config = YAML_SAFE.load((ROOT / "params.yaml").read_text())
    config["download"]["datasets"] = {"toy": {"sources": {"incoming": {"folder": str(root / "incoming")}}}}
    config["split"]["datasets"] = {"toy": {"mode": "stratified", "val_size": 40}}
    config["split"]["subsets"] = [10, 20]
    toy_mlp = {"dataset": "toy", "shards": "split/toy", "train": ["train_20"], **MLP}
    config["train"]["experiments"] = {"toy_mlp": toy_mlp}
    with open(root / "params.yaml", "w") as f:
        YAML_SAFE.dump(config, f)
    for script, *args in (("download.py", "--dataset", "toy", "--out", "data/raw/toy"),
                          ("split.py", "--dataset", "toy", "--raw", "data/raw/toy", "--out", "data/split/toy"),
                          ("preprocess.py", "--splits", "data/split/toy", "--out", "data/preprocessed/toy.json"),
                          ("train.py", *train_args("reference"))):
        done = stage(root, script, *args)
        assert done.returncode == 0, f"{script}: {done.stderr}"
    (root / "reference.log").write_text(done.stderr)  # its epoch lines, for same_model's message
    return root


def same_model(project: Path, out: Path, log: str) -> None:
    """out/model.pt is byte for byte the uninterrupted reference run's. If not, say how it differs
    (which weights, by how much; other keys) with both runs' epoch lines, so a rare mismatch on
    another host points at the epoch where the runs parted rather than at a zip's bytes."""
    reference = project / "artifacts/models/reference/model.pt"
    if (out / "model.pt").read_bytes() == reference.read_bytes():
        return
    ours, theirs = (torch.load(path, weights_only=True) for path in (out / "model.pt", reference))
    weights = {key: float((ours["state_dict"][key].double() - theirs["state_dict"][key].double()).abs().max())
               for key in theirs["state_dict"] if not torch.equal(ours["state_dict"][key], theirs["state_dict"][key])}
    others = [key for key in theirs if key != "state_dict" and ours.get(key) != theirs[key]]
    epochs = lambda text: "\n".join(line for line in text.splitlines() if line.startswith(("epoch", "resuming")))
    pytest.fail(f"{out}/model.pt differs from the reference: weights (max abs diff) {weights}, other keys "
                f"{others}\nreference run:\n{epochs((project / 'reference.log').read_text())}\nthis run:\n{epochs(log)}")


def train_in_process(root: Path, checkpoint: Path, stop_after: int | None) -> None:
    """Leave the checkpoint the train stage would leave after `stop_after` epochs (all if None):
    the same experiment and data, so the same fingerprint, and the stage's denormal setting."""
    experiment = params.load_experiment(root / "params.yaml", "experiments", "toy_mlp")
    cpu = torch.device("cpu")
    part, val = (shards.read_split(root / "data/split/toy", name) for name in ("train_20", "val"))
    stats = json.loads((root / "data/preprocessed/toy.json").read_text())
    torch.set_flush_denormal(True)
    try:
        train.train(experiment, runtime.DeviceData.from_numpy(part.images, part.labels, cpu),
                    runtime.DeviceData.from_numpy(val.images, val.labels, cpu), stats, checkpoint,
                    log=lambda message: None, stop_after=stop_after)
    finally:
        torch.set_flush_denormal(False)


def test_disk_full_writing_shards_keeps_the_previous_split(project):
    before = tree_digest(project / "data/split/toy")
    done = stage(project, "split.py", "--dataset", "toy", "--raw", "data/raw/toy", "--out", "data/split/toy",
                 file_limit=64 << 10)  # a toy train shard is ~200 KiB
    assert one_error(done) == ("error: disk full writing data/split/toy (EFBIG: File too large), "
                               "expected room for it; the previous output is kept")
    assert tree_digest(project / "data/split/toy") == before
    assert hidden(project / "data/split") == []


def test_disk_full_writing_the_model_keeps_the_previous_model_and_the_checkpoint(project):
    """Training finished (its last checkpoint is on disk) but model.pt does not fit: the old model
    directory stays, the checkpoint stays, and a rerun writes the model without training again."""
    out, checkpoint = outputs(project, "full")
    shutil.copytree(project / "artifacts/models/reference", out)  # the previous good output
    train_in_process(project, checkpoint, stop_after=None)
    before, saved = tree_digest(out), tree_digest(checkpoint)
    # model.pt is ~52 KiB, DVCLive's files a few KiB: only the model goes past the limit
    done = stage(project, "train.py", *train_args("full"), file_limit=16 << 10)
    assert f"resuming from artifacts/checkpoints/full.pt after epoch {EPOCHS}" in done.stderr
    assert one_error(done) == ("error: disk full writing artifacts/models/full/model.pt (EFBIG: File too "
                               "large), expected room for it; the previous output is kept")
    assert tree_digest(out) == before and tree_digest(checkpoint) == saved
    assert hidden(project / "artifacts/models") == [] and hidden(project / "artifacts/checkpoints") == []
    again = stage(project, "train.py", *train_args("full"))
    assert again.returncode == 0, again.stderr
    assert "epoch 1/" not in again.stderr  # nothing retrained
    same_model(project, out, again.stderr)
    assert not checkpoint.exists()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_during_training_keeps_a_resumable_checkpoint_and_no_process(project, tmp_path):
    out, checkpoint = outputs(project, "interrupted")
    shutil.copytree(project / "artifacts/models/reference", out)
    before = tree_digest(out)
    with open(tmp_path / "stderr", "w") as stderr:
        # a job's own group, with Ctrl-C's default action: a suite started in the background (`cmd &`
        # in a script) hands its children SIGINT ignored, and Python then never raises KeyboardInterrupt
        child = subprocess.Popen([sys.executable, str(ROOT / "stages/train.py"), *train_args("interrupted")],
                                 cwd=project, env=ENV, stderr=stderr, start_new_session=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509 - no threads yet
        deadline = time.monotonic() + WAIT
        while not checkpoint.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert checkpoint.exists() and child.poll() is None, "no checkpoint while training ran"
        os.killpg(child.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        returncode = child.wait(timeout=WAIT)
    message = (tmp_path / "stderr").read_text()
    assert returncode == 130, message
    assert "Traceback" not in message and "KeyboardInterrupt" not in message, message
    assert message.strip().splitlines()[-1] == ("interrupted: outputs left as they were; checkpoint kept at "
                                                "artifacts/checkpoints/interrupted.pt")
    assert not group_alive(child.pid)  # nothing of the run outlives it
    epoch = torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= epoch < EPOCHS
    assert tree_digest(out) == before
    assert hidden(project / "artifacts/models") == [] and hidden(project / "artifacts/checkpoints") == []
    again = stage(project, "train.py", *train_args("interrupted"))
    assert again.returncode == 0, again.stderr
    assert f"resuming from artifacts/checkpoints/interrupted.pt after epoch {epoch}" in again.stderr
    same_model(project, out, message + again.stderr)
    metrics, reference = (json.loads((project / "artifacts/models" / name / "live/metrics.json").read_text())
                          for name in ("interrupted", "reference"))
    assert metrics["val"] == reference["val"] and metrics["epochs_run"] == EPOCHS


def test_truncated_checkpoint_is_reported_and_training_restarts_from_scratch(project):
    """A checkpoint cut short (a copy interrupted, a disk that lied) is not resumed: one log line
    names it, and the run trains from epoch 1 to the same model as a clean run."""
    out, checkpoint = outputs(project, "truncated")
    train_in_process(project, checkpoint, stop_after=2)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    done = stage(project, "train.py", *train_args("truncated"))
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "artifacts/checkpoints/truncated.pt" in line]
    assert len(notes) == 1 and "resuming from" not in done.stderr, done.stderr
    assert notes[0].startswith("not resuming: artifacts/checkpoints/truncated.pt is unreadable, truncated or "
                               "not a checkpoint (") and notes[0].endswith("); training from scratch")
    assert f"epoch 1/{EPOCHS}:" in done.stderr
    same_model(project, out, done.stderr)
    assert not checkpoint.exists()


@pytest.fixture
def dvc_project(tmp_path):
    """A scratch DVC project: `hold` runs until the file `release` appears (writing `started`
    first), `other` reads hold's output."""
    (tmp_path / "hold.py").write_text(
        "import pathlib, time\n"
        "pathlib.Path('started').touch()\n"
        f"deadline = time.monotonic() + {WAIT}\n"
        "while not pathlib.Path('release').exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "pathlib.Path('held.txt').write_text('held')\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  hold:\n    cmd: python hold.py\n    deps: [hold.py]\n    outs: [held.txt]\n"
        "  other:\n    cmd: python -c \"open('other.txt', 'w').write(open('held.txt').read() + ' other')\"\n"
        "    deps: [held.txt]\n    outs: [other.txt]\n")
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, env=ENV, check=True)
    return tmp_path


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=root, env=ENV, capture_output=True, text=True, check=False)


def dvc_error(done: subprocess.CompletedProcess) -> str:
    """A refused dvc command: non-zero status, one `ERROR:` line (DVC's own), no traceback."""
    assert done.returncode != 0, done.stdout
    output = done.stdout + done.stderr
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def test_dvc_repro_while_another_runs_the_same_stage_is_refused(dvc_project):
    """DVC releases the repo lock while a stage's command runs and locks the stage's paths instead:
    a second `dvc repro` that needs them stops at once, naming the busy path and the process."""
    root = dvc_project
    with open(root / "first.log", "w") as log:
        first = subprocess.Popen(["dvc", "repro"], cwd=root, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + WAIT
            while not (root / "started").exists() and first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert (root / "started").exists(), (root / "first.log").read_text()
            second = dvc(root, "repro")
        finally:
            (root / "release").touch()
            first.wait(timeout=WAIT)
    busy = root / "held.txt"
    assert dvc_error(second) == f"ERROR: failed to reproduce 'hold': '{busy}' is busy, it is being blocked by:"
    assert re.search(rf"^  \(PID {first.pid}\): \S*dvc repro$", second.stderr, re.MULTILINE), second.stderr
    assert first.returncode == 0, (root / "first.log").read_text()
    assert (root / "other.txt").read_text() == "held other"  # written by the first run, whole
    lock = YAML_SAFE.load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"hold", "other"}
    assert "Stage 'hold' didn't change" in dvc(root, "repro").stdout  # nothing left to do


def test_dvc_repro_while_another_dvc_holds_the_repo_lock_is_refused(dvc_project):
    """The repo lock itself (held by a DVC process while it reads or commits the pipeline, here by
    DVC's own Lock taken from Python): `dvc repro` gives up after DVC's retries, writing nothing."""
    from dvc.repo import Repo

    root = dvc_project
    (root / "release").touch()
    with Repo(str(root)) as repo, repo.lock:
        second = dvc(root, "repro")
    assert dvc_error(second).startswith("ERROR: Unable to acquire lock. Most likely another DVC process is "
                                        "running")
    assert not [p.name for p in root.iterdir() if p.name in ("started", "held.txt", "other.txt", "dvc.lock")]
    third = dvc(root, "repro")
    assert third.returncode == 0, third.stderr
    assert (root / "other.txt").read_text() == "held other"


def score(root: Path, model: str) -> dict:
    """The scoring train@toy_mlp ends with, run from `root` on the model.pt at `model` (relative)."""
    with contextlib.chdir(root):
        return script_module("stages/train.py").score(
            "toy_mlp", Path(model), Path("data/split/toy"), torch.device("cpu"), Path("artifacts/eval/toy_mlp"),
            Path("artifacts/metrics/toy_mlp.json"), Path("artifacts/confusion/toy_mlp.csv"), lambda message: None)


@pytest.fixture(scope="module")
def evaluated(project):
    """The scores of the reference model: what a wrong model must not touch."""
    score(project, "artifacts/models/reference/model.pt")
    return project


def model_for_other_data(path: Path, dataset: str, class_names: list[str], side: int) -> None:
    """A model.pt as the train stage writes it, trained one epoch on random `side`-pixel images of
    another dataset."""
    defaults = params.load_key(ROOT / "params.yaml", "train.defaults")
    kwargs = {**MLP["model_kwargs"], "classes": len(class_names), "image_size": side}
    entry = {"dataset": dataset, "shards": f"split/{dataset}", "train": ["train"], **MLP,
             "model_kwargs": kwargs, "epochs": 1}
    experiment = params.experiment(defaults, entry, "other")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, side, side), dtype=np.uint8)
    labels = (np.arange(64) % len(class_names)).astype(np.uint8)
    data = runtime.DeviceData.from_numpy(images, labels, torch.device("cpu"))
    stats = {"mean": 0.5, "std": 0.3}
    result = train.train(experiment, data, data, stats, path.with_name("checkpoint.pt"),
                         log=lambda message: None)
    checkpoint.save_model(path, experiment, result.model, stats, class_names)


DIGITS = [str(k) for k in range(10)]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


@pytest.mark.parametrize("case", ["other_classes", "other_size", "other_architecture", "truncated",
                                  "checkpoint"])
def test_scoring_refuses_a_model_for_other_data_or_another_architecture(evaluated, case):
    root = evaluated
    path = root / "wrong" / case / "model.pt"
    path.parent.mkdir(parents=True)
    reference = root / "artifacts/models/reference/model.pt"
    if case == "other_classes":  # a Fashion-MNIST model given the digits: same shapes, other classes
        model_for_other_data(path, "fashion_toy", FASHION, 28)
        expected = f"a fashion_toy model with classes {FASHION}, expected classes {DIGITS}"
    elif case == "other_size":
        model_for_other_data(path, "letters_toy", list("abcde"), 16)
        expected = ("a letters_toy model with 5 classes, 16x16 input, expected 10 classes, an input of at "
                    "least 28x28")
    elif case == "other_architecture":  # weights of hidden [16] under a header naming hidden [32]
        saved = torch.load(reference, weights_only=True)
        saved["kwargs"] = {**saved["kwargs"], "hidden": [32]}
        checkpoint.save_atomic(saved, path)
        expected = "weights do not fit the mlp {'activation': 'relu', 'dropout': 0.0, 'hidden': [32]} it names:"
    elif case == "truncated":
        data = reference.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        expected = "unreadable, truncated or not a torch file ("
    else:  # a training checkpoint: the right weights, but no input statistics or class names
        train_in_process(root, path, stop_after=1)
        expected = ("no image_size, mean, std, class_names, dataset in it, expected a model.pt written by "
                    "the train stage")
    outputs = [root / "artifacts/eval/toy_mlp", root / "artifacts/metrics/toy_mlp.json",
               root / "artifacts/confusion/toy_mlp.csv"]
    before = [tree_digest(p) for p in outputs]
    with pytest.raises(AuglabError) as refused:
        score(root, str(path.relative_to(root)))
    line = str(refused.value)
    assert "\n" not in line and line.startswith(f"wrong/{case}/model.pt: {expected}"), line
    if case in ("other_classes", "other_size"):
        assert line.endswith(" as in data/split/toy"), line
    if case == "other_architecture":
        assert line.endswith("net.1.weight (16, 784), expected (32, 784) (and 2 more)"), line
    if case == "truncated":
        assert line.endswith("), expected a model.pt written by the train stage"), line
    assert [tree_digest(p) for p in outputs] == before
    assert all(hidden(p.parent) == [] for p in outputs)
