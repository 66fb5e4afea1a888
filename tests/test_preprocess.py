import numpy as np
import pytest
import torch

from auglab import preprocess


def test_fit_stats_matches_float64_numpy():
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    mean, std = preprocess.fit_stats(images)
    assert mean == pytest.approx((images / 255).mean(), rel=1e-12)
    assert std == pytest.approx((images / 255).std(), rel=1e-9)


def test_normalized_train_batch_has_zero_mean_unit_std():
    images = np.random.default_rng(1).integers(0, 120, (64, 28, 28), dtype=np.uint8)
    mean, std = preprocess.fit_stats(images)
    x = preprocess.to_input(torch.from_numpy(images), mean, std)
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert x.mean().item() == pytest.approx(0, abs=1e-5)
    assert x.std(unbiased=False).item() == pytest.approx(1, abs=1e-5)


def test_padding_to_32_adds_background_border():
    images = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    x = preprocess.to_input(images, mean=0.1307, std=0.3081, size=32)
    assert x.shape == (2, 1, 32, 32)
    background = (0 - 0.1307) / 0.3081
    assert torch.allclose(x[:, :, :2, :], torch.tensor(background))
    assert torch.allclose(x[:, :, :, -2:], torch.tensor(background))
    assert torch.allclose(x[:, :, 2:30, 2:30], torch.tensor((1 - 0.1307) / 0.3081))


def test_bad_inputs():
    with pytest.raises(TypeError, match="expected a uint8 batch, got torch.float32"):
        preprocess.to_input(torch.zeros(1, 28, 28), 0.1, 0.3)
    with pytest.raises(ValueError, match="cannot pad 28x28 to the smaller 24x24"):
        preprocess.to_input(torch.zeros(1, 28, 28, dtype=torch.uint8), 0.1, 0.3, size=24)


def test_input_stats_unit_scales_by_255_alone():
    """normalize "unit" (Keras-style, S2) feeds x/255; "dataset" keeps the fitted statistics."""
    stats = {"mean": 0.13, "std": 0.31, "pad_to": 32}
    assert preprocess.input_stats(stats, "dataset") == stats
    unit = preprocess.input_stats(stats, "unit")
    assert unit == {"mean": 0.0, "std": 1.0, "pad_to": 32} and stats["mean"] == 0.13  # a copy
    batch = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    x = preprocess.to_input(batch, unit["mean"], unit["std"])
    assert torch.equal(x, batch.float().unsqueeze(1) / 255)
    with pytest.raises(ValueError, match="normalize 'raw': expected dataset or unit"):
        preprocess.input_stats(stats, "raw")
