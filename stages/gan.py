"""Stage gan@<build>: train a conditional GAN on one split of a dataset, then write its labelled
samples as Parquet shards (split `gan`, origin=gan), the generator, a per-class sample grid and
the loss curves. A killed run resumes from its checkpoint."""

import time
from pathlib import Path

import numpy as np
import torch
from dvclive import Live
from matplotlib.figure import Figure

from auglab import cli, gan, params, shards, train
from auglab.files import atomic_dir, temp_path

GRID_COLUMNS = 12


def sample_grid(path: Path, samples: shards.Split, class_names: list[str], title: str) -> None:
    """PNG: one row per class, its first GRID_COLUMNS samples."""
    classes = len(class_names)
    figure = Figure(figsize=(GRID_COLUMNS * 0.6 + 1.2, classes * 0.62))
    axes = figure.subplots(classes, GRID_COLUMNS, squeeze=False)
    for c in range(classes):
        rows = np.flatnonzero(samples.labels == c)[:GRID_COLUMNS]
        for j in range(GRID_COLUMNS):
            axes[c, j].set_axis_off()
            if j < len(rows):
                axes[c, j].imshow(samples.images[rows[j]], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[c, 0].set_title(class_names[c], fontsize=6, loc="left")
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110, metadata={"Software": None})


def loss_curves(path: Path, history: list[dict], title: str) -> None:
    """PNG: discriminator and generator losses, and the mean D scores of real and fake images."""
    steps = [row["step"] for row in history]
    figure = Figure(figsize=(8, 3))
    left, right = figure.subplots(1, 2)
    for key, label in (("d_loss", "discriminator"), ("g_loss", "generator")):
        left.plot(steps, [row[key] for row in history], label=label)
    for key, label in (("d_real", "D(real)"), ("d_fake", "D(fake)")):
        right.plot(steps, [row[key] for row in history], label=label)
    for axis, name in ((left, "loss"), (right, "mean discriminator score")):
        axis.set_xlabel("step")
        axis.set_ylabel(name)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100, metadata={"Software": None})


def main(args) -> None:
    config = params.load_gan(args.params, args.build)
    device = train.choose_device(config.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    source = shards.read_split(args.splits, config.source)
    class_names = shards.read_manifest(args.splits)["class_names"]
    data = train.DeviceData.from_numpy(source.images, source.labels, device)
    cli.log(f"gan {args.build}: {config.steps:,} steps on {len(data):,} images ({config.dataset}/{config.source}), "
            f"device {device}, autocast {train.autocast_dtype(device, config.precision)}")
    started = time.perf_counter()
    result = gan.train(config, data, args.checkpoint, log=cli.log)
    seconds = time.perf_counter() - started  # this run's training (after a resume: the rest only)
    args.model.mkdir(parents=True, exist_ok=True)
    with atomic_dir(args.out) as staging, atomic_dir(args.model / "live") as live_dir:
        info, acceptance = gan.write_samples(staging, result.generator, config.samples_per_class, config.dataset,
                                             config.seed, result.discriminator, config.min_confidence)
        shards.write_manifest(staging, {"gan": info}, dataset=config.dataset, build=args.build,
                              source=config.source, class_names=class_names, min_confidence=config.min_confidence,
                              acceptance=round(acceptance, 4))
        samples = shards.read_split(staging, "gan")
        with Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None) as live:
            for row in result.history:
                live.step = row["step"]
                for key in ("d_loss", "g_loss", "d_real", "d_fake"):
                    live.log_metric(key, row[key], plot=True)
            live.summary.update({"steps": config.steps, "seconds": round(seconds, 1), "acceptance": round(acceptance, 4), "img_per_s": round(
                float(np.mean([row["img_per_s"] for row in result.history])), 1)})
        figures = {args.model / "grid.png": temp_path(args.model / "grid.png"),
                   args.model / "losses.png": temp_path(args.model / "losses.png"),
                   args.model / "generator.pt": temp_path(args.model / "generator.pt")}
        title = f"{config.dataset} / gan {args.build}"
        sample_grid(figures[args.model / "grid.png"], samples, class_names, f"{title}: samples per class (EMA generator)")
        loss_curves(figures[args.model / "losses.png"], result.history, title)
        state = {k: v.detach().cpu().contiguous() for k, v in result.generator.state_dict().items()}
        train.save_atomic({"config": config.model_dump(mode="json"), "state_dict": state,
                           "class_names": class_names}, figures[args.model / "generator.pt"])
    for final, temp in figures.items():
        temp.replace(final)
    args.checkpoint.unlink(missing_ok=True)
    cli.log(f"gan {args.build}: {info.rows:,} samples, per class {info.class_counts}; "
            f"{acceptance:.1%} of draws passed min_confidence {config.min_confidence}")


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--build", required=True, help="a key of gan.builds")
    parser.add_argument("--splits", type=Path, required=True, help="the dataset's split directory")
    parser.add_argument("--checkpoint", type=Path, required=True, help="resumable checkpoint (scratch)")
    parser.add_argument("--out", type=Path, required=True, help="shard directory to write (split gan)")
    parser.add_argument("--model", type=Path, required=True, help="directory for generator.pt, grid, curves, live/")
    cli.run(main, parser)
