"""Stage download@<dataset>: fetch the dataset from its first verified source into raw IDX files."""

from pathlib import Path

from auglab import cli, idx, params, sources
from auglab.files import atomic_dir


def main(args) -> None:
    timeout = params.load_key(args.params, "download.timeout")
    spec = params.load_key(args.params, f"download.datasets.{args.dataset}")
    arrays, source = sources.fetch(args.dataset, spec.sources, timeout, log=cli.log)
    with atomic_dir(args.out) as staging:
        idx.write_dataset(staging, args.dataset, arrays, source, sources.class_names(args.dataset))


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--dataset", required=True, help="a key of download.datasets")
    parser.add_argument("--out", type=Path, required=True, help="raw dataset directory to write")
    cli.run(main, parser)
