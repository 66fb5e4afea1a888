"""Stage gan_sample@<build>: draw a trained GAN's labelled samples as Parquet shards (split `gan`,
origin=gan, source_id=-1), a per-class sample grid and the acceptance rate. The bytes depend
only on generator.pt and the sampling params: sampling runs in float64 (see auglab/gan.py)."""

from pathlib import Path

from auglab import cli, gan, params, plots, runtime, shards
from auglab.files import atomic_dir, temp_path, write_json_atomic


def main(args) -> None:
    config = params.load_gan(args.params, args.build)
    device = runtime.choose_device(config.device)  # no CPU flags: float64 sampling as it always ran
    generator, judge, trained, class_names = gan.load_sampler(args.generator, device)
    with atomic_dir(args.out) as staging:
        info, acceptance = gan.write_samples(staging, generator, config.samples_per_class, trained.dataset,
                                             config.seed, judge, config.min_confidence, config.z_scale)
        shards.write_manifest(staging, {"gan": info}, dataset=trained.dataset, build=args.build,
                              source=trained.source, class_names=class_names, min_confidence=config.min_confidence,
                              acceptance=round(acceptance, 4), z_scale=config.z_scale)
        samples = shards.read_split(staging, "gan")
        grid = temp_path(args.grid)
        plots.class_grid(grid, samples.images, samples.labels, class_names, f"{trained.dataset} / gan {args.build}: "
                         f"samples per class (EMA generator, z scale {config.z_scale:g})")
    grid.replace(args.grid)
    write_json_atomic(args.metrics, {"samples": info.rows, "acceptance": round(acceptance, 4),
                                     "min_confidence": config.min_confidence, "z_scale": config.z_scale})
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
