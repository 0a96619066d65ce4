"""The index's photos in memory, as search and the indexer use them: one row per photo, its facts and vectors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from converters.search.stamp import ArtifactStamp
from converters.search.vectors import Int8Codes

# Photo times are wall-clock seconds since this naive epoch: EXIF DateTimeOriginal carries no time
# zone, so capture times and modification times are both compared as local wall-clock time.
WALL_EPOCH = datetime(1970, 1, 1)


@dataclass
class PhotoFacts:
    """One row per photo, in the order of the index's vectors."""

    paths: list[str]
    size: np.ndarray  # int64 bytes
    mtime_ns: np.ndarray  # int64; with size, tells whether a file changed
    time: np.ndarray  # int64 wall-clock seconds since WALL_EPOCH: the EXIF capture time, else the mtime
    captured: np.ndarray  # bool: `time` comes from EXIF


@dataclass(frozen=True)
class PhotoRow:
    """What the indexer writes for one photo."""

    path: str
    size: int
    mtime_ns: int
    time: int
    captured: bool
    width: int
    height: int
    orientation: int  # EXIF orientation 1–8, 0 when the file has none
    embedding: np.ndarray  # float16 [dim], L2-normalized


@dataclass
class PhotoIndex:
    file: Path
    artifact: ArtifactStamp
    roots: list[str]
    complete: bool  # False while the latest run over a folder has not finished (it is running, or was stopped)
    photos: PhotoFacts
    vectors: np.ndarray  # float16 [N, D], L2-normalized
    int8: Int8Codes
    # Each photo's SQLite rowid, ascending: its id for as long as it is unchanged (`index` replaces a
    # changed photo's row, giving it a new rowid), unlike its row number, which shifts as others come and go.
    rowids: np.ndarray | None = None  # int64 [N]; None: 1…N
    state: str | None = None  # the photos table's state these rows were read in (store: None when not counted)

    def __post_init__(self):
        if self.rowids is None:
            self.rowids = np.arange(1, len(self) + 1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.photos.paths)

    def row_of(self, rowid: int) -> int:
        """The row of the photo with this id; LookupError when there is none (deleted, or never was)."""
        row = int(self.rows_of(np.array([rowid]))[0])
        if row < 0:
            raise LookupError(rowid)
        return row

    def rows_of(self, rowids: np.ndarray) -> np.ndarray:
        """The row of each photo id, -1 where there is none."""
        rowids = np.asarray(rowids, np.int64)
        if not len(self):
            return np.full(len(rowids), -1, np.int64)
        rows = np.minimum(np.searchsorted(self.rowids, rowids), len(self) - 1)
        return np.where(self.rowids[rows] == rowids, rows, -1)


@dataclass
class PhotoRows:
    """Some rows of an index, as read from the database or kept from a loaded index: what `assemble` joins."""

    rowids: np.ndarray  # int64 [n]
    paths: list[str]
    numbers: np.ndarray  # int64 [n, 4]: size, mtime_ns, time, captured
    vectors: np.ndarray  # float16 [n, D]
    int8: Int8Codes

    @classmethod
    def kept(cls, index: PhotoIndex, rows: np.ndarray, paths: np.ndarray) -> "PhotoRows":
        """The index's `rows`; `paths` is its paths as an object array (the caller has made it to compare paths)."""
        facts = index.photos
        numbers = np.stack([facts.size, facts.mtime_ns, facts.time, facts.captured.astype(np.int64)], axis=1)[rows]
        # np.take, not codes[:, rows]: that returns a strided array, which made joining it 30× slower (measured).
        # The paths through an object array: a loop over `rows` makes a NumPy scalar per photo.
        return cls(index.rowids[rows], paths[rows].tolist(), numbers, np.take(index.vectors, rows, axis=0),
                   Int8Codes(np.take(index.int8.codes, rows, axis=1), index.int8.scales[rows]))


def assemble(parts: list[PhotoRows], dim: int) -> tuple[np.ndarray, PhotoFacts, np.ndarray, Int8Codes]:
    """(rowids, facts, vectors, int8 codes) of the parts' rows together, ordered by rowid as a full load is."""
    rowids = np.concatenate([np.empty(0, np.int64), *(part.rowids for part in parts)])
    paths = [path for part in parts for path in part.paths]
    numbers = np.concatenate([np.empty((0, 4), np.int64), *(part.numbers for part in parts)])
    vectors = np.concatenate([np.empty((0, dim), np.float16), *(part.vectors for part in parts)])
    codes = np.concatenate([np.empty((dim, 0), np.int8), *(part.int8.codes for part in parts)], axis=1)
    scales = np.concatenate([np.empty(0, np.float32), *(part.int8.scales for part in parts)])
    if np.any(rowids[1:] <= rowids[:-1]):
        # Only when SQLite reused the rowid of a removed last row: the usual batch appends above the rest,
        # and gathering the [D, N] codes by column costs seconds at 100,000 photos.
        order = np.argsort(rowids, kind="stable")
        rowids, numbers, scales = rowids[order], numbers[order], scales[order]
        vectors, codes = np.take(vectors, order, axis=0), np.take(codes, order, axis=1)
        paths = [paths[i] for i in order]
    facts = PhotoFacts(paths, numbers[:, 0].copy(), numbers[:, 1].copy(), numbers[:, 2].copy(), numbers[:, 3] != 0)
    return rowids, facts, vectors, Int8Codes(codes, scales)


def wall_seconds(moment: datetime) -> int:
    return int((moment - WALL_EPOCH).total_seconds())


def wall_time(seconds: int) -> datetime:
    return WALL_EPOCH + timedelta(seconds=int(seconds))
