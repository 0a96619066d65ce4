"""The incremental indexer: brings an index up to date with a folder of photos, one transaction per batch."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from converters.app.bundle import Bundle
from converters.app.fsutil import exclusive
from converters.app.preprocess import ImageError
from converters.console import is_url
from converters.errors import UserError
from converters.search.scanner import (
    FoundFile,
    PhotoRead,
    find_photos,
    find_photos_at,
    image_suffixes,
    library_root,
    read_photo,
)
from converters.search.schema import INDEX_FILE, remove_database
from converters.search.stamp import ArtifactStamp
from converters.search.photos import WALL_EPOCH, PhotoRow, wall_seconds
from converters.search.store import IndexDatabase, require_writable
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
    gone: list[str]  # indexed files under the folder that are no longer there
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
    other indexed folders are left alone. Every batch is committed as it is
    embedded, so a run stopped in any way continues from there.
    """

    def __init__(self, index_dir: Path, bundle: Bundle, stage: str, threads: int = 0):
        self.index_dir = Path(index_dir)
        self.bundle, self.stage, self.threads = bundle, stage, threads
        self.stamp = ArtifactStamp.of(bundle, stage)
        self._held = contextlib.ExitStack()
        self._made_index = False  # by this run: removed again if the run fails before committing a photo

    def __enter__(self) -> "IndexUpdater":
        self.index_dir.mkdir(parents=True, exist_ok=True)
        require_writable(self.index_dir)  # before the lock, which a read-only folder would call busy
        with contextlib.ExitStack() as opening:
            busy = f"Another `index` run is updating {self.index_dir}; wait for it to finish or use another --index."
            opening.enter_context(exclusive(self.index_dir / LOCK_FILE, busy, IndexBusyError))
            self._made_index = not (self.index_dir / INDEX_FILE).exists()
            self.database = IndexDatabase(self.index_dir, create_for=self.stamp)
            opening.callback(self.database.close)
            self.database.stamp.require_same(self.stamp, self.database.file)
            self._held = opening.pop_all()  # opened: held until __exit__
        return self

    def __exit__(self, failure: type[BaseException] | None, *exc_info) -> None:
        try:
            # A first run that failed before a photo was committed (a mistyped bucket, Ctrl-C while listing) leaves
            # no index: an empty one would tie the folder to this run's --stage.
            if failure is not None and self._made_index and self.database.count() == 0:
                self.database.close()
                remove_database(self.database.file)  # under the lock, so that no other run opens it meanwhile
        finally:
            self._held.close()

    def plan(self, library: Path | str) -> UpdatePlan:
        """What to embed and what to drop: `library` is a folder, or a URL fsspec lists (console.is_url)."""
        root = library_root(library)
        skipped: list[str] = []
        if is_url(root):
            found = find_photos_at(root, image_suffixes())
        else:
            # An index folder inside the photos would have its own thumbnails indexed on the next run.
            found = find_photos(Path(root), image_suffixes(), skipped, exclude=self.index_dir)
        known = self.database.known_files()
        to_embed = [f for f in found if known.get(f.path) != (f.size, f.mtime_ns)]
        under_root = root.rstrip("/") + "/"
        seen = {f.path for f in found}
        gone = [path for path in known if path.startswith(under_root) and path not in seen]
        if is_url(root) and not found and not gone:  # an emptied bucket is not refused: its photos go
            raise UserError(f"There are no photos at {root}: check the bucket and the path.")
        return UpdatePlan(root, to_embed, gone, len(found) - len(to_embed), skipped)

    def run(
        self, plan: UpdatePlan, on_progress: Callable[[int], None] = lambda done: None, batch_size: int = DEFAULT_BATCH_SIZE,
        embed_batch: Callable[[list[FoundFile]], tuple[list[PhotoRow], list[str]]] | None = None,
    ) -> UpdateReport:
        """Writes the plan, one transaction per batch. `embed_batch` turns a batch of files into rows and skip
        sentences: by default this machine reads and embeds them; `embed --ray` passes the rows its shards hold,
        so that both paths commit the same transactions."""
        report = UpdateReport(self.database.file, plan.root, removed=len(plan.gone), unchanged=plan.unchanged,
                              skipped=list(plan.skipped))
        run = self.database.start_run(plan.root)
        self.database.write(run, plan.root, [], plan.gone, plan.skipped)
        known = self.database.known_files()
        if embed_batch is None and plan.to_embed:
            embed_batch = functools.partial(embed_here, self.bundle, self.bundle.embedder(self.stage, self.threads))
        for start in range(0, len(plan.to_embed), batch_size):
            batch = plan.to_embed[start : start + batch_size]
            rows, skipped = embed_batch(batch)
            embedded = {row.path for row in rows}
            updated = sum(path in known for path in embedded)
            # A file that can no longer be read has no current embedding: its old row goes.
            stale = [found.path for found in batch if found.path in known and found.path not in embedded]
            self.database.write(run, plan.root, rows, stale, skipped, added=len(rows) - updated, updated=updated)
            report.added += len(rows) - updated
            report.updated += updated
            report.removed += len(stale)
            report.skipped += skipped
            on_progress(len(batch))
        self.database.finish_run(run)
        report.total = self.database.count()
        return report


def embed_here(bundle: Bundle, embedder, batch: list[FoundFile]) -> tuple[list[PhotoRow], list[str]]:
    """A batch read and embedded on this machine: its rows, and one sentence for each file that cannot be read."""
    read, skipped = read_batch(batch, bundle)
    return photo_rows(read, embedder), skipped


def read_batch(batch: list[FoundFile], bundle: Bundle) -> tuple[list[tuple[FoundFile, PhotoRead]], list[str]]:
    """The photos of a batch that can be read, and one sentence for each that cannot."""
    read, skipped = [], []
    for found in batch:
        try:
            read.append((found, read_photo(found, bundle)))
        except ImageError as error:
            skipped.append(str(error))
    return read, skipped


def photo_rows(read: list[tuple[FoundFile, PhotoRead]], embedder) -> list[PhotoRow]:
    """The index's rows for photos read: one model call for the whole list."""
    if not read:
        return []
    vectors = normalize_rows(embedder.embed_images(np.stack([photo.pixels for _, photo in read]))).astype(np.float16)
    return [
        PhotoRow(found.path, found.size, found.mtime_ns, wall_seconds(photo.taken or _local_time(found.mtime_ns)),
                 photo.taken is not None, photo.width, photo.height, photo.orientation, vector)
        for (found, photo), vector in zip(read, vectors)
    ]


def _local_time(mtime_ns: int) -> datetime:
    try:
        return datetime.fromtimestamp(mtime_ns / 1e9)
    except (OverflowError, OSError, ValueError):  # outside what the C library's localtime takes: UTC
        return WALL_EPOCH + timedelta(seconds=mtime_ns // 10**9)
