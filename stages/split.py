"""Stage split@<dataset>: official train -> train/val + nested subsets, test kept whole, as Parquet."""

from pathlib import Path

from auglab import cli, idx, params, split
from auglab.files import atomic_dir


def main(args) -> None:
    seed = params.load_key(args.params, "split.seed")
    subsets = params.load_key(args.params, "split.subsets")
    spec = params.load_key(args.params, f"split.datasets.{args.dataset}")
    arrays, raw = idx.read_dataset(args.raw)
    with atomic_dir(args.out) as staging:
        written = split.write_splits(
            staging, args.dataset, arrays, spec.mode, spec.val_size, subsets, seed, raw["class_names"], spec.slices
        )
    cli.log(", ".join(f"{name} {info.rows}" for name, info in written.items()))


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--dataset", required=True, help="a key of split.datasets")
    parser.add_argument("--raw", type=Path, required=True, help="raw dataset directory (download)")
    parser.add_argument("--out", type=Path, required=True, help="shard directory to write")
    cli.run(main, parser)
