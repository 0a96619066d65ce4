"""The incremental indexer: brings an index up to date with a folder of photos."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from converters.app.bundle import Bundle
from converters.app.preprocess import ImageError
from converters.errors import UserError
from converters.search.scanner import FoundFile, find_photos, image_suffixes, read_photo
from converters.search.stamp import ArtifactStamp
from converters.search.store import (
    INDEX_FILE,
    WALL_EPOCH,
    IndexFileError,
    PhotoFacts,
    PhotoIndex,
    load_index,
    save_index,
    wall_seconds,
)
from converters.search.vectors import normalize_rows

LOCK_FILE = "index.lock"
# Photos per model call when indexing: the `index` command's default.
DEFAULT_BATCH_SIZE = 16
DEFAULT_INDEX_DIR = Path(os.environ.get("CNCLIP_INDEX", Path.home() / ".cache" / "cnclip" / "index"))


class IndexBusyError(UserError):
    """Another `index` run holds the index."""


@dataclass
class UpdatePlan:
    root: str
    to_embed: list[FoundFile]
    removed: int
    unchanged: int
    skipped: list[str]  # one sentence per file or folder left out, naming it


@dataclass
class UpdateReport:
    index_file: Path
    root: str
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    total: int = 0
    skipped: list[str] = field(default_factory=list)


class IndexUpdater:
    """Brings an index up to date with a folder; holds the index's lock while open.

        with IndexUpdater(index_dir, bundle, "onnx-sim") as updater:
            plan = updater.plan(photos_dir)
            report = updater.run(plan)

    Only files that are new, or whose size or mtime changed, are embedded;
    indexed files under the folder that are gone are dropped, and files under
    other indexed folders are left alone. Progress is saved every
    `checkpoint_seconds` and on Ctrl-C, so a re-run continues from it.
    """

    def __init__(self, index_dir: Path, bundle: Bundle, stage: str, threads: int = 0):
        self.index_dir = Path(index_dir)
        self.file = self.index_dir / INDEX_FILE
        self.bundle, self.stage, self.threads = bundle, stage, threads
        self.stamp = ArtifactStamp.of(bundle, stage)
        self._lock = FileLock(self.index_dir / LOCK_FILE)

    def __enter__(self) -> "IndexUpdater":
        self.index_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise IndexBusyError(
                f"Another `index` run is updating {self.index_dir}; wait for it to finish or use another --index."
            ) from None
        try:
            self._remove_leftover_temp_files()
            base = load_index(self.index_dir) if self.file.exists() else None
            if base is not None:
                base.artifact.require_same(self.stamp, self.file)
        except BaseException:
            self._lock.release()
            raise
        self._set_base(base)
        return self

    def __exit__(self, *exc_info) -> None:
        self._lock.release()

    def _remove_leftover_temp_files(self) -> None:
        # A save killed before its rename leaves its temporary file; under the lock none is in use.
        for leftover in self.index_dir.glob(f".{INDEX_FILE}.*.tmp"):
            leftover.unlink(missing_ok=True)

    def _set_base(self, base: PhotoIndex | None) -> None:
        self.base = base
        self.roots = list(base.roots) if base else []
        self.keep = np.ones(len(base) if base else 0, bool)
        self.row_of = {path: row for row, path in enumerate(base.photos.paths)} if base else {}
        self.new_vectors: list[np.ndarray] = []
        self.new_photos: list[PhotoFacts] = []
        self.changed = base is None or not base.complete  # something to save even if no file changed

    def plan(self, photos_dir: Path) -> UpdatePlan:
        root = str(Path(photos_dir).resolve())
        skipped: list[str] = []
        found = find_photos(Path(root), image_suffixes(), skipped)
        to_embed = [f for f in found if not self._is_current(f)]
        under_root = root.rstrip(os.sep) + os.sep
        seen = {f.path for f in found}
        gone = [path for path in self.row_of if path.startswith(under_root) and path not in seen]
        for path in gone:
            self._forget(path)
        if root not in self.roots:
            self.roots.append(root)
            self.changed = True
        return UpdatePlan(root, to_embed, len(gone), len(found) - len(to_embed), skipped)

    def _is_current(self, found: FoundFile) -> bool:
        row = self.row_of.get(found.path)
        if row is None:
            return False
        return self.base.photos.size[row] == found.size and self.base.photos.mtime_ns[row] == found.mtime_ns

    def run(
        self, plan: UpdatePlan, on_progress: Callable[[int], None] = lambda done: None,
        batch_size: int = 16, checkpoint_seconds: float = 60.0,
    ) -> UpdateReport:
        report = UpdateReport(
            self.file, plan.root, removed=plan.removed, unchanged=plan.unchanged, skipped=list(plan.skipped)
        )
        embedder = self.bundle.embedder(self.stage, self.threads) if plan.to_embed else None
        last_save, save_seconds = time.monotonic(), 0.0
        try:
            for start in range(0, len(plan.to_embed), batch_size):
                batch = plan.to_embed[start : start + batch_size]
                self._embed(batch, embedder, report)
                on_progress(len(batch))
                # Never more than a tenth of the time goes to checkpoints, however large the index.
                if time.monotonic() - last_save >= max(checkpoint_seconds, 10 * save_seconds):
                    save_seconds = self._save(complete=False)
                    last_save = time.monotonic()
        except KeyboardInterrupt:
            self._save(complete=False)
            raise
        if self.changed:
            self._save(complete=True)
        report.total = len(self.base)
        return report

    def _embed(self, batch: list[FoundFile], embedder, report: UpdateReport) -> None:
        pixels, taken, used = [], [], []
        for found in batch:
            was_indexed = self._forget(found.path)
            try:
                photo_pixels, moment = read_photo(found, self.bundle)
            except ImageError as error:
                report.skipped.append(str(error))
                continue
            pixels.append(photo_pixels)
            taken.append(moment)
            used.append(found)
            report.updated += was_indexed
            report.added += not was_indexed
        if not used:
            return
        self.new_vectors.append(normalize_rows(embedder.embed_images(np.stack(pixels))).astype(np.float16))
        self.new_photos.append(_facts(used, taken))
        self.changed = True

    def _forget(self, path: str) -> bool:
        """Drop the indexed row of `path`, stale once the file changed; True if there was one."""
        row = self.row_of.pop(path, None)
        if row is not None:
            self.keep[row] = False
            self.changed = True
        return row is not None

    def _save(self, complete: bool) -> float:
        """Write the index, then continue from the file written (kept rows stay on disk, not in memory)."""
        started = time.monotonic()
        kept = np.flatnonzero(self.keep)
        parts = ([(self.base.vectors, kept)] if self.base else []) + [(v, None) for v in self.new_vectors]
        photos = PhotoFacts.concat(([self.base.photos.select(kept)] if self.base else []) + self.new_photos)
        try:
            save_index(self.file, self.stamp, self.roots, photos, parts, complete)
        except OSError as error:
            raise IndexFileError(
                f"Cannot write the index {self.file}: {error.strerror or error}. The previous index is kept; "
                "free some space or choose another --index, then run index again."
            ) from error
        self._set_base(load_index(self.index_dir, verify=False))
        return time.monotonic() - started


def _local_time(mtime_ns: int) -> datetime:
    try:
        return datetime.fromtimestamp(mtime_ns / 1e9)
    except (OverflowError, OSError, ValueError):  # outside what the C library's localtime takes: UTC
        return WALL_EPOCH + timedelta(seconds=mtime_ns // 10**9)


def _facts(found: list[FoundFile], taken: list[datetime | None]) -> PhotoFacts:
    modified = [_local_time(f.mtime_ns) for f in found]
    return PhotoFacts(
        [f.path for f in found],
        np.array([f.size for f in found], np.int64),
        np.array([f.mtime_ns for f in found], np.int64),
        np.array([wall_seconds(t or m) for t, m in zip(taken, modified)], np.int64),
        np.array([t is not None for t in taken], bool),
    )
