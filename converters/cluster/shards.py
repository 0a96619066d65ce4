"""Parquet shards: what the cluster embedded, kept on the driver's disk until it is merged into the index.

One row per file sent: path (bytes, as the index keeps it), size, mtime_ns, and either the index's row
(time, captured, width, height, orientation, the float16 embedding as 2·dim little-endian bytes) or the
sentence saying why the file was skipped; the artifact id that embedded it; the node that did. A shard is
written to a temporary name and renamed, so a stopped driver leaves whole shards or none; anything else
found in the folder (a truncated copy, another artifact's rows) is refused before a row reaches the index.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from converters.errors import UserError
from converters.search.scanner import FoundFile
from converters.search.stamp import ArtifactStamp
from converters.search.store import PhotoRow

SUFFIX = ".parquet"
COLUMNS = {
    "path": pa.binary(), "size": pa.int64(), "mtime_ns": pa.int64(), "time": pa.int64(), "captured": pa.bool_(),
    "width": pa.int32(), "height": pa.int32(), "orientation": pa.int8(), "embedding": pa.binary(),
    "skipped": pa.string(), "artifact": pa.string(), "node": pa.string(),
}
SCHEMA = pa.schema(list(COLUMNS.items()))


class ShardError(UserError):
    """A shard cannot be merged: damaged on disk, or made by another artifact."""


@dataclass(frozen=True)
class ShardEntry:
    """One file as a shard holds it: its row, or why it was skipped."""

    size: int
    mtime_ns: int
    row: PhotoRow | None
    skipped: str | None
    node: str

    def matches(self, found: FoundFile) -> bool:
        return (self.size, self.mtime_ns) == (found.size, found.mtime_ns)


def shard_columns(rows: list[PhotoRow], skipped: list[tuple[FoundFile, str]], artifact: str, node: str) -> dict:
    """A batch's rows and skipped files as the shard's columns (numpy object and number arrays)."""
    files = [(r.path, r.size, r.mtime_ns) for r in rows] + [(f.path, f.size, f.mtime_ns) for f, _ in skipped]
    n, blank = len(files), [0] * len(skipped)
    return {
        "path": np.array([os.fsencode(path) for path, _, _ in files], dtype=object),
        "size": np.array([size for _, size, _ in files], np.int64),
        "mtime_ns": np.array([mtime for _, _, mtime in files], np.int64),
        "time": np.array([r.time for r in rows] + blank, np.int64),
        "captured": np.array([r.captured for r in rows] + [False] * len(skipped), bool),
        "width": np.array([r.width for r in rows] + blank, np.int32),
        "height": np.array([r.height for r in rows] + blank, np.int32),
        "orientation": np.array([r.orientation for r in rows] + blank, np.int8),
        "embedding": np.array([np.ascontiguousarray(r.embedding, "<f2").tobytes() for r in rows] + [None] * len(skipped), dtype=object),
        "skipped": np.array([None] * len(rows) + [why for _, why in skipped], dtype=object),
        "artifact": np.array([artifact] * n, dtype=object),
        "node": np.array([node] * n, dtype=object),
    }


def as_shard(table: pa.Table) -> pa.Table:
    """A batch as the shards' schema (a batch of skipped files only has a null-typed embedding column)."""
    return table.select(list(COLUMNS)).cast(SCHEMA)


def write_shard(folder: Path, table: pa.Table) -> Path:
    """One shard, whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"shard-{uuid.uuid4().hex}"
    partial = folder / f".{name}.partial"
    pq.write_table(as_shard(table), partial)
    with open(partial, "rb") as written:
        os.fsync(written.fileno())
    os.replace(partial, folder / f"{name}{SUFFIX}")
    return folder / f"{name}{SUFFIX}"


def shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"shard-*{SUFFIX}")) if folder.is_dir() else []


def read_shards(folder: Path, stamp: ArtifactStamp) -> dict[str, ShardEntry]:
    """Every file the shards in `folder` hold, each shard checked whole before any of it is used."""
    entries: dict[str, ShardEntry] = {}
    for shard in shard_files(folder):
        entries.update(read_shard(shard, stamp))
    return entries


def read_shard(shard: Path, stamp: ArtifactStamp) -> dict[str, ShardEntry]:
    try:
        table = pq.read_table(shard)
    except (pa.ArrowException, OSError) as error:
        raise damaged(shard, f"Parquet cannot read it ({error})") from None
    if table.schema.remove_metadata() != SCHEMA:
        raise damaged(shard, f"its columns are {table.schema.names}, expected {list(COLUMNS)}")
    columns = table.to_pydict()
    others = set(columns["artifact"]) - {stamp.id}
    if others:
        raise damaged(shard, f"it holds embeddings of artifact {sorted(others)[0][:12]}, not of {stamp.describe()}",
                      "embeddings of another artifact cannot go into this index")
    entries = {}
    for i, raw in enumerate(columns["path"]):
        path, why, blob = os.fsdecode(raw), columns["skipped"][i], columns["embedding"][i]
        if (why is None) == (blob is None):
            raise damaged(shard, f"the row of {path} has {'both' if why is None else 'neither'} an embedding and a skip reason")
        row = None
        if blob is not None:
            row = PhotoRow(path, columns["size"][i], columns["mtime_ns"][i], columns["time"][i], columns["captured"][i],
                           columns["width"][i], columns["height"][i], columns["orientation"][i], _vector(shard, path, blob, stamp.dim))
        entries[path] = ShardEntry(columns["size"][i], columns["mtime_ns"][i], row, why, columns["node"][i])
    return entries


def _vector(shard: Path, path: str, blob: bytes, dim: int) -> np.ndarray:
    if len(blob) != 2 * dim:
        raise damaged(shard, f"the embedding of {path} has {len(blob) // 2} values, the index's artifact makes {dim}")
    vector = np.frombuffer(blob, "<f2")
    norm = float(np.linalg.norm(vector.astype(np.float32)))
    if not np.isfinite(vector).all() or abs(norm - 1) > 1e-2:
        raise damaged(shard, f"the embedding of {path} is not a unit vector (norm {norm})")
    return vector


def damaged(shard: Path, why: str, what: str = "it may have been damaged on disk") -> ShardError:
    return ShardError(
        f"The shard {shard} cannot be merged: {why}; {what}. Nothing was written to the index. "
        "Delete that shard and run `embed` again: only its photos are embedded anew."
    )
