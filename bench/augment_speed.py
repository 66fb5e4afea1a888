"""Bench: our batched augmentation vs what users usually write, on 10,000 real MNIST images.

Same images, same process, interleaved repeats, median of each; the op chain is S2's
(rotation 45, shear 34.4 degrees, zoom 0.4), so all three do one bilinear affine warp per image:
  - auglab: augment.apply_view on batches of augment.BATCH (one composed warp per batch);
  - torchvision.transforms.v2.RandomAffine applied per sample, as in a Dataset's __getitem__;
  - scipy.ndimage.affine_transform per sample, which is what Keras' ImageDataGenerator runs.
Then the peak RSS of writing the `s1_copies` recipe (144,000 images) in a child process.
Needs the split stage's output: `dvc repro split@mnist split@fashion_mnist`.

    python bench/augment_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torchvision.transforms import v2

from auglab import augment, shards

ROTATION, SHEAR, ZOOM = 45.0, 34.4, 0.4
VIEW = {"rotation": {"strength": ROTATION}, "shear": {"strength": SHEAR}, "zoom": {"strength": ZOOM}}


def ours(images: torch.Tensor) -> None:
    generator = augment.generator_for(0, 0)
    for start in range(0, len(images), augment.BATCH):
        augment.apply_view(images[start : start + augment.BATCH], VIEW, generator)


def torchvision_per_sample(images: torch.Tensor) -> None:
    transform = v2.RandomAffine(degrees=ROTATION, shear=(-SHEAR, SHEAR), scale=(1 - ZOOM, 1 + ZOOM),
                                interpolation=v2.InterpolationMode.BILINEAR)
    for image in images:
        transform(image)


def keras_per_sample(images: torch.Tensor) -> None:
    """Keras' apply_affine_transform: one scipy.ndimage.affine_transform per image (order=1)."""
    rng = np.random.default_rng(0)
    centre = np.array([13.5, 13.5])
    for image in images.numpy():
        theta = math.radians(rng.uniform(-ROTATION, ROTATION))
        shear = math.radians(rng.uniform(-SHEAR, SHEAR))
        zx, zy = rng.uniform(1 - ZOOM, 1 + ZOOM, 2)
        rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        matrix = rotation @ np.array([[1, -math.sin(shear)], [0, math.cos(shear)]]) @ np.diag([zx, zy])
        ndimage.affine_transform(image[0], matrix, offset=centre - matrix @ centre, order=1, mode="constant")


def peak_rss_of_s1_copies(splits: Path) -> tuple[float, int]:
    """Max resident set (MB) of the augment stage writing s1_copies, and the rows it wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "stages/augment.py", "--recipe", "s1_copies", "--splits", str(splits),
                   "--out", f"{tmp}/out", "--grid", f"{tmp}/grid.png"]
        subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
        rows = shards.read_manifest(Path(tmp) / "out")["splits"]["s1_copies"]["rows"]
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, rows  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=Path, default=Path("data/split"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (args.splits / "mnist" / "manifest.json").exists():
        sys.exit(f"error: no {args.splits}/mnist; run `dvc repro split@mnist` first")
    images = torch.from_numpy(shards.read_split(args.splits / "mnist", "train_10000").images).unsqueeze(1)
    runs = {"auglab batched (one warp per batch)": ours,
            "torchvision v2 RandomAffine per sample": torchvision_per_sample,
            "scipy.ndimage per sample (Keras)": keras_per_sample}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(images)
            times[name].append(time.perf_counter() - start)
    rate = {name: len(images) / statistics.median(samples) for name, samples in times.items()}
    print(f"{len(images)} MNIST images, rotation {ROTATION} + shear {SHEAR} + zoom {ZOOM}, "
          f"median of {args.repeats}, {torch.get_num_threads()} torch threads:")
    for name in runs:
        print(f"  {name:42s} {rate[name]:10,.0f} img/s")
    ours_rate = rate["auglab batched (one warp per batch)"]
    print(f"  ratio vs torchvision v2 per sample: {ours_rate / rate['torchvision v2 RandomAffine per sample']:.1f}x")
    print(f"  ratio vs scipy.ndimage per sample:  {ours_rate / rate['scipy.ndimage per sample (Keras)']:.1f}x")
    if (args.splits / "fashion_mnist" / "manifest.json").exists():
        peak, rows = peak_rss_of_s1_copies(args.splits / "fashion_mnist")
        print(f"peak RSS writing s1_copies ({rows:,} images): {peak:,.0f} MB (goal < 1,500 MB)")


if __name__ == "__main__":
    main()
