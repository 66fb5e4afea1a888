"""Parquet shards: the one schema, the one writer, and a reader that validates everything it reads.

A split lives in a directory as `{split}-{i:05d}-of-{n:05d}.parquet` plus `manifest.json`
(rows, shard names and class counts per split). Columns:

    id     int64, not null               row id, unique and increasing within a split
    label  uint8, null only if unlabelled class index
    image  fixed_size_binary[H*W]        row-major uint8 pixels
    (augmented rows add) source_id int64 (-1 for GAN) and origin string (real|augment|gan)

Height, width, dataset, split, class count and labelledness are schema metadata. Images are
`fixed_size_binary` rather than `fixed_size_list<uint8>`: a list column carries a repetition
level per pixel, which made the full MNIST train split 6x slower to read (bench/read_split.py).
Shards are written to a temp name and renamed when complete, with page checksums, which the
reader verifies.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from auglab import AuglabError
from auglab.files import temp_path, write_json_atomic

ROWS_PER_SHARD = 20_000
ROWS_PER_GROUP = 5_000
COMPRESSION = "lz4"  # LZ4_RAW: reads as fast as raw IDX at a quarter of its size (bench/)
ORIGINS = ("real", "augment", "gan")
MANIFEST = "manifest.json"


def schema(
    *,
    height: int,
    width: int,
    dataset: str,
    split: str,
    classes: int,
    labelled: bool = True,
    augmented: bool = False,
) -> pa.Schema:
    """The Parquet schema of every split; `augmented` adds source_id and origin."""
    fields = [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("label", pa.uint8(), nullable=True),
        pa.field("image", pa.binary(height * width), nullable=False),
    ]
    if augmented:
        fields += [
            pa.field("source_id", pa.int64(), nullable=False),
            pa.field("origin", pa.string(), nullable=False),
        ]
    metadata = {
        "height": str(height),
        "width": str(width),
        "dataset": dataset,
        "split": split,
        "classes": str(classes),
        "labelled": str(labelled).lower(),
    }
    return pa.schema(fields, metadata=metadata)


def shard_name(split: str, index: int, count: int) -> str:
    """`train-00000-of-00003.parquet`."""
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


@dataclass(frozen=True)
class SplitInfo:
    """What the manifest records for one written split."""

    rows: int
    shards: list[str]
    class_counts: list[int]

    def as_json(self) -> dict:
        return {"rows": self.rows, "shards": self.shards, "class_counts": self.class_counts}


class ShardWriter:
    """Stream rows of one split into shards of exactly `rows_per_shard` rows (the last fewer).

    Row groups are exactly `rows_per_group` rows whatever the caller's batch sizes, so the
    bytes depend only on the rows. Use as a context manager; `close()` returns a SplitInfo.
    """

    def __init__(
        self,
        directory: Path,
        schema: pa.Schema,
        total_rows: int,
        rows_per_shard: int = ROWS_PER_SHARD,
        rows_per_group: int = ROWS_PER_GROUP,
    ) -> None:
        if total_rows <= 0:
            raise AuglabError(f"shard writer: expected a positive row count, got {total_rows}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.split = schema.metadata[b"split"].decode()
        self.classes = int(schema.metadata[b"classes"])
        self.height, self.width = int(schema.metadata[b"height"]), int(schema.metadata[b"width"])
        self.total_rows = total_rows
        self.rows_per_shard = rows_per_shard
        self.rows_per_group = rows_per_group
        self.count = math.ceil(total_rows / rows_per_shard)
        self.names = [shard_name(self.split, i, self.count) for i in range(self.count)]
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._written = 0  # rows flushed to shards so far
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._class_counts = np.zeros(self.classes, dtype=np.int64)

    def write(
        self,
        ids: np.ndarray,
        labels: np.ndarray | None,
        images: np.ndarray,
        **extra: np.ndarray,
    ) -> None:
        """Append rows: ids (N,) int64, labels (N,) uint8 or None, images (N, H, W) uint8."""
        n = len(ids)
        if images.shape != (n, self.height, self.width) or images.dtype != np.uint8:
            raise AuglabError(
                f"{self.split}: expected images uint8 {(n, self.height, self.width)}, "
                f"got {images.dtype} {images.shape}"
            )
        if self._written + self._pending_rows + n > self.total_rows:
            raise AuglabError(f"{self.split}: more than the declared {self.total_rows} rows")
        if labels is not None:
            self._class_counts += np.bincount(labels, minlength=self.classes)[: self.classes]
        columns = [
            pa.array(ids, pa.int64()),
            pa.array(labels, pa.uint8()) if labels is not None else pa.nulls(n, pa.uint8()),
            pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(self.height * self.width), n, [None, pa.py_buffer(np.ascontiguousarray(images))]
            ),
        ]
        extra_fields = list(self.schema)[3:]
        if sorted(extra) != sorted(f.name for f in extra_fields):
            raise AuglabError(
                f"{self.split}: expected extra columns {[f.name for f in extra_fields]}, got {sorted(extra)}"
            )
        columns += [pa.array(extra[f.name], f.type) for f in extra_fields]
        self._pending.append(pa.Table.from_arrays(columns, schema=self.schema))
        self._pending_rows += n
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        while self._pending_rows:
            shard_left = self.rows_per_shard - self._written % self.rows_per_shard
            take = min(self.rows_per_group, shard_left)
            if self._pending_rows < take and not final:
                return
            take = min(take, self._pending_rows)
            table = pa.concat_tables(self._pending)
            self._pending = [table.slice(take)]
            self._pending_rows -= take
            self._write_group(table.slice(0, take))

    def _write_group(self, group: pa.Table) -> None:
        if self._writer is None:
            index = self._written // self.rows_per_shard
            self._tmp = temp_path(self.directory / self.names[index])
            self._writer = pq.ParquetWriter(
                self._tmp,
                self.schema,
                compression=COMPRESSION,
                use_dictionary=False,
                write_statistics=["id", "label"],
                write_page_checksum=True,
            )
        self._writer.write_table(group, row_group_size=len(group))
        self._written += len(group)
        if self._written % self.rows_per_shard == 0 or self._written == self.total_rows:
            self._writer.close()
            os.replace(self._tmp, self.directory / self.names[(self._written - 1) // self.rows_per_shard])
            self._writer, self._tmp = None, None

    def close(self) -> SplitInfo:
        """Flush the last rows, check the declared row count, and return what was written."""
        self._flush(final=True)
        if self._written != self.total_rows:
            self.abort()
            raise AuglabError(f"{self.split}: wrote {self._written} rows, declared {self.total_rows}")
        return SplitInfo(self.total_rows, self.names, self._class_counts.tolist())

    def abort(self) -> None:
        """Drop the shard being written; completed shards stay (the caller's atomic_dir drops them)."""
        if self._writer is not None:
            self._writer.close()
            self._tmp.unlink(missing_ok=True)
            self._writer, self._tmp = None, None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None:
            self.abort()


def write_split(directory: Path, schema: pa.Schema, ids: np.ndarray, labels: np.ndarray | None,
                images: np.ndarray, **kwargs: int) -> SplitInfo:
    """Write an in-memory split in one call (see ShardWriter)."""
    with ShardWriter(directory, schema, len(ids), **kwargs) as writer:
        writer.write(ids, labels, images)
        return writer.close()


def write_manifest(directory: Path, splits: dict[str, SplitInfo], **info: object) -> None:
    """Write manifest.json: `info` (dataset, seed, ...) plus each split's rows/shards/counts."""
    write_json_atomic(
        Path(directory) / MANIFEST,
        {**info, "splits": {name: split.as_json() for name, split in splits.items()}},
    )


def read_manifest(directory: Path) -> dict:
    """The manifest.json of a shard directory, or an error naming the directory."""
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AuglabError(f"{path}: missing; is {directory} a shard directory?") from None
    except json.JSONDecodeError as e:
        raise AuglabError(f"{path}: not valid JSON ({e})") from None


@dataclass(frozen=True)
class Split:
    """One split in memory: ids (N,) int64, labels (N,) uint8 or None, images (N, H, W) uint8."""

    ids: np.ndarray
    labels: np.ndarray | None
    images: np.ndarray
    metadata: dict[str, str]
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def _describe(layout: pa.Schema) -> str:
    """A schema on one line: `id: int64 not null, label: uint8, ... {height: 28, ...}`."""
    fields = ", ".join(f"{f.name}: {f.type}{'' if f.nullable else ' not null'}" for f in layout)
    metadata = {k.decode(): v.decode() for k, v in (layout.metadata or {}).items()}
    return f"[{fields}] {metadata}"


def _read_shard(path: Path) -> pa.Table:
    try:
        return pq.read_table(path, page_checksum_verification=True)  # 1.6x faster than ParquetFile.read
    except (pa.ArrowException, OSError) as e:
        raise AuglabError(f"{path}: unreadable Parquet shard ({e})") from None


def read_split(directory: Path, split: str) -> Split:
    """Read and validate one split of a shard directory, shards in name order.

    Checks, naming the file on failure: the shard set matches the manifest, page checksums,
    the schema is exactly the declared one (no silent casts), the split name, labels within
    the class count, ids increasing, and row counts against the manifest.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if split not in manifest.get("splits", {}):
        known = ", ".join(manifest.get("splits", {}))
        raise AuglabError(f"{directory}: no split {split!r} in the manifest; has: {known}")
    expected = manifest["splits"][split]
    present = sorted(p.name for p in directory.glob(f"{split}-*-of-*.parquet"))
    present = [name for name in present if re.fullmatch(rf"{re.escape(split)}-\d{{5}}-of-\d{{5}}\.parquet", name)]
    if present != sorted(expected["shards"]):
        raise AuglabError(
            f"{directory}: shards of {split!r} are {present}, the manifest lists {expected['shards']}"
        )
    tables = []
    for name in present:
        path = directory / name
        table = _read_shard(path)
        metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        try:
            declared = schema(
                height=int(metadata["height"]),
                width=int(metadata["width"]),
                dataset=metadata["dataset"],
                split=metadata["split"],
                classes=int(metadata["classes"]),
                labelled=metadata["labelled"] == "true",
                augmented="origin" in table.schema.names,
            )
        except (KeyError, ValueError) as e:
            raise AuglabError(f"{path}: schema metadata incomplete or malformed ({e})") from None
        if not table.schema.equals(declared, check_metadata=True):
            raise AuglabError(f"{path}: schema is {_describe(table.schema)}, expected {_describe(declared)}")
        if metadata["split"] != split:
            raise AuglabError(f"{path}: holds split {metadata['split']!r}, expected {split!r}")
        if tables and table.schema != tables[0].schema:
            raise AuglabError(f"{path}: schema differs from {present[0]}")
        tables.append(table)
    table = pa.concat_tables(tables)
    metadata = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    where = f"{directory}/{split}-*"
    if table.num_rows != expected["rows"]:
        raise AuglabError(f"{where}: {table.num_rows} rows, the manifest says {expected['rows']}")
    ids = table.column("id").to_numpy()
    if len(ids) > 1 and not (np.diff(ids) > 0).all():
        raise AuglabError(f"{where}: ids are not strictly increasing")
    labels = None
    if metadata["labelled"] == "true":
        column = table.column("label")
        if column.null_count:
            raise AuglabError(f"{where}: {column.null_count} null labels in a labelled split")
        labels = column.to_numpy()
        if len(labels) and labels.max() >= int(metadata["classes"]):
            raise AuglabError(f"{where}: label {labels.max()} out of range 0..{int(metadata['classes']) - 1}")
    height, width = int(metadata["height"]), int(metadata["width"])
    images = np.empty((table.num_rows, height, width), dtype=np.uint8)
    flat = images.reshape(table.num_rows, height * width)
    start = 0
    for chunk in table.column("image").chunks:
        pixels = np.frombuffer(chunk.buffers()[1], dtype=np.uint8)
        pixels = pixels[chunk.offset * height * width : (chunk.offset + len(chunk)) * height * width]
        flat[start : start + len(chunk)] = pixels.reshape(len(chunk), height * width)
        start += len(chunk)
    extra = {}
    if "origin" in table.schema.names:
        extra = {name: table.column(name).to_numpy() for name in ("source_id", "origin")}
        bad = set(extra["origin"]) - set(ORIGINS)
        if bad:
            raise AuglabError(f"{where}: origin values {sorted(bad)}, expected one of {ORIGINS}")
    return Split(ids, labels, images, metadata, extra)
