"""Stage gan_sample@<build>: draw a trained GAN's labelled samples as Parquet shards (split `gan`,
origin=gan, source_id=-1), a per-class sample grid and the acceptance rate. The bytes depend
only on generator.pt and the sampling params: sampling runs in float64 (see auglab/gan.py)."""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from auglab import cli, gan, params, shards, train
from auglab.files import atomic_dir, save_figure, temp_path, write_json_atomic

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
    save_figure(figure, path, dpi=110)


def main(args) -> None:
    config = params.load_gan(args.params, args.build)
    device = train.choose_device(config.device)
    generator, judge, trained, class_names = gan.load_sampler(args.generator, device)
    with atomic_dir(args.out) as staging:
        info, acceptance = gan.write_samples(staging, generator, config.samples_per_class, trained.dataset,
                                             config.seed, judge, config.min_confidence)
        shards.write_manifest(staging, {"gan": info}, dataset=trained.dataset, build=args.build,
                              source=trained.source, class_names=class_names, min_confidence=config.min_confidence,
                              acceptance=round(acceptance, 4))
        samples = shards.read_split(staging, "gan")
        grid = temp_path(args.grid)
        sample_grid(grid, samples, class_names, f"{trained.dataset} / gan {args.build}: samples per class (EMA generator)")
    grid.replace(args.grid)
    write_json_atomic(args.metrics, {"samples": info.rows, "acceptance": round(acceptance, 4),
                                     "min_confidence": config.min_confidence})
    cli.log(f"gan {args.build}: {info.rows:,} samples, per class {info.class_counts}; "
            f"{acceptance:.1%} of draws passed min_confidence {config.min_confidence}")


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--build", required=True, help="a key of gan.builds")
    parser.add_argument("--generator", type=Path, required=True, help="the gan stage's generator.pt")
    parser.add_argument("--out", type=Path, required=True, help="shard directory to write (split gan)")
    parser.add_argument("--grid", type=Path, required=True, help="sample grid PNG to write")
    parser.add_argument("--metrics", type=Path, required=True, help="acceptance JSON to write")
    cli.run(main, parser)
