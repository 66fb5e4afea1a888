"""Stage gan@<build>: train a conditional GAN on one split of a dataset; write the sampler
(generator.pt), the loss curves and DVCLive's losses. A killed run resumes from its checkpoint.
Its samples are the gan_sample stage's."""

import time
from pathlib import Path

import numpy as np
from dvclive import Live

from auglab import cli, gan, params, plots, runtime, shards
from auglab.files import atomic_dir, temp_path


def main(args) -> None:
    config = params.load_gan(args.params, args.build)
    device = runtime.setup(config.device)
    source = shards.read_split(args.splits, config.source)
    class_names = shards.read_manifest(args.splits)["class_names"]
    data = runtime.DeviceData.from_numpy(source.images, source.labels, device)
    cli.log(f"gan {args.build}: {config.steps:,} steps on {len(data):,} images ({config.dataset}/{config.source}), "
            f"device {device}, autocast {runtime.autocast_dtype(device, config.precision)}")
    started = time.perf_counter()
    result = gan.train(config, data, args.checkpoint, log=cli.log)
    seconds = time.perf_counter() - started  # this run's training (after a resume: the rest only)
    args.model.mkdir(parents=True, exist_ok=True)
    with atomic_dir(args.model / "live") as live_dir:
        with Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None) as live:
            for row in result.history:
                live.step = row["step"]
                for key in ("d_loss", "g_loss", "d_real", "d_fake"):
                    live.log_metric(key, row[key], plot=True)
            live.summary.update({"steps": config.steps, "seconds": round(seconds, 1), "img_per_s": round(
                float(np.mean([row["img_per_s"] for row in result.history])), 1)})
        figures = {args.model / "losses.png": temp_path(args.model / "losses.png"),
                   args.model / "generator.pt": temp_path(args.model / "generator.pt")}
        plots.loss_curves(figures[args.model / "losses.png"], result.history, f"{config.dataset} / gan {args.build}")
        gan.save_sampler(figures[args.model / "generator.pt"], config, result, class_names)
    for final, temp in figures.items():
        temp.replace(final)
    args.checkpoint.unlink(missing_ok=True)
    cli.log(f"gan {args.build}: {config.steps:,} steps in {seconds:.0f} s; sampler {args.model / 'generator.pt'}")


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--build", required=True, help="a key of gan.builds")
    parser.add_argument("--splits", type=Path, required=True, help="the dataset's split directory")
    parser.add_argument("--checkpoint", type=Path, required=True, help="resumable checkpoint (scratch)")
    parser.add_argument("--model", type=Path, required=True, help="directory for generator.pt, losses.png, live/")
    cli.run(main, parser)
