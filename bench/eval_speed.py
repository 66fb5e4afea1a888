"""Bench: scoring throughput (forward passes without gradients, as per-epoch validation, evaluate,
ensembles and FID features run them) of the zoo's models, the way auglab scores against the way it
scored before 2026-11-30.

Same images (real MNIST test), same weights, same bf16 autocast (auto), same process:
  - now: runtime.eval_batch (256 images per pass on CPU) in NHWC layout (runtime.for_scoring);
  - before: 1,024 images per pass in NCHW layout.
Prints img/s of each and the ratio; predictions must agree (a check, not a timing).

    python bench/eval_speed.py [--models cnn,lenet5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from auglab import models, preprocess, runtime, shards

BEFORE_BATCH = 1024
DEFAULT_MODELS = "mlp,cnn,lenet5,kaggle_cnn,fan_out_cnn,resnet"


@torch.no_grad()
def score(model: torch.nn.Module, images: np.ndarray, batch: int, nhwc: bool, dtype) -> np.ndarray:
    """Predicted classes of uint8 images, `batch` at a time, in the layout asked for."""
    found = []
    for start in range(0, len(images), batch):
        x = preprocess.to_input(torch.from_numpy(images[start : start + batch]).unsqueeze(1), 0.13, 0.31,
                                model.image_size)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            found.append(model(runtime.as_scoring_input(x) if nhwc else x).argmax(1))
    return torch.cat(found).numpy()


def rate(model: torch.nn.Module, images: np.ndarray, batch: int, nhwc: bool, dtype, seconds: float) -> float:
    """Best img/s over repeated passes of `images` lasting about `seconds` (after one warm-up pass)."""
    score(model, images, batch, nhwc, dtype)
    best, spent = 0.0, 0.0
    while spent < seconds:
        start = time.perf_counter()
        score(model, images, batch, nhwc, dtype)
        took = time.perf_counter() - start
        best, spent = max(best, len(images) / took), spent + took
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated keys of auglab.models.MODELS")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per model and way")
    parser.add_argument("--images", type=int, default=4096, help="test images scored per pass")
    args = parser.parse_args()
    device = runtime.setup("cpu")
    dtype = runtime.autocast_dtype(device, "auto")
    images = shards.read_split(Path("data/split/mnist"), "test").images[: args.images]
    batch = runtime.eval_batch(device)
    print(f"{len(images):,} MNIST test images, {torch.get_num_threads()} threads, autocast {dtype}; "
          f"now: batch {batch}, NHWC; before: batch {BEFORE_BATCH}, NCHW")
    print(f"{'model':14s} {'now img/s':>10s} {'before img/s':>13s} {'ratio':>6s}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = models.build(name).eval()
        before = rate(model, images, BEFORE_BATCH, False, dtype, args.seconds)
        expected = score(model, images, BEFORE_BATCH, False, dtype)
        runtime.for_scoring(model)
        now = rate(model, images, batch, True, dtype, args.seconds)
        agree = float((score(model, images, batch, True, dtype) == expected).mean())
        print(f"{name:14s} {now:10,.0f} {before:13,.0f} {now / before:5.2f}x"
              + ("" if agree == 1 else f"  (predictions agree on {agree:.2%})"))


if __name__ == "__main__":
    main()
