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

    def __len__(self) -> int:
        return len(self.photos.paths)


def wall_seconds(moment: datetime) -> int:
    return int((moment - WALL_EPOCH).total_seconds())


def wall_time(seconds: int) -> datetime:
    return WALL_EPOCH + timedelta(seconds=int(seconds))
