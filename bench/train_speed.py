"""Bench: training throughput of every zoo model, our loop vs a plain PyTorch loop.

Same images (real MNIST), same model, same optimizer (Adam), same batch size, same process:
  - ours: auglab.train.train: data resident on the device as uint8, batches by indexing a
    seeded permutation, normalization on the batch, channels_last + bf16 autocast (auto);
  - plain: what pytorch/examples/mnist does: a Dataset returning PIL images through
    ToTensor + Normalize, a DataLoader (shuffle, batch 64), fp32, NCHW, each batch copied to
    the device.
Prints img/s, the ratio, forward FLOPs per image and the achieved training GFLOP/s (3x forward).
Then, if `dvc repro` has run, the training cost of every default experiment from its metrics.
`--device` is the stages' setting (`auto`: CUDA when present); on CUDA both loops run on the GPU.

    python bench/train_speed.py [--models cnn,lenet5] [--seconds 6] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from auglab import AuglabError, models, params, runtime, shards, train

PLAIN_BATCH = 64  # pytorch/examples/mnist's default


class PilMnist(Dataset):
    """torchvision.datasets.MNIST's __getitem__: a PIL image through the transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> None:
        self.images, self.labels = images, labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index], mode="L")), int(self.labels[index])


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work: a clock read after it counts the work done (CUDA runs
    asynchronously; the CPU has nothing queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_rate(name: str, images: np.ndarray, labels: np.ndarray, stats: dict, seconds: float,
               device: torch.device) -> float:
    """img/s of the pytorch/examples-style loop, timed after one warm-up batch."""
    torch.manual_seed(0)
    model = models.build(name, {}).to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    size = model.image_size
    loader = DataLoader(PilMnist(images, labels, stats["mean"], stats["std"]), batch_size=PLAIN_BATCH, shuffle=True,
                        pin_memory=device.type == "cuda")
    seen, started = 0, None
    model.train()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if size != x.shape[-1]:
            x = F.pad(x, [(size - x.shape[-1]) // 2] * 4, value=-stats["mean"] / stats["std"])
        loss, _ = train.objective(model, x, y, 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if started is None:
            synchronize(device)
            started = time.perf_counter()  # after the first (warm-up) batch
            continue
        seen += len(y)
        if time.perf_counter() - started > seconds:
            break
    synchronize(device)
    return seen / (time.perf_counter() - started)


def our_rate(name: str, images: np.ndarray, labels: np.ndarray, stats: dict, seconds: float,
             guess: float, device: torch.device, precision: str = "auto", channels_last: bool = True) -> float:
    """img/s of auglab's loop: one epoch sized to last about `seconds`, after a warm-up epoch
    (its clock stops after the epoch's sums are read from the device)."""
    defaults = params.load_key(Path("params.yaml"), "train.defaults")
    count = int(min(len(labels), max(1024, guess * seconds)))
    data = runtime.DeviceData.from_numpy(images[:count], labels[:count], device)
    val = runtime.DeviceData.from_numpy(images[:256], labels[:256], device)
    entry = {"dataset": "mnist", "shards": "-", "train": ["-"], "model": name, "epochs": 2,
             "precision": precision, "channels_last": channels_last}
    experiment = params.experiment(defaults, entry, "bench")
    with tempfile.TemporaryDirectory() as tmp:
        result = train.train(experiment, data, val, stats, Path(tmp) / "c.pt", log=lambda m: None)
    return result.history[-1]["img_per_s"]  # the second epoch: no first-call warm-up inside


def experiment_costs(root: Path) -> None:
    rows = []
    for metrics in sorted(root.glob("*/live/metrics.json")):
        m = json.loads(metrics.read_text())
        if "train_seconds" not in m:
            continue
        rows.append((metrics.parts[-3], m["train_seconds"], m["epochs_run"], m["val"]["acc"], m["img_per_s"]))
    if not rows:
        return
    print(f"\nDefault experiments ({root}/*/live/metrics.json), training seconds (epochs only, validation excluded):")
    for name, seconds, epochs, acc, rate in rows:
        print(f"  {name:24s} {seconds:7.1f} s  {epochs:3d} epochs  val acc {acc:.4f}  {rate:9,.0f} img/s")
    print(f"  {'total':24s} {sum(r[1] for r in rows):7.1f} s = {sum(r[1] for r in rows) / 60:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(m for m in models.MODELS))
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where both loops train: auto = CUDA when present, as the stages' `device`")
    args = parser.parse_args()
    try:
        device = runtime.choose_device(args.device)
    except AuglabError as e:
        sys.exit(f"error: {e}")
    split = Path("data/split/mnist")
    if not (split / "manifest.json").exists():
        sys.exit("error: no data/split/mnist; run `dvc repro split@mnist preprocess@mnist` first")
    train_split = shards.read_split(split, "train")
    images, labels = train_split.images, train_split.labels
    stats = json.loads(Path("data/preprocessed/mnist.json").read_text())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{where}. plain: pytorch/examples-style DataLoader, batch {PLAIN_BATCH}, fp32; "
          f"resident: our loop, batch 128, fp32 NCHW; ours: our loop + channels_last + autocast "
          f"{runtime.autocast_dtype(device, 'auto')} (flush-to-zero on, as in stages/train.py)")
    print(f"  {'model':12s} {'plain':>8s} {'resident':>9s} {'ours':>8s} {'ours/plain':>10s} {'MFLOP/img':>10s} {'GFLOP/s':>8s}")
    rates: dict[str, float] = {}  # ours, img/s: sizes the trick runs' epochs
    for name in args.models.split(","):
        torch.set_flush_denormal(False)  # what a plain script runs with
        plain = plain_rate(name, images, labels, stats, args.seconds, device)
        runtime.set_cpu_flags(device)  # as every stage
        resident = our_rate(name, images, labels, stats, args.seconds, plain * 2, device, "fp32", False)
        ours = our_rate(name, images, labels, stats, args.seconds, plain * 4, device)
        rates[name] = ours
        flops = models.flops_per_image(models.build(name, {}))
        print(f"  {name:12s} {plain:8,.0f} {resident:9,.0f} {ours:8,.0f} {ours / plain:9.1f}x {flops / 1e6:10.1f} "
              f"{3 * flops * ours / 1e9:8.1f}", flush=True)
    if "kaggle_cnn" in args.models.split(","):
        # Without AVX-512 bf16 (an AVX2-only CPU), bf16 autocast is emulated, 6-10x slower than fp32:
        # `auto` picks fp32 there, and timing forced bf16 would take minutes for nothing.
        native = runtime.autocast_dtype(device, "auto") is torch.bfloat16
        tricks = [("fp32", False), ("fp32", True)] + ([("bf16", False), ("bf16", True)] if native else [])
        print("  kaggle_cnn, one trick at a time (img/s):", end="")
        for precision, layout in tricks:
            rate = our_rate("kaggle_cnn", images, labels, stats, args.seconds, rates.get("kaggle_cnn", 2000), device,
                            precision, layout)
            print(f"  {precision}{'+channels_last' if layout else ''} {rate:,.0f}", end="", flush=True)
        print("" if native else f"  (bf16 skipped: this {'GPU' if device.type == 'cuda' else 'CPU'} has no native bf16)")
    experiment_costs(Path("artifacts/models"))


if __name__ == "__main__":
    main()
