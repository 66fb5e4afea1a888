"""Bench: how far a trained result moves between hosts, since PyTorch promises no bitwise
equality of training across CPUs.

Trains each named experiment twice on this machine, in child processes: as an AVX-512 bf16 host
runs it (the native kernels; `precision: auto` = bf16 autocast) and as an AVX2-only host does
(ATEN_CPU_CAPABILITY=avx2, MKL and oneDNN held to AVX2, `auto` = fp32; an experiment that sets
its own precision keeps it). Prints each one's test accuracy, the difference, and whether the
weights are bit-identical. Needs the data stages' outputs (`dvc repro augment preprocess`).

    python bench/host_spread.py s2_lenet_100 s2_lenet_1000 s4_kaggle_cnn
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from as_avx2_host import AVX2_ENV  # bench/ is this script's first sys.path entry

from auglab import evaluate, params, runtime, shards, train

HOSTS = {"AVX-512 bf16": {}, "AVX2 fp32": AVX2_ENV}


def run_one(name: str, as_avx2: bool) -> dict:
    """Train experiment `name` as the stage would, score it on the test split."""
    experiment = params.load_experiment(Path("params.yaml"), "experiments", name)
    if as_avx2 and experiment.precision == "auto":
        experiment = experiment.model_copy(update={"precision": "fp32"})  # what auto picks without bf16
    device = runtime.setup("cpu")  # the stage's CPU flags
    splits = Path("data/split") / experiment.dataset
    parts = [shards.read_split(Path("data") / experiment.shards, split) for split in experiment.train]
    if experiment.real is not None:
        parts.insert(0, shards.read_split(splits, experiment.real))
    images = np.concatenate([p.images for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    val, test = shards.read_split(splits, experiment.val), shards.read_split(splits, "test")
    stats = json.loads((Path("data/preprocessed") / f"{experiment.dataset}.json").read_text())
    with tempfile.TemporaryDirectory() as scratch:
        result = train.train(experiment, runtime.DeviceData.from_numpy(images, labels, device),
                             runtime.DeviceData.from_numpy(val.images, val.labels, device), stats,
                             Path(scratch) / "checkpoint.pt", log=lambda message: None)
    found = evaluate.predict(result.model, test.images, test.labels, stats["mean"], stats["std"], experiment.precision)
    weights = hashlib.sha256(b"".join(v.detach().float().numpy().tobytes() for v in result.model.state_dict().values()))
    return {"accuracy": float((found.predicted == test.labels).mean()), "precision": experiment.precision,
            "weights": weights.hexdigest()[:16], "test_images": len(test.labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="+", help="keys of train.experiments")
    parser.add_argument("--worker", choices=("native", "avx2"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps({name: run_one(name, args.worker == "avx2") for name in args.experiments}))
        return
    results = {}
    for host, extra in HOSTS.items():
        worker = "avx2" if extra else "native"
        done = subprocess.run([sys.executable, __file__, *args.experiments, "--worker", worker], check=False,
                              env={**os.environ, **extra}, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"error: {host} run failed:\n{done.stderr}")
        results[host] = json.loads(done.stdout)
    first, second = HOSTS
    print(f"| experiment | {first} | {second} | difference | 95% interval of one run | same weights |")
    print("|---|---|---|---|---|---|")
    for name in args.experiments:
        a, b = results[first][name], results[second][name]
        n = a["test_images"]
        half_width = 1.96 * (a["accuracy"] * (1 - a["accuracy"]) / n) ** 0.5
        print(f"| `{name}` | {a['accuracy']:.4f} ({a['precision']}) | {b['accuracy']:.4f} ({b['precision']}) | "
              f"{b['accuracy'] - a['accuracy']:+.4f} | +-{half_width:.4f} | {'yes' if a['weights'] == b['weights'] else 'no'} |")


if __name__ == "__main__":
    main()
