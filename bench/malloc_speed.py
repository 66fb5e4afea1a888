"""Bench: what glibc malloc's defaults cost a CPU stage, against settings that keep freed memory.

With glibc's defaults a buffer of more than 128 KiB (up to 32 MiB, as the threshold adapts) is
mapped fresh and unmapped when freed, and free memory at the top of the heap is handed back to
the OS: each scoring batch's activations (12.8 MB for S1's cnn at 256 images) are then faulted in
page by page and zeroed again. `tuned` is what the stages run with (runtime.setup on CPU calls
runtime.keep_freed_memory: mmap threshold 32 MiB, trim threshold 1 GiB, top pad 64 MiB, so freed
buffers are reused); `default` sets the stages' other CPU flag (flush-to-zero) alone.

Each run is a child process that trains a train.experiments entry as its stage does (resident
data, val scored after every epoch) for --epochs epochs on the first --images of its training
split; `default` and `tuned` alternate (default first in even rounds, tuned first in odd ones)
to spread the host's drift over both. Prints the median training seconds and the median seconds
outside training (val scoring and checkpoints) of each, and tuned/default. Needs the data stages'
outputs (`dvc repro preprocess`).

    python bench/malloc_speed.py [--experiments s1_cnn_maxpool,s4_kaggle_cnn] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WAYS = ("default", "tuned")


def run_one(name: str, epochs: int, images: int, way: str) -> dict:
    """Train experiment `name` as its stage does, on CPU; seconds training and outside it."""
    import torch

    from auglab import params, runtime, shards, train

    if way == "tuned":
        device = runtime.setup("cpu")
    else:
        device = torch.device("cpu")
        torch.set_flush_denormal(True)
    experiment = params.load_experiment(Path("params.yaml"), "experiments", name)
    experiment = experiment.model_copy(update={"epochs": epochs, "early_stopping": 0})
    splits = Path("data/split") / experiment.dataset
    train_split, val = shards.read_split(splits, "train"), shards.read_split(splits, experiment.val)
    stats = json.loads((Path("data/preprocessed") / f"{experiment.dataset}.json").read_text())
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        result = train.train(
            experiment, runtime.DeviceData.from_numpy(train_split.images[:images], train_split.labels[:images], device),
            runtime.DeviceData.from_numpy(val.images, val.labels, device), stats, Path(scratch) / "checkpoint.pt",
            log=lambda message: None)
        total = time.perf_counter() - started
    training = sum(row["seconds"] for row in result.history)
    return {"training": training, "other": total - training, "val_images": len(val.labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", default="s1_cnn_maxpool,s2_lenet_1000,s4_kaggle_cnn",
                        help="comma-separated keys of train.experiments")
    parser.add_argument("--rounds", type=int, default=4, help="runs of each way per experiment")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=12_000, help="training images per epoch")
    parser.add_argument("--worker", nargs=2, metavar=("EXPERIMENT", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_one(args.worker[0], args.epochs, args.images, args.worker[1])))
        return
    if not Path("data/preprocessed").is_dir():
        sys.exit("error: no data/preprocessed; run `dvc repro preprocess` first")
    print(f"{args.epochs} epochs of {args.images:,} images, val after each; {args.rounds} runs a way, alternating")
    print(f"{'experiment':16s} {'way':8s} {'training s':>11s} {'other s':>8s}")
    for name in args.experiments.split(","):
        seconds: dict[str, list[dict]] = {way: [] for way in WAYS}
        for round_ in range(args.rounds):
            for way in WAYS if round_ % 2 == 0 else WAYS[::-1]:
                done = subprocess.run([sys.executable, __file__, "--epochs", str(args.epochs), "--images",
                                       str(args.images), "--worker", name, way], capture_output=True, text=True,
                                      check=False)
                if done.returncode:
                    sys.exit(f"error: {name} {way} run failed:\n{done.stderr[-2000:]}")
                seconds[way].append(json.loads(done.stdout.splitlines()[-1]))
        median = {way: {part: statistics.median(run[part] for run in runs) for part in ("training", "other")}
                  for way, runs in seconds.items()}
        for way in WAYS:
            print(f"{name:16s} {way:8s} {median[way]['training']:11.2f} {median[way]['other']:8.2f}")
        print(f"{name:16s} {'tuned/default':8s} {median['tuned']['training'] / median['default']['training']:10.2f}x "
              f"{median['tuned']['other'] / median['default']['other']:7.2f}x  "
              f"(val: {seconds['tuned'][0]['val_images']:,} images an epoch)", flush=True)


if __name__ == "__main__":
    main()
