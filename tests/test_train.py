"""The training loop: every optimizer, schedule, penalty and activation from params; resume;
early stopping; on-the-fly augmentation; transfer; saved models."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import torch
from conftest import ROOT

from auglab import AuglabError, checkpoint, params, report, runtime, train
from auglab.params import Experiment, Optimizer, Schedule

STATS = {"mean": 0.13, "std": 0.31}
DEFAULTS = params.load_key(ROOT / "params.yaml", "train.defaults")


def experiment(**overrides) -> Experiment:
    entry = {"dataset": "toy", "shards": "split/toy", "train": ["train"], "model": "cnn",
             "model_kwargs": {"blocks": [[8], [16]], "dense": [32]}, "epochs": 2, "batch_size": 32, **overrides}
    return params.experiment(DEFAULTS, entry, "test")


def toy_data(n: int, seed: int = 0) -> runtime.DeviceData:
    """Separable toy digits: class k has a bright bar at row 2k (so models can learn it)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 * label + 4 : 2 * label + 6, 4:24] = 255
    return runtime.DeviceData.from_numpy(images, labels, torch.device("cpu"))


@pytest.fixture
def data():
    return toy_data(256), toy_data(64, seed=1)


def run(tmp_path, exp, data, **kwargs) -> train.Result:
    return train.train(exp, *data, STATS, tmp_path / "checkpoint.pt", log=lambda m: None, **kwargs)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", get_args(Optimizer.model_fields["name"].annotation))
def test_every_optimizer_trains(tmp_path, data, name):
    options = {"name": name, "lr": 0.01 if name != "adadelta" else 1.0}
    if name in ("sgd", "rmsprop"):
        options["momentum"] = 0.9
    result = run(tmp_path, experiment(optimizer=options, epochs=3), data)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@pytest.mark.parametrize("name", get_args(Schedule.model_fields["name"].annotation))
def test_every_schedule_trains_and_moves_the_lr(tmp_path, data, name):
    schedule = {"name": name, "step_epochs": 1, "gamma": 0.5, "patience": 0}
    result = run(tmp_path, experiment(schedule=schedule, epochs=3, optimizer={"lr": 0.01}), data)
    lrs = [row["lr"] for row in result.history]
    assert np.isfinite(result.history[-1]["train_loss"])
    if name == "constant":
        assert lrs == [0.01] * 3
    elif name != "plateau":  # plateau only cuts when val loss stalls
        assert lrs[-1] < 0.01


@pytest.mark.parametrize("l1, l2", [(1e-3, 0.0), (0.0, 1e-3), (1e-3, 1e-3)])
def test_penalties_add_to_the_loss_and_shrink_weights(tmp_path, data, l1, l2):
    model = torch.nn.Linear(4, 2)
    expected = l1 * model.weight.abs().sum() + l2 * model.weight.square().sum()  # bias excluded
    assert torch.isclose(train.penalty(model, l1, l2), expected)
    plain = run(tmp_path / "a", experiment(epochs=2), data)
    penalized = run(tmp_path / "b", experiment(epochs=2, l1=l1 * 10, l2=l2 * 10), data)
    norm = lambda m: sum(p.abs().sum() for n, p in m.named_parameters() if p.dim() > 1)
    assert norm(penalized.model) < norm(plain.model)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu", "selu", "tanh", "sigmoid", "linear"])
def test_every_activation_trains_one_step(tmp_path, data, activation):
    exp = experiment(model="mlp", model_kwargs={"hidden": [32], "dropout": 0.0, "activation": activation}, epochs=1)
    result = run(tmp_path, exp, data)
    assert np.isfinite(result.history[0]["train_loss"])


def test_label_smoothing_raises_the_floor_of_the_loss(tmp_path, data):
    sharp = run(tmp_path / "a", experiment(epochs=4, optimizer={"lr": 0.01}), data)
    smooth = run(tmp_path / "b", experiment(epochs=4, optimizer={"lr": 0.01}, label_smoothing=0.2), data)
    assert smooth.history[-1]["train_loss"] > sharp.history[-1]["train_loss"]


def test_learns_the_toy_task(tmp_path, data):
    result = run(tmp_path, experiment(epochs=5, optimizer={"lr": 0.005}), data)
    assert result.history[-1]["val_acc"] > 0.9


def test_resume_after_interruption_gives_the_same_weights(tmp_path, data):
    exp = experiment(epochs=4, model_kwargs={"blocks": [[8], [16]], "dense": [32], "dropout": 0.2},
                     augment={"v": {"rotation": 10.0}}, schedule={"name": "onecycle"})
    whole = run(tmp_path / "whole", exp, data)
    first = run(tmp_path / "split", exp, data, stop_after=2)
    assert len(first.history) == 2 and (tmp_path / "split" / "checkpoint.pt").exists()
    seen = []
    resumed = train.train(exp, *data, STATS, tmp_path / "split" / "checkpoint.pt", log=lambda m: None,
                          on_epoch=seen.append)
    assert [row["epoch"] for row in seen] == [1, 2, 3, 4]  # history replayed, then two new epochs
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in whole.history]


def test_checkpoint_of_other_params_is_refused(tmp_path, data):
    run(tmp_path, experiment(epochs=1), data)
    messages = []
    result = train.train(experiment(epochs=2, optimizer={"lr": 0.002}), *data, STATS, tmp_path / "checkpoint.pt",
                         log=messages.append)
    assert any("not resuming" in m and "different params" in m for m in messages)
    assert [row["epoch"] for row in result.history] == [1, 2]
    fresh = run(tmp_path / "fresh", experiment(epochs=2, optimizer={"lr": 0.002}), data)
    for key, value in fresh.model.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[key])


def test_unreadable_checkpoint_is_not_resumed(tmp_path, data):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    messages = []
    result = train.train(experiment(epochs=1), *data, STATS, tmp_path / "checkpoint.pt", log=messages.append)
    assert any("is unreadable" in m for m in messages) and len(result.history) == 1


def test_early_stopping_restores_the_best_epoch(tmp_path, data):
    exp = experiment(epochs=12, early_stopping=1, optimizer={"name": "sgd", "lr": 3.0})  # diverges
    result = run(tmp_path, exp, data)
    losses = [row["val_loss"] for row in result.history]
    assert result.stopped_early and len(losses) < 12
    assert result.best_epoch == 1 + int(np.argmin(losses))
    inputs = train.Inputs(STATS["mean"], STATS["std"], 28, True)
    loss, _ = train.evaluate(result.model, data[1], inputs, runtime.autocast_dtype(torch.device("cpu"), "auto"))
    assert loss == pytest.approx(min(losses), rel=1e-4)


def test_val_last_only_scores_the_last_epoch_and_trains_the_same(tmp_path, data):
    exp = experiment(epochs=3)
    every = run(tmp_path / "every", exp, data)
    last = run(tmp_path / "last", exp, data, val_last_only=True)
    assert [row["val_loss"] for row in last.history[:-1]] == [None, None]
    assert [row["val_acc"] for row in last.history[:-1]] == [None, None]
    assert [row["train_loss"] for row in last.history] == [row["train_loss"] for row in every.history]
    assert last.history[-1]["val_loss"] == every.history[-1]["val_loss"]
    assert last.best_epoch == 3
    stopping = run(tmp_path / "stopping", experiment(epochs=3, early_stopping=5), data, val_last_only=True)
    assert None not in [row["val_loss"] for row in stopping.history]  # early stopping needs every epoch's score


def test_val_every_scores_every_nth_epoch_and_the_last_and_trains_the_same(tmp_path, data):
    every = run(tmp_path / "every", experiment(epochs=5), data)
    sparse = run(tmp_path / "sparse", experiment(epochs=5, val_every=2), data)
    assert [row["val_loss"] is not None for row in sparse.history] == [False, True, False, True, True]
    assert [row["train_loss"] for row in sparse.history] == [row["train_loss"] for row in every.history]
    assert [row["val_acc"] for row in sparse.history if row["val_acc"] is not None] == [
        every.history[i]["val_acc"] for i in (1, 3, 4)]
    assert all(torch.equal(a, b) for a, b in zip(weights(sparse.model).values(), weights(every.model).values(), strict=True))
    with pytest.raises(params.ParamsError, match=r"^test: val_every: 2 with early_stopping 3, which reads val loss "
                                                 r"after every epoch; expected 1$"):
        experiment(val_every=2, early_stopping=3)
    with pytest.raises(params.ParamsError, match=r"^test: val_every: 2 with schedule plateau, "):
        experiment(val_every=2, schedule={"name": "plateau"})


def test_on_the_fly_augmentation_changes_training(tmp_path, data):
    plain = run(tmp_path / "a", experiment(epochs=1), data)
    augmented = run(tmp_path / "b", experiment(epochs=1, augment={"a": {"rotation": 20.0}, "b": {"zoom": 0.2}}), data)
    assert plain.history[0]["train_loss"] != augmented.history[0]["train_loss"]


def test_transfer_copies_features_and_freeze_keeps_them(tmp_path, data):
    source = run(tmp_path / "source", experiment(epochs=1), data).model
    state = {"name": "cnn", "state_dict": weights(source)}
    exp = experiment(epochs=2, init="source", freeze=True)
    tuned = run(tmp_path / "frozen", exp, data, init_state=state).model
    classifier = [n for n, m in tuned.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    for key, value in tuned.state_dict().items():
        same = torch.equal(value, state["state_dict"][key])
        assert same == (not key.startswith(classifier + ".")), key  # only the classifier moved
    with pytest.raises(AuglabError, match="no tensor matches"):
        checkpoint.transfer(torch.nn.Sequential(torch.nn.Linear(3, 3)), state, False, print)


def test_saved_model_round_trip(tmp_path, data):
    result = run(tmp_path, experiment(epochs=1), data)
    checkpoint.save_model(tmp_path / "model.pt", experiment(epochs=1), result.model, STATS, list("0123456789"))
    model, state = checkpoint.load_model(tmp_path / "model.pt", torch.device("cpu"))
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(model(x), result.model.eval()(x), atol=1e-5)
    assert state["class_names"] == list("0123456789") and state["image_size"] == 28


def test_device_and_precision_choices():
    assert runtime.choose_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(AuglabError, match="device 'cuda': no CUDA device here"):
            runtime.choose_device("cuda")
    assert runtime.autocast_dtype(torch.device("cpu"), "fp32") is None
    assert runtime.autocast_dtype(torch.device("cpu"), "bf16") is torch.bfloat16
    native = runtime.native_bf16()
    assert runtime.autocast_dtype(torch.device("cpu"), "auto") is (torch.bfloat16 if native else None)
    # the report says which of the two this host is, since the numbers move with it
    host = report.machine()
    assert torch.backends.cpu.get_cpu_capability() in host
    assert ("no native bf16, so auto = fp32" in host) is not native


def test_optimizer_options_that_do_not_apply_are_refused():
    with pytest.raises(AuglabError, match="optimizer adam: nesterov applies to sgd only"):
        train.make_optimizer([torch.zeros(1, requires_grad=True)], experiment(optimizer={"nesterov": True}).optimizer)
    with pytest.raises(AuglabError, match="optimizer adagrad: momentum applies to sgd and rmsprop only"):
        train.make_optimizer([torch.zeros(1, requires_grad=True)],
                             experiment(optimizer={"name": "adagrad", "momentum": 0.5}).optimizer)


def test_experiment_params_errors():
    with pytest.raises(params.ParamsError, match=r"^test.model: missing required key \(dvc.yaml reads it"):
        params.experiment(DEFAULTS, {"dataset": "toy", "shards": "x"}, "test")
    with pytest.raises(params.ParamsError, match=r"test.optimizer.name: expected 'adam', 'sgd'.*got 'adamw'"):
        experiment(optimizer={"name": "adamw"})
    with pytest.raises(params.ParamsError, match=r"test.epochs: expected greater than 0, got -3"):
        experiment(epochs=-3)
    with pytest.raises(params.ParamsError, match=r"test.batch_size: expected int, got '64'"):
        experiment(batch_size="64")
    with pytest.raises(params.ParamsError, match=r"test.label_smoothing: expected less than 1, got 1.5"):
        experiment(label_smoothing=1.5)
    with pytest.raises(params.ParamsError, match=r"test.augment.v.shear: unknown key|test.augment.v.sheer: unknown key"):
        experiment(augment={"v": {"sheer": 3.0}})


def test_checkpoint_from_other_initial_weights_is_refused(tmp_path, data):
    """A finetune whose pretrained model was retrained must not resume the old run."""
    first = {"name": "cnn", "state_dict": weights(run(tmp_path / "a", experiment(epochs=1), data).model)}
    second = {"name": "cnn", "state_dict": weights(run(tmp_path / "b", experiment(epochs=1, seed=5), data).model)}
    exp = experiment(epochs=2, init="pretrained")
    run(tmp_path, exp, data, init_state=first, stop_after=1)
    messages = []
    train.train(exp, *data, STATS, tmp_path / "checkpoint.pt", log=messages.append, init_state=second)
    assert any("not resuming" in m for m in messages)
    messages.clear()
    run(tmp_path / "c", exp, data, init_state=first, stop_after=1)
    train.train(exp, *data, STATS, tmp_path / "c" / "checkpoint.pt", log=messages.append, init_state=first)
    assert any(m.startswith("resuming from") for m in messages)


def test_fp16_trains_with_a_gradient_scaler_and_resumes_it(tmp_path, data):
    """fp16 autocast (what `auto` picks on GPUs without bf16) scales the loss; bf16 and fp32 do not."""
    cpu = torch.device("cpu")
    assert train.gradient_scaler(cpu, torch.float16).is_enabled()
    assert not train.gradient_scaler(cpu, torch.bfloat16).is_enabled() and not train.gradient_scaler(cpu, None).is_enabled()
    exp = experiment(precision="fp16", channels_last=False, epochs=2)
    first = run(tmp_path, exp, data, stop_after=1)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert 0 < saved["scaler"]["scale"] <= 2.0**16  # GradScaler's start; lowered on every overflow
    assert all(torch.isfinite(v).all() for v in first.model.state_dict().values() if v.is_floating_point())
    resumed = run(tmp_path, exp, data)  # picks the scale up from the checkpoint
    assert len(resumed.history) == 2 and np.isfinite(resumed.history[-1]["train_loss"])
    run(tmp_path / "bf16", experiment(precision="bf16", epochs=1), data, stop_after=1)
    assert "scaler" not in torch.load(tmp_path / "bf16" / "checkpoint.pt", weights_only=True)


def test_weight_average_is_what_val_scores_and_resumes(tmp_path, data):
    """ema: the returned (saved) model is the exponential average of the weights, BN statistics
    included, not the last step's weights; val scores it; a resumed run continues the same average."""
    exp = experiment(epochs=4, ema=0.9, model_kwargs={"blocks": [[8], [16]], "dense": [32], "batchnorm": True})
    plain = run(tmp_path / "plain", exp.model_copy(update={"ema": 0.0}), data)
    whole = run(tmp_path / "whole", exp, data)
    assert [r["train_loss"] for r in whole.history] == [r["train_loss"] for r in plain.history]  # same steps
    assert [r["val_loss"] for r in whole.history] != [r["val_loss"] for r in plain.history]  # another model
    differ = [k for k, v in plain.model.state_dict().items() if not torch.equal(v, whole.model.state_dict()[k])]
    assert any(k.endswith("weight") for k in differ) and any(k.endswith("running_mean") for k in differ)
    run(tmp_path / "split", exp, data, stop_after=2)
    resumed = run(tmp_path / "split", exp, data)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    with pytest.raises(params.ParamsError, match="ema"):
        experiment(ema=1.0)
