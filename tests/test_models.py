import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auglab import AuglabError, models
from auglab.models import MODELS, build, count_parameters, flops_per_image, margin_loss

# Narrow versions of every registry entry (same layer structure, fewer filters) for the tests
# that train; the shape test also builds every entry with its defaults.
SMALL = {
    "mlp": {"hidden": [32, 16], "dropout": [0.3, 0.2]},
    "cnn": {"blocks": [[8], [16]], "batchnorm": True, "dropout": 0.1, "dense": [32]},
    "resnet": {"widths": [8, 16], "blocks_per_stage": 1},
    "capsnet": {"conv_channels": 16, "primary_capsules": 4, "capsule_dim": 8, "decoder": [32, 64]},
    "lenet5": {},
    "kaggle_cnn": {"blocks": [[8, 8], [16, 16]], "dense": [32]},
    "s0_cnn": {"blocks": [[8], [16]], "dense": [32]},
    "mastery_cnn": {"blocks": [[8]], "dense": [16]},
    "fan_out_cnn": {"blocks": [[8, 8], [16, 16], [32]], "dense": [16]},
    "fan_in_cnn": {"blocks": [[32], [16, 16], [8, 8]], "dense": [16]},
}


def batch(model: nn.Module, size: int, seed: int = 0, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normalized-looking images for `model` and random labels, reproducible by seed."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, channels, model.image_size, model.image_size, generator=generator)
    return x, torch.randint(0, 10, (size,), generator=generator)


def loss_and_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the trainer minimizes: `model.objective` when the model has one, else cross-entropy."""
    if hasattr(model, "objective"):
        return model.objective(x, y)
    scores = model(x)
    return F.cross_entropy(scores, y), scores


def test_registry_covers_the_studies():
    assert sorted(MODELS) == sorted(SMALL)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_defaults_map_images_to_class_scores(name):
    torch.manual_seed(0)
    model = build(name, {}).eval()
    assert model.image_size == (32 if name == "lenet5" else 28) and model.in_channels == 1
    x, _ = batch(model, 3)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_three_channels_and_other_class_counts(name):
    torch.manual_seed(0)
    model = build(name, {**SMALL[name], "in_channels": 3, "classes": 7}).eval()
    x, _ = batch(model, 2, channels=3)
    with torch.no_grad():
        assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_channels_last_gives_the_same_scores(name):
    torch.manual_seed(0)
    model = build(name, SMALL[name]).eval()
    x, _ = batch(model, 4)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bf16_autocast_trains(name):
    torch.manual_seed(0)
    model = build(name, SMALL[name])
    x, y = batch(model, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, scores = loss_and_scores(model, x, y)
    loss.backward()
    assert scores.shape == (8, 10) and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_adam_step_lowers_the_loss(name):
    torch.manual_seed(0)
    model = build(name, SMALL[name])
    x, y = batch(model, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(1)  # the same dropout masks before and after the step
    before, _ = loss_and_scores(model, x, y)
    before.backward()
    optimizer.step()
    torch.manual_seed(1)
    after, _ = loss_and_scores(model, x, y)
    assert before.dim() == 0 and after.item() < before.item()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checkpoint_round_trip(name, tmp_path):
    torch.manual_seed(0)
    kwargs = SMALL[name]
    model = build(name, kwargs)
    x, y = batch(model, 8)
    loss_and_scores(model, x, y)[0].backward()  # train mode: moves BN running stats off their init
    torch.save({"name": name, "kwargs": kwargs, "state_dict": model.state_dict()}, tmp_path / "model.pt")

    checkpoint = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.manual_seed(1)  # a differently initialized copy, so equality comes from the state dict
    restored = build(checkpoint["name"], checkpoint["kwargs"])
    restored.load_state_dict(checkpoint["state_dict"])
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), model.eval()(x))


@pytest.fixture
def flush_denormals():
    """Treat denormal floats as zero: memorizing noise makes some, and they slow a CPU ~4x."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_memorizes_64_random_images(name, flush_denormals):
    torch.manual_seed(0)
    model = build(name, SMALL[name])
    for module in model.modules():
        if isinstance(module, (nn.Dropout, models.ByteDropout)):
            module.p = 0.0  # dropout fights memorization by design; its masks are tested above
    x, y = batch(model, 64)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    accuracy = 0.0
    for step in range(300):
        model.train()
        loss, _ = loss_and_scores(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 9:
            with torch.no_grad():
                accuracy = (model.eval()(x).argmax(1) == y).float().mean().item()
            if accuracy == 1.0:
                break
    assert accuracy == 1.0, f"{name}: train accuracy {accuracy} after {step + 1} steps"


def test_parameter_counts_match_the_published_architectures():
    # LeNet-5: conv 1->6 5x5 (156) + conv 6->16 5x5 (2,416) + 400->120 (48,120) + 120->84 (10,164)
    # + 84->10 (850); average pools have no parameters.
    assert count_parameters(build("lenet5", {})) == 61_706
    # Kaggle CNN: conv 1->32 5x5 (832) + 32->32 5x5 (25,632) + 32->64 3x3 (18,496) + 64->64 3x3
    # (36,928) + 7*7*64=3136 -> 256 (803,072) + 256 -> 10 (2,570).
    assert count_parameters(build("kaggle_cnn", {})) == 887_530
    # Mastery: conv 1->32 3x3 valid (320) -> 26x26 -> pool 13x13 -> 5408 -> 100 (540,900) + 100 -> 10 (1,010).
    assert count_parameters(build("mastery_cnn", {})) == 542_230
    mastery = {"blocks": [[32]], "kernel": 3, "padding": "valid", "pool": "max", "dense": [100]}
    assert count_parameters(build("cnn", mastery)) == 542_230
    # CapsNet, the paper's 8.2M: conv 1->256 9x9 (20,992), primary 256->256 9x9 (5,308,672),
    # W 1152x10x16x8 (1,474,560), decoder 160-512-1024-784 (1,411,344).
    assert count_parameters(build("capsnet", {})) == 8_215_568
    # S3's dropout lecture net: 784-128-128-64-10.
    assert count_parameters(build("mlp", {"hidden": [128, 128, 64], "dropout": [0.3, 0.2, 0]})) == 125_898


@pytest.mark.parametrize("name", ["fan_in_cnn", "fan_out_cnn"])
def test_fan_designs_have_about_144k_parameters(name):
    model = build(name, {})
    assert abs(count_parameters(model) - 144_000) <= 14_400
    assert isinstance(model.features[1], nn.BatchNorm2d)
    assert isinstance(model.features[2], nn.LeakyReLU)


def test_preset_defaults_can_be_overridden():
    model = build("lenet5", {"activation": "relu", "image_size": 28})
    assert model.image_size == 28 and isinstance(model.features[1], nn.ReLU)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_margin_loss_is_zero_for_confident_correct_capsules():
    target = torch.tensor([0, 3, 9])
    perfect = torch.full((3, 10), 0.05)
    perfect[torch.arange(3), target] = 0.95
    assert margin_loss(perfect, target).item() == 0.0
    # Wrong class long, true class short: (0.9 - 0.05)^2 + 0.5 * (0.95 - 0.1)^2 per image.
    wrong = torch.full((3, 10), 0.05)
    wrong[torch.arange(3), (target + 1) % 10] = 0.95
    assert margin_loss(wrong, target).item() == pytest.approx(0.85**2 * 1.5)


def test_capsnet_lengths_lie_in_the_unit_interval_and_reconstruct_images():
    torch.manual_seed(0)
    model = build("capsnet", SMALL["capsnet"])
    x, y = batch(model, 4)
    loss, lengths = model.objective(x, y)
    assert torch.allclose(lengths, model(x))
    assert ((lengths >= 0) & (lengths < 1)).all() and loss.item() > 0
    images = model.reconstruct(model.capsules(x))
    assert images.shape == x.shape and ((images > 0) & (images < 1)).all()


def test_flops_grow_with_the_model():
    small = flops_per_image(build("cnn", {"blocks": [[8], [16]]}))
    large = flops_per_image(build("cnn", {"blocks": [[32], [64]]}))
    # The second conv dominates: 14*14 positions * 9 taps * in*out filters, 2 FLOPs per MAC.
    assert 0 < small < large
    assert large - small >= 2 * 14 * 14 * 9 * (32 * 64 - 8 * 16)
    model = build("resnet", SMALL["resnet"]).train()
    assert flops_per_image(model) > 0 and model.training  # restores the mode it found


def test_unknown_name_lists_the_known_ones():
    known = ", ".join(sorted(MODELS))
    with pytest.raises(AuglabError, match=f"^model 'foo': unknown; known: {known}$"):
        build("foo", {})


def test_bad_kwarg_names_the_model_the_key_and_the_accepted_keys():
    with pytest.raises(AuglabError) as error:
        build("kaggle_cnn", {"filters": [32]})
    message = str(error.value)
    assert message.startswith("model 'kaggle_cnn': unknown kwarg 'filters'; accepted: in_channels, classes,")
    assert "blocks" in message and "global_pool" in message


def test_unknown_activation_lists_the_known_ones():
    known = "elu, leaky_relu, linear, relu, selu, sigmoid, tanh"
    with pytest.raises(AuglabError, match=f"^model 'mlp': activation 'gelu': unknown; known: {known}$"):
        build("mlp", {"activation": "gelu"})


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("cnn", {"padding": "full"}, "padding 'full': expected one of same, valid"),
        ("cnn", {"pool": "min"}, "pool 'min': expected one of max, avg, none"),
        ("cnn", {"blocks": [[8]] * 5}, r"a 28x28 input shrinks to nothing"),
        ("cnn", {"kernel": [3, 3, 3]}, r"kernel \[3, 3, 3\]: expected one value or a list of 2"),
        ("mlp", {"hidden": [64, 32], "dropout": [0.5]}, r"dropout \[0.5\]: expected one value or a list"),
        ("mlp", {"dropout": 1.0}, r"dropout 1.0: expected a probability in \[0, 1\)"),
        ("capsnet", {"image_size": 16}, "no primary capsules"),
    ],
)
def test_bad_values_name_the_model_and_the_value(name, kwargs, message):
    with pytest.raises(AuglabError, match=f"^model '{name}': .*{message}"):
        build(name, kwargs)


@pytest.mark.parametrize("p", [0.25, 0.3, 0.5])
def test_byte_dropout_keeps_the_expected_fraction_and_the_mean(p):
    layer = models.ByteDropout(p).train()
    x = torch.ones(400_000)
    torch.manual_seed(0)
    y = layer(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - layer.keep / 256) < 0.005 and abs(layer.keep / 256 - (1 - p)) <= 1 / 512
    assert abs(y.mean().item() - 1.0) < 0.01  # inverted scaling keeps the expectation
    torch.manual_seed(0)
    assert torch.equal(layer(x), y)  # drawn from the global generator: seeded runs repeat
    assert torch.equal(layer.eval()(x), x)



def test_glorot_init_is_keras_default():
    """weight_init="glorot" (S2's Keras LeNet-5): every conv and dense weight inside the glorot-uniform
    bound sqrt(6 / (fan_in + fan_out)) and spread across it, every bias zero; the default is PyTorch's."""
    torch.manual_seed(0)
    keras = build("lenet5", {"weight_init": "glorot"})
    torch.manual_seed(0)
    default = build("lenet5")
    layers = [m for m in keras.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 5  # 2 convs + 3 dense
    for layer in layers:
        fan_out, fan_in = layer.weight.shape[0], layer.weight[0].numel()
        receptive = layer.weight[0, 0].numel() if layer.weight.dim() == 4 else 1
        bound = (6 / (fan_in + fan_out * receptive)) ** 0.5
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert torch.count_nonzero(layer.bias) == 0
    assert any(torch.count_nonzero(m.bias) for m in default.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    with pytest.raises(AuglabError, match="weight_init 'he': expected one of torch, glorot"):
        build("lenet5", {"weight_init": "he"})
