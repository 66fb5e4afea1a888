"""Stage gan_score@<build>: how good are a GAN build's samples? FID against the real test set
(in the feature space of one of our classifiers) and CAS: a fixed classifier trained on GAN
samples only (class-balanced), tested on the real test set, beside the same classifier trained
on the real train split, which holds as many images."""

import json
from pathlib import Path

import numpy as np

from auglab import checkpoint, cli, params, quality, runtime, shards, train
from auglab.files import sha256_file, write_json_atomic


def classify(experiment, images: np.ndarray, labels: np.ndarray, val: runtime.DeviceData, test: runtime.DeviceData,
             stats: dict, checkpoint: Path, name: str) -> float:
    """Train the CAS classifier on (images, labels); its accuracy on the real test set."""
    device = val.images.device
    data = runtime.DeviceData.from_numpy(images, labels, device)
    cli.log(f"CAS classifier ({experiment.model}) on {len(data):,} {name} images")
    result = train.train(experiment, data, val, stats, checkpoint, log=cli.log)
    inputs = train.Inputs(stats["mean"], stats["std"], result.model.image_size, experiment.channels_last)
    _, accuracy = train.evaluate(result.model, test, inputs, runtime.autocast_dtype(device, experiment.precision))
    checkpoint.unlink(missing_ok=True)
    return accuracy


def main(args) -> None:
    build = params.load_key(args.params, f"gan.score.builds.{args.build}")
    fid_samples = params.load_key(args.params, "gan.score.fid_samples")
    entry = {"dataset": build.dataset, "shards": f"gan/{args.build}", "train": ["gan"],
             **params.load_key(args.params, "gan.score.classifier")}
    experiment = params.experiment(params.load_key(args.params, "train.defaults"), entry, "gan.score.classifier")
    device = runtime.setup(experiment.device)
    stats = json.loads(args.stats.read_text())
    real = shards.read_split(args.splits, build.real)
    val, test = (shards.read_split(args.splits, name) for name in ("val", "test"))
    samples = shards.read_split(args.samples, "gan")
    val_data = runtime.DeviceData.from_numpy(val.images, val.labels, device)
    test_data = runtime.DeviceData.from_numpy(test.images, test.labels, device)

    classes = int(real.metadata["classes"])
    rows = quality.matching_rows(samples.labels, np.full(classes, len(real) // classes))  # as many, balanced
    cas = classify(experiment, samples.images[rows], samples.labels[rows], val_data, test_data, stats,
                   args.checkpoint, "GAN")
    real_accuracy = classify(experiment, real.images, real.labels, val_data, test_data, stats, args.checkpoint, "real")

    extractor, saved = checkpoint.load_model(args.extractor, device)

    def embed(images: np.ndarray) -> np.ndarray:
        return quality.penultimate(extractor, images, saved["mean"], saved["std"], saved["image_size"])

    n = min(fid_samples, len(samples), len(test))
    test_features = embed(test.images[:n])
    fid = quality.frechet_distance(embed(samples.images[:n]), test_features)
    fid_real = quality.frechet_distance(embed(real.images[:n]), test_features)
    score = {
        "fid": round(fid, 3),
        "fid_real_train": round(fid_real, 3),  # the same distance for real train images: the floor
        "fid_images": n,
        "cas": round(cas, 4),
        "real_accuracy": round(real_accuracy, 4),
        "cas_gap": round(real_accuracy - cas, 4),
        "cas_train_images": len(rows),
        "classifier": experiment.model,
        "extractor": build.extractor,
        "extractor_sha256": sha256_file(args.extractor),
    }
    write_json_atomic(args.out, score)
    cli.log(f"gan {args.build}: FID {fid:.2f} (real train {fid_real:.2f}); CAS {cas:.4f} vs {real_accuracy:.4f} "
            f"on {len(rows):,} real images")


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--build", required=True, help="a key of gan.score.builds")
    parser.add_argument("--splits", type=Path, required=True, help="the dataset's split directory")
    parser.add_argument("--samples", type=Path, required=True, help="the gan build's shard directory")
    parser.add_argument("--stats", type=Path, required=True, help="normalization statistics JSON")
    parser.add_argument("--extractor", type=Path, required=True, help="model.pt of the FID feature extractor")
    parser.add_argument("--checkpoint", type=Path, required=True, help="resumable checkpoint (scratch)")
    parser.add_argument("--out", type=Path, required=True, help="score JSON to write")
    cli.run(main, parser)
