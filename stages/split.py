"""Stage split@<dataset>: official train -> train/val + nested subsets, test kept whole, as Parquet."""

from pathlib import Path

from auglab import AuglabError, cli, idx, params, split
from auglab.files import atomic_dir


def main(args) -> None:
    (section,) = params.load(args.params, "split")
    if args.dataset not in section.datasets:
        known = ", ".join(section.datasets)
        raise AuglabError(f"split.datasets: no entry {args.dataset!r}; known: {known}")
    spec = section.datasets[args.dataset]
    arrays, raw = idx.read_dataset(args.raw)
    with atomic_dir(args.out) as staging:
        written = split.write_splits(
            staging, args.dataset, arrays, spec.mode, spec.val_size, section.subsets, section.seed,
            raw["class_names"],
        )
    cli.log(", ".join(f"{name} {info.rows}" for name, info in written.items()))


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--dataset", required=True, help="a key of split.datasets")
    parser.add_argument("--raw", type=Path, required=True, help="raw dataset directory (download)")
    parser.add_argument("--out", type=Path, required=True, help="shard directory to write")
    cli.run(main, parser)
