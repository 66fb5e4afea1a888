"""The data stages write the same bytes whichever SIMD kernels torch, numpy and the BLAS pick.

A host with AVX-512, one with AVX2 only, and a plain one are imitated on this machine by the
libraries' own switches (ATEN_CPU_CAPABILITY, NPY_DISABLE_CPU_FEATURES, MKL_ENABLE_INSTRUCTIONS,
ONEDNN_MAX_CPU_ISA); the stage scripts run under each (in one process per host, see
tests/run_stages.py) and their outputs are compared byte for byte. See auglab/augment.py and
auglab/gan.py for why the bytes cannot move.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, YAML_SAFE, synthetic_arrays, write_idx_folder
from dvc.repo import Repo

from auglab import augment, gan, params

# numpy 2.x dispatches to these groups above its X86_V2 baseline
NUMPY_AVX512 = "X86_V4 AVX512_ICL AVX512_SPR"
HOSTS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "NPY_DISABLE_CPU_FEATURES": NUMPY_AVX512,
             "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "plain": {"ATEN_CPU_CAPABILITY": "default", "NPY_DISABLE_CPU_FEATURES": f"X86_V3 {NUMPY_AVX512}",
              "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
DATA_STAGES = ("download", "split", "preprocess", "augment")


def bilinear_reference(images: np.ndarray, positions: np.ndarray, fill: str) -> np.ndarray:
    """What `augment.sample_at` must give, in integers: positions (N, H, W, 2) in 1/256-pixel
    steps, rounded half to even; the blend of four pixels rounded half to even."""
    n, h, w = images.shape
    one = 256
    s = np.rint(positions).astype(np.int64)  # rint: half to even, like torch.round
    s = np.clip(s, -2 * one, (max(h, w) + 1) * one)
    x0, y0, fx, fy = s[..., 0] >> 8, s[..., 1] >> 8, s[..., 0] & 255, s[..., 1] & 255
    index = np.arange(n)[:, None, None]

    def pixel(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        if fill == "nearest":
            return images[index, np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)].astype(np.int64)
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        return np.where(inside, images[index, np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)], 0).astype(np.int64)

    total = (pixel(y0, x0) * (one - fx) * (one - fy) + pixel(y0, x0 + 1) * fx * (one - fy)
             + pixel(y0 + 1, x0) * (one - fx) * fy + pixel(y0 + 1, x0 + 1) * fx * fy)  # value * 2**16
    whole, rest = total >> 16, total & 0xFFFF
    up = (rest > 0x8000) | ((rest == 0x8000) & (whole % 2 == 1))
    return np.clip(whole + up, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("fill", augment.FILLS)
@pytest.mark.parametrize("shape", [(28, 28), (20, 28)])
def test_resampling_is_exact_integer_bilinear(fill, shape):
    """Random pixels at random positions (in and far outside the image, on and between steps,
    ties included): grid_sample on the canvas gives exactly the integer blend."""
    rng = np.random.default_rng(0)
    h, w = shape
    images = rng.integers(0, 256, (300, h, w), dtype=np.uint8)
    positions = rng.integers(-4 * 256 * 16, (w + 4) * 256 * 16, (300, h, w, 2)) / 16  # 1/16 of a step
    positions[:100] = np.round(positions[:100] * 2) / 2  # many ties of the final rounding
    got = augment.sample_at(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(positions).float(), fill)
    assert np.array_equal(got.squeeze(1).numpy(), bilinear_reference(images, positions, fill))


def test_steps_are_exact_in_float32():
    offsets = torch.from_numpy(np.random.default_rng(1).uniform(-3000, 3000, 10_000))
    fine = augment.steps(offsets)
    assert fine.dtype == torch.float32 and fine.abs().max() <= 2047 * 256
    sixteenths = fine.double() * 16
    assert torch.equal(sixteenths, sixteenths.round())  # multiples of 1/16 step
    assert torch.equal((fine + fine.flip(0)).double(), fine.double() + fine.flip(0).double())  # sums exact


def host_env(host: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"ATEN_CPU_CAPABILITY", "NPY_DISABLE_CPU_FEATURES"}}
    return {**env, **HOSTS[host], "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def digest_tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def toy_project(tmp_path_factory):
    """The real dvc.yaml and stages over a synthetic dataset `toy`, every augmentation op in one
    recipe, and one untrained GAN sampler (generator.pt) for the gan_sample stage."""
    root = tmp_path_factory.mktemp("simd")
    (root / "dvc.yaml").write_bytes((ROOT / "dvc.yaml").read_bytes())
    (root / "stages").symlink_to(ROOT / "stages")
    (root / "auglab").symlink_to(ROOT / "auglab")
    write_idx_folder(root / "incoming", synthetic_arrays(per_class=30), gz=True)
    config = YAML_SAFE.load((ROOT / "params.yaml").read_text())
    config["download"]["datasets"] = {"toy": {"sources": {"incoming": {"folder": str(root / "incoming")}}}}
    config["split"]["datasets"] = {"toy": {"mode": "tail", "val_size": 40,  # slices for S2's code and prose
                                           "slices": {"s2_first_100": [0, 20], "s2_first_1000": [0, 100]}}}
    config["split"]["subsets"] = [10, 20]
    recipes = config["augment"]["recipes"]
    recipes["s2_expand"]["source"] = "train_10"
    recipes["every_op"] = {"source": "train", "views": {
        "affine": {"rotation": 30.0, "translation": 0.1, "shear": 20.0, "zoom": 0.3},
        "pixels": {"elastic": {"alpha": 3.0, "sigma": 2.0}, "hflip": 0.5, "erasing": {"p": 0.8, "area": [0.05, 0.3]},
                   "noise": 6.0}}, "copies": 2, "balance": False, "originals": True, "seed": 3}
    config["augment"]["builds"] = {f"toy_{r}": {"dataset": "toy", "recipe": r} for r in recipes}
    config["gan"]["builds"] = {"toy": {"dataset": "toy"}}
    config["gan"]["defaults"].update(samples_per_class=300, min_confidence=0.0995)
    with open(root / "params.yaml", "w") as f:
        YAML_SAFE.dump(config, f)
    torch.manual_seed(0)
    gan_config = params.load_gan(root / "params.yaml", "toy")
    generator, discriminator = gan.build(gan_config)
    gan.recalibrate(generator, torch.Generator().manual_seed(1), 64)
    with torch.no_grad():  # an auxiliary head centred on 0.1 for every class: most draws pass 0.0995, not all
        labels = torch.arange(10).repeat(100)
        features = discriminator.eval().features(gan.to_unit(gan.sample(generator.eval(), labels, torch.Generator())))
        discriminator.classify.bias.copy_(-discriminator.classify.weight @ features.mean(0))
    (root / "artifacts/gan/toy").mkdir(parents=True)
    gan.save_sampler(root / "artifacts/gan/toy/generator.pt", gan_config,
                     gan.Result(generator.eval(), discriminator.eval(), []), [str(c) for c in range(10)])
    with Repo.init(str(root), no_scm=True) as repo:
        commands = {s.name: s.cmd for s in repo.index.stages}
    return root, commands


def outputs_under(root: Path, commands: dict[str, str], host: str) -> dict[str, str]:
    """Run the data stages and gan_sample in a copy of `root` under `host`'s kernels; sha256 of
    every file they wrote."""
    copy = root.parent / f"{root.name}-{host}"
    shutil.copytree(root, copy, symlinks=True)
    env = host_env(host)
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert host == "native" or probe == {"avx2": "AVX2", "plain": "DEFAULT"}[host], probe
    ran = [name for name in commands if name.split("@")[0] in (*DATA_STAGES, "gan_sample")]
    assert {"augment@toy_every_op", "gan_sample@toy", "preprocess@toy"} <= set(ran)
    # the stages in dvc.yaml's order, in one process per host: the kernels are chosen at start-up
    (copy / "steps.json").write_text(json.dumps([{"cmd": commands[name]} for name in ran]))
    done = subprocess.run([sys.executable, str(ROOT / "tests/run_stages.py"), "steps.json"], cwd=copy, env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"under {host}: {done.stderr}"
    return {**digest_tree(copy / "data"), **digest_tree(copy / "artifacts/gan")}


@pytest.mark.slow
def test_data_stages_write_the_same_bytes_on_every_simd_path(toy_project):
    root, commands = toy_project
    with ThreadPoolExecutor(len(HOSTS)) as pool:  # one process per host, side by side: mostly start-up
        outputs = dict(zip(HOSTS, pool.map(lambda host: outputs_under(root, commands, host), HOSTS)))
    native = outputs["native"]
    assert any(name.startswith("augmented/toy/every_op/") for name in native)
    assert any(name.startswith("gan/toy/") for name in native) and "toy/grid.png" in native
    for host in ("avx2", "plain"):
        other = outputs[host]
        assert other.keys() == native.keys()
        moved = sorted(name for name in native if other[name] != native[name])
        assert not moved, f"bytes differ under {host}: {moved}"
