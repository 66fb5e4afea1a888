"""Augmentation ops (each alone, parametrized over the registry) and recipes written as shards."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from conftest import ROOT

from auglab import AuglabError, augment, params, plots, shards

# A visible strength for every op; the test below fails if an op is added without one.
STRENGTH = {
    "rotation": {"strength": 30.0},
    "translation": {"strength": 0.15},
    "shear": {"strength": 20.0},
    "zoom": {"strength": 0.3},
    "elastic": {"alpha": 3.0, "sigma": 2.0},
    "hflip": {"strength": 0.5},
    "erasing": {"p": 0.8, "area": [0.05, 0.3]},
    "noise": {"strength": 8.0},
}
ZERO = {
    "rotation": {"strength": 0.0},
    "translation": {"strength": 0.0},
    "shear": {"strength": 0.0},
    "zoom": {"strength": 0.0},
    "elastic": {"alpha": 0.0, "sigma": 2.0},
    "hflip": {"strength": 0.0},
    "erasing": {"p": 0.0, "area": [0.05, 0.3]},
    "noise": {"strength": 0.0},
}


def digits(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Blob-like uint8 images (N, 1, 28, 28): a bright random rectangle on black, off-centre."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, 28, 28), dtype=np.uint8)
    for i in range(n):
        top, left = rng.integers(4, 12, 2)
        images[i, 0, top : top + rng.integers(6, 14), left : left + rng.integers(4, 10)] = rng.integers(100, 256)
    return torch.from_numpy(images)


def run(name, images, seed=0, shard=0, kwargs=None):
    return augment.OPS[name](images, augment.generator_for(seed, shard), **(kwargs or STRENGTH[name]))


def test_every_op_has_test_strengths():
    assert set(STRENGTH) == set(ZERO) == set(augment.OPS)


@pytest.mark.parametrize("name", sorted(augment.OPS))
def test_op_keeps_shape_dtype_and_changes_something(name):
    images = digits()
    out = run(name, images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)


@pytest.mark.parametrize("name", sorted(augment.OPS))
def test_op_same_seed_same_bytes_other_shard_other_bytes(name):
    images = digits()
    assert torch.equal(run(name, images), run(name, images))
    assert not torch.equal(run(name, images, shard=0), run(name, images, shard=1))
    assert not torch.equal(run(name, images, seed=0), run(name, images, seed=1))


@pytest.mark.parametrize("name", sorted(augment.OPS))
def test_zero_strength_is_identity(name):
    images = digits()
    assert torch.equal(run(name, images, kwargs=ZERO[name]), images)


@pytest.mark.parametrize("name", sorted(augment.OPS))
def test_values_saturate_instead_of_wrapping(name):
    """A white image stays white where it is still covered: no uint8 wrap-around to black."""
    white = torch.full((16, 1, 28, 28), 255, dtype=torch.uint8)
    out = run(name, white)
    centre = out[:, :, 12:16, 12:16].float()
    if name == "erasing":
        assert set(out.unique().tolist()) <= {0, 255}
    elif name == "noise":
        assert centre.mean() > 240  # wrapped noise would average ~128
    else:
        assert centre.min() == 255


def test_flip_twice_is_identity_and_flip_mirrors():
    images = digits()
    once = run("hflip", images, kwargs={"strength": 1.0})
    assert torch.equal(once, images.flip(-1))
    assert torch.equal(run("hflip", once, kwargs={"strength": 1.0}), images)


def test_warp_rotates_the_right_way_by_exactly_a_quarter_turn():
    images = digits(8)
    quarter = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).expand(8, 3, 3)
    assert torch.equal(augment.warp(images, quarter), torch.rot90(images, 1, dims=(-2, -1)))


def test_translation_moves_the_centre_of_mass_within_range():
    images = digits(256)
    out = run("translation", images, kwargs={"strength": 0.1})
    columns = torch.arange(28.0)

    def centre(x):
        weights = x.float().sum(dim=(1, 2))  # (N, W)
        return (weights * columns).sum(1) / weights.sum(1)

    kept = out.flatten(1).sum(1) > 0.9 * images.flatten(1).sum(1)  # not pushed off the edge
    shift = (centre(out) - centre(images))[kept]
    assert shift.abs().max() <= 0.1 * 28 + 1.0
    assert shift.abs().mean() > 0.5  # it did move


def test_view_composes_affine_ops_into_one_warp():
    images = digits()
    ops = {"rotation": STRENGTH["rotation"], "shear": STRENGTH["shear"], "zoom": STRENGTH["zoom"]}
    out = augment.apply_view(images, ops, augment.generator_for(3, 0))
    generator = augment.generator_for(3, 0)
    matrix = torch.eye(3, dtype=torch.float64).expand(len(images), 3, 3)
    for name in ("rotation", "shear", "zoom"):  # Keras' composition order
        matrix = augment.compose(matrix, augment.AFFINE[name](len(images), generator, **ops[name]))
    assert torch.equal(out, augment.warp(images, matrix))

    sequential = images
    generator = augment.generator_for(3, 0)
    for name in ("rotation", "shear", "zoom"):
        sequential = augment.warp(sequential, augment.AFFINE[name](len(images), generator, **ops[name]))
    assert not torch.equal(out, sequential)  # three resamplings blur differently


def test_nearest_fill_repeats_the_edge_where_zeros_fill_is_black():
    images = torch.full((4, 1, 28, 28), 200, dtype=torch.uint8)
    ops = {"zoom": {"strength": 0.0}, "translation": {"strength": 0.3}}  # shifts of up to 8 pixels
    black = augment.apply_view(images, ops, augment.generator_for(1, 0))
    edge = augment.apply_view(images, {**ops, "fill": {"mode": "nearest"}}, augment.generator_for(1, 0))
    assert (black == 0).any() and bool((edge == 200).all())
    view = params.View(rotation=45, fill="nearest")
    assert view.ops() == {"rotation": {"strength": 45.0}, "fill": {"mode": "nearest"}}
    with pytest.raises(AuglabError, match="augment fill 'mirror': expected one of zeros, nearest"):
        augment.warp(images, torch.eye(3, dtype=torch.float64).expand(4, 3, 3), "mirror")


def test_compose_is_the_matrix_product():
    a, b = torch.randn(5, 3, 3, dtype=torch.float64), torch.randn(5, 3, 3, dtype=torch.float64)
    assert torch.allclose(augment.compose(a, b), a @ b, rtol=0, atol=1e-12)


def test_unknown_op_is_refused():
    with pytest.raises(AuglabError, match=r"augment op\(s\) \['blur'\]: unknown; known: rotation, translation"):
        augment.apply_view(digits(2), {"blur": {}}, augment.generator_for(0, 0))


# --- recipes -----------------------------------------------------------------------------------


def source_split(per_class=(10,) * 10, seed=0) -> shards.Split:
    labels = np.repeat(np.arange(10), per_class).astype(np.uint8)
    images = digits(len(labels), seed).squeeze(1).numpy()
    ids = np.arange(len(labels)) * 7 + 3
    metadata = {"dataset": "toy", "classes": "10", "height": "28", "width": "28"}
    return shards.Split(ids, labels, images, metadata)


def write(tmp_path, source, name="r", views=None, copies=3, balance=False, originals=False, seed=0, **kwargs):
    views = views or [{"rotation": {"strength": 20.0}}, {"hflip": {"strength": 1.0}}]
    info = augment.write_recipe(tmp_path, source, name, views, copies, balance, originals, seed, **kwargs)
    shards.write_manifest(tmp_path, {name: info})
    return info, shards.read_split(tmp_path, name)


def test_plan_counts_and_balance():
    labels = np.array([0, 0, 0, 1, 2, 2], dtype=np.uint8)
    rows, views = augment.plan(labels, views=2, copies=2, balance=True)
    assert np.bincount(labels[rows]).tolist() == [12, 12, 12]  # 3 per class x 2 views x 2 copies
    assert np.bincount(views).tolist() == [18, 18]
    rows, _ = augment.plan(labels, views=1, copies=1, balance=False)
    assert rows.tolist() == [0, 1, 2, 3, 4, 5]


def test_recipe_rows_labels_sources_and_origins(tmp_path):
    source = source_split(per_class=(3, 5, 2, 4, 4, 4, 4, 4, 4, 4))
    info, out = write(tmp_path, source, copies=2, originals=True)
    assert info.rows == len(source) * (1 + 2 * 2)
    assert out.extra["origin"][: len(source)].tolist() == ["real"] * len(source)
    np.testing.assert_array_equal(out.images[: len(source)], source.images)
    assert set(out.extra["origin"][len(source):]) == {"augment"}
    by_id = dict(zip(source.ids.tolist(), source.labels.tolist()))
    assert [by_id[s] for s in out.extra["source_id"].tolist()] == out.labels.tolist()  # labels kept
    np.testing.assert_array_equal(out.ids, np.arange(info.rows))
    flipped = out.images[len(source) :][1 * len(source) : 2 * len(source)]  # copy 0, view 1
    np.testing.assert_array_equal(flipped, source.images[:, :, ::-1])


def test_recipe_balance_tops_up_small_classes(tmp_path):
    source = source_split(per_class=(3, 5, 2, 4, 4, 4, 4, 4, 4, 4))
    info, _ = write(tmp_path, source, copies=1, balance=True)
    assert info.class_counts == [10] * 10  # 5 per class x 2 views


def test_recipe_is_byte_identical_per_seed_and_shards_are_independent(tmp_path):
    source = source_split()
    hashes = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        write(tmp_path / name, source, seed=seed, rows_per_shard=128)
        hashes[name] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / name).iterdir()}
    assert hashes["a"] == hashes["b"] and hashes["a"] != hashes["c"]
    assert len([n for n in hashes["a"] if n.endswith(".parquet")]) == 5  # 600 rows / 128


def test_default_s2_expand_gives_1000_per_class_from_the_100(tmp_path):
    recipe = params.load_key(ROOT / "params.yaml", "augment.recipes.s2_expand")
    source = source_split()  # 10 per class, like train_100
    views = [view.ops() for view in recipe.views.values()]
    info, out = write(tmp_path, source, "s2_expand", views, recipe.copies, recipe.balance, recipe.originals, recipe.seed)
    assert info.rows == 10_000 and info.class_counts == [1000] * 10
    assert set(out.extra["source_id"].tolist()) == set(source.ids.tolist())
    assert np.bincount(out.extra["source_id"], minlength=source.ids.max() + 1)[source.ids].tolist() == [100] * 100


def test_default_s1_copies_views(tmp_path):
    recipe = params.load_key(ROOT / "params.yaml", "augment.recipes.s1_copies")
    assert list(recipe.views) == ["rotated", "shifted", "flipped"] and recipe.copies == 1
    source = source_split()
    info, out = write(tmp_path, source, "s1_copies", [v.ops() for v in recipe.views.values()], 1, False, False, 0)
    assert info.rows == 3 * len(source)
    np.testing.assert_array_equal(out.images[2 * len(source) :], source.images[:, :, ::-1])


def test_samples_collect_views_of_chosen_rows(tmp_path):
    source = source_split()
    samples = augment.Samples(rows=[0, 15], per_row=4)
    write(tmp_path, source, copies=3, samples=samples)
    assert [len(samples.views[r]) for r in (0, 15)] == [4, 4]
    plots.sample_grid(tmp_path / "grid.png", source.images, source.labels, samples.rows, samples.views, samples.per_row,
                      "toy", [str(i) for i in range(10)])
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unlabelled_source_is_refused(tmp_path):
    source = source_split()
    unlabelled = shards.Split(source.ids, None, source.images, source.metadata)
    with pytest.raises(AuglabError, match="augment r: source split is unlabelled"):
        write(tmp_path, unlabelled)
