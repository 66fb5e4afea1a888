"""Bench: read the full MNIST train set from our Parquet shards vs parsing the raw IDX files.

Same 60,000 images, same process, interleaved repeats, median of each. Also times the schema
the design first proposed (image as fixed_size_list<uint8>) to show why shards use
fixed_size_binary. Needs the download stage's output: `dvc repro download@mnist`.

    python bench/read_split.py [--raw data/raw/mnist] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from auglab import idx, shards


def read_idx(raw: Path) -> tuple[np.ndarray, np.ndarray]:
    return idx.read(raw / "train-images-idx3-ubyte", 3), idx.read(raw / "train-labels-idx1-ubyte", 1)


def write_list_variant(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    image_type = pa.list_(pa.field("item", pa.uint8(), nullable=False), 28 * 28)
    table = pa.table({
        "id": pa.array(np.arange(len(labels)), pa.int64()),
        "label": pa.array(labels, pa.uint8()),
        "image": pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), type=image_type),
    })
    pq.write_table(table, path, compression=shards.COMPRESSION, use_dictionary=False,
                   write_page_checksum=True, row_group_size=shards.ROWS_PER_GROUP)


def read_list_variant(path: Path) -> np.ndarray:
    table = pq.read_table(path, page_checksum_verification=True)
    return table.column("image").combine_chunks().values.to_numpy().reshape(-1, 28, 28)


def measure(readers: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each reader, the readers interleaved within each repeat."""
    times: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(repeats):
        for name, read in readers.items():
            start = time.perf_counter()
            read()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=Path("data/raw/mnist"))
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    if not (args.raw / "train-images-idx3-ubyte").exists():
        sys.exit(f"error: {args.raw} has no raw MNIST; run `dvc repro download@mnist` first")
    images, labels = read_idx(args.raw)
    with tempfile.TemporaryDirectory() as tmp:
        shard_dir, list_file = Path(tmp) / "shards", Path(tmp) / "list.parquet"
        layout = shards.schema(height=28, width=28, dataset="mnist", split="train", classes=10)
        info = shards.write_split(shard_dir, layout, np.arange(len(labels)), labels, images)
        shards.write_manifest(shard_dir, {"train": info})
        write_list_variant(list_file, images, labels)
        np.testing.assert_array_equal(shards.read_split(shard_dir, "train").images, images)
        np.testing.assert_array_equal(read_list_variant(list_file), images)
        readers = {
            "raw IDX (np.frombuffer)": lambda: read_idx(args.raw),
            "Parquet shards (read_split, validated)": lambda: shards.read_split(shard_dir, "train"),
        }
        times = measure(readers, args.repeats)
        # The rejected layout allocates heavily; timed on its own so it cannot slow the others.
        times |= measure({"Parquet fixed_size_list<uint8> (rejected)": lambda: read_list_variant(list_file)},
                         args.repeats)
        sizes = {
            "raw IDX (np.frombuffer)": sum((args.raw / n).stat().st_size
                                           for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
            "Parquet shards (read_split, validated)": sum(p.stat().st_size for p in shard_dir.glob("*.parquet")),
            "Parquet fixed_size_list<uint8> (rejected)": list_file.stat().st_size,
        }
    base = statistics.median(times["raw IDX (np.frombuffer)"])
    print(f"Full MNIST train set, {len(labels)} images, median of {args.repeats}:")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:44s} {median * 1000:7.1f} ms  {median / base:5.2f}x raw IDX  {sizes[name] / 1e6:6.1f} MB")


if __name__ == "__main__":
    main()
