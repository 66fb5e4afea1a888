"""The conditional GAN: shapes and ranges, conditioning, seeded sampling into shards, a short
training run, resume equality, and the quality measures (FID, CAS subsets, features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ROOT
from scipy import linalg
from test_train import toy_data

from auglab import AuglabError, gan, models, params, quality, shards

DEFAULTS = params.load_key(ROOT / "params.yaml", "gan.defaults")


def config(**overrides) -> params.GanConfig:
    entry = {"dataset": "toy", "steps": 12, "batch_size": 16, "g_width": 8, "d_width": 8, "z_dim": 16,
             "log_every": 4, "checkpoint_every": 1000, "ema_start": 2, "samples_per_class": 7, **overrides}
    return params.gan_config(DEFAULTS, entry, "test")


def generator(seed: int = 0) -> gan.Generator:
    torch.manual_seed(seed)
    model, _ = gan.build(config())
    return model.eval()


def test_generator_shape_and_range_and_uint8_round_trip():
    g = generator()
    x = g(torch.randn(5, g.z_dim), torch.arange(5))
    assert x.shape == (5, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(gan.to_uint8(gan.to_unit(images)), images)


def test_discriminator_scores_and_class_logits():
    _, d = gan.build(config())
    score, logits = d(torch.rand(6, 1, 28, 28) * 2 - 1, torch.arange(6))
    assert score.shape == (6,) and logits.shape == (6, 10)


def test_the_label_reaches_the_output():
    g = generator()
    z = torch.randn(4, g.z_dim)
    a, b = g(z, torch.zeros(4, dtype=torch.long)), g(z, torch.full((4,), 3))
    assert (a - b).abs().mean() > 1e-3  # same noise, different class: different images


def test_samples_are_shards_labelled_as_asked_and_deterministic(tmp_path):
    g = generator()
    info, acceptance = gan.write_samples(tmp_path / "a", g, 7, "toy", seed=3, rows_per_shard=30)
    shards.write_manifest(tmp_path / "a", {"gan": info})
    gan.write_samples(tmp_path / "b", g, 7, "toy", seed=3, rows_per_shard=30)
    gan.write_samples(tmp_path / "c", g, 7, "toy", seed=4, rows_per_shard=30)
    assert acceptance == 1.0 and info.rows == 70 and info.class_counts == [7] * 10 and len(info.shards) == 3
    for name in info.shards:  # same weights and seed: the same bytes
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / info.shards[0]).read_bytes() != (tmp_path / "c" / info.shards[0]).read_bytes()
    split = shards.read_split(tmp_path / "a", "gan")  # validates the schema
    assert np.array_equal(split.labels, np.arange(70) % 10)
    assert split.images.dtype == np.uint8 and split.images.shape == (70, 28, 28)
    table = shards._read_shard(tmp_path / "a" / info.shards[0])
    assert set(table["origin"].to_pylist()) == {"gan"} and set(table["source_id"].to_pylist()) == {-1}


class Judge(torch.nn.Module):
    """A stand-in discriminator whose auxiliary head is sure of class 0 for images whose pixel
    sum is even (about half of any set), and of no class otherwise."""

    @staticmethod
    def even(x):
        return gan.to_uint8(x).flatten(1).long().sum(1) % 2 == 0

    def forward(self, x, y):
        logits = torch.zeros(len(x), 10)
        logits[:, 0] = 20 * self.even(x).float()
        return torch.zeros(len(x)), logits


def test_samples_the_judge_rejects_are_redrawn(tmp_path):
    """Accepted images all pass the judge; the acceptance rate counts every draw."""
    g = generator()
    torch.manual_seed(1)
    images = gan.sample(g, torch.zeros(400, dtype=torch.long), torch.Generator().manual_seed(0))
    share = gan.accept(Judge(), images, torch.zeros(400, dtype=torch.long), 0.9).float().mean().item()
    assert 0 < share < 1  # the stand-in passes some of the untrained generator's images
    kept, drawn = gan.draw_shard(g, np.zeros(50, dtype=np.uint8), torch.Generator().manual_seed(0), Judge(), 0.9)
    assert drawn > 50 and Judge.even(gan.to_unit(torch.from_numpy(kept))).all()
    with pytest.raises(AuglabError, match="class 3 still has 5 images below min_confidence 0.9 after 50 rounds"):
        gan.draw_shard(g, np.full(5, 3, dtype=np.uint8), torch.Generator().manual_seed(0), Judge(), 0.9)


def test_sample_count_must_be_positive(tmp_path):
    with pytest.raises(AuglabError, match="expected a positive count per class, got 0"):
        gan.write_samples(tmp_path, generator(), 0, "toy", seed=0)


def test_short_training_run_logs_finite_losses(tmp_path):
    result = gan.train(config(), toy_data(128), tmp_path / "ck.pt", log=lambda message: None)
    assert [row["step"] for row in result.history] == [4, 8, 12]
    for row in result.history:
        assert all(np.isfinite(row[key]) for key in ("d_loss", "g_loss", "d_real", "d_fake"))
    assert not result.generator.training and not (tmp_path / "ck.pt").exists()


def test_training_moves_the_discriminator_towards_real(tmp_path):
    """A few dozen steps on separable toy data: D scores real images above generated ones."""
    result = gan.train(config(steps=40, log_every=40), toy_data(256), tmp_path / "ck.pt", log=lambda m: None)
    assert result.history[-1]["d_real"] > result.history[-1]["d_fake"]


def test_z_scale_widens_the_samples():
    g, labels = generator(), torch.zeros(200, dtype=torch.long)
    narrow = gan.sample(g, labels, torch.Generator().manual_seed(0), z_scale=0.25).float()
    wide = gan.sample(g, labels, torch.Generator().manual_seed(0), z_scale=2.0).float()
    assert wide.std(0).mean() > narrow.std(0).mean()


def test_resume_ends_with_the_same_weights(tmp_path):
    data, cfg = toy_data(128), config(steps=10, log_every=3)
    straight = gan.train(cfg, data, tmp_path / "a.pt", log=lambda m: None)
    gan.train(cfg, data, tmp_path / "b.pt", log=lambda m: None, stop_after=5)
    assert (tmp_path / "b.pt").exists()
    messages: list[str] = []
    resumed = gan.train(cfg, data, tmp_path / "b.pt", log=messages.append)
    assert any("resuming" in m and "after step 5" in m for m in messages)
    for (name, a), (_, b) in zip(straight.generator.state_dict().items(), resumed.generator.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    keys = ("step", "d_loss", "g_loss")
    assert [[row[k] for k in keys] for row in straight.history] == [[row[k] for k in keys] for row in resumed.history]


def test_a_checkpoint_of_other_params_is_not_resumed(tmp_path):
    data = toy_data(128)
    gan.train(config(steps=10), data, tmp_path / "ck.pt", log=lambda m: None, stop_after=5)
    messages: list[str] = []
    gan.train(config(steps=10, d_lr=0.001), data, tmp_path / "ck.pt", log=messages.append)
    assert any(m.startswith("not resuming") and "different params" in m for m in messages)
    assert not any(m.startswith("resuming") for m in messages)


def test_frechet_distance_matches_scipy_sqrtm_and_is_zero_for_identical_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(2000, 6)) @ rng.normal(size=(6, 6)) + 0.5
    mu_a, mu_b, cov_a, cov_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    assert quality.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert abs(quality.frechet_distance(a, a)) < 1e-6


def test_matching_rows_take_the_first_images_of_each_class():
    labels = np.arange(50) % 5
    rows = quality.matching_rows(labels, np.array([2, 0, 1, 3, 2]))
    assert rows.tolist() == [0, 2, 3, 4, 5, 8, 9, 13]
    with pytest.raises(AuglabError, match="class 3 has 10 images, expected at least 11"):
        quality.matching_rows(labels, np.array([1, 1, 1, 11, 1]))


def test_penultimate_features_are_the_last_linear_layers_input():
    torch.manual_seed(0)
    model = models.build("cnn", {"blocks": [[8], [16]], "dense": [24]}).eval()
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    features = quality.penultimate(model, images, 0.1, 0.3, 28)
    assert features.shape == (7, 24) and features.dtype == np.float64
    assert not any(h for h in (m._forward_hooks for m in model.modules()) if h)  # hook removed
