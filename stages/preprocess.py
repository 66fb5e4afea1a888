"""Stage preprocess@<dataset>: fit normalization statistics on the train split only."""

from pathlib import Path

from auglab import cli, params, preprocess, shards
from auglab.files import write_json_atomic


def main(args) -> None:
    (section,) = params.load(args.params, "preprocess")
    train = shards.read_split(args.splits, "train")
    mean, std = preprocess.fit_stats(train.images)
    height, width = train.images.shape[1:]
    stats = {
        "dataset": train.metadata["dataset"],
        "fit_split": "train",
        "fit_rows": len(train),
        "mean": mean,  # of pixel/255
        "std": std,
        "height": height,
        "width": width,
        "pad_to": section.pad_to,  # size padded-input models receive (zero pixels, then normalize)
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, stats)
    cli.log(f"{stats['dataset']}: mean {mean:.4f}, std {std:.4f} over {len(train)} train images")


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--splits", type=Path, required=True, help="shard directory (split stage)")
    parser.add_argument("--out", type=Path, required=True, help="statistics JSON to write")
    cli.run(main, parser)
