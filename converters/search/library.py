"""What `serve` holds: the index as last committed, its bundle and embedder, and the thumbnail cache.

A nightly `index` run commits batches while the server answers, and people replace bundles and
indexes under a running server. Every request first asks `current()`, which compares cheap
signatures (SQLite's data_version, the database's inode, the bundle files' inodes, sizes and
mtimes) with those of what is loaded, and reloads when they differ; a search therefore answers
from one committed state of the index: the latest, or while another request reloads, the one
before it (its answer's `index_version` tells which). What cannot be used (a bundle replaced by another
artifact) becomes a `problem`: searches refuse with it and the status says it.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import sqlite3
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import ImageOps

from converters.app.bundle import Bundle
from converters.app.fsutil import atomic_write_bytes
from converters.app.runtimes import Embedder
from converters.app.specs import TOWERS
from converters.console import is_url
from converters.errors import UserError
from converters.search.photos import PhotoIndex
from converters.search.query import Searcher
from converters.search.render import THUMBNAIL_PX
from converters.search.scanner import load_photo
from converters.search.stamp import weights_warning
from converters.search.store import INDEX_FILE, IndexDatabase, load_index

THUMBNAIL_FOLDER = "thumbnails"

try:
    _libc = ctypes.CDLL(None)
    _malloc_trim, _mallopt = _libc.malloc_trim, _libc.mallopt
except (OSError, AttributeError, TypeError):  # no glibc (macOS, musl, Windows): nothing to ask
    _malloc_trim = _mallopt = None
M_MMAP_THRESHOLD = -3  # glibc's malloc.h
LARGE_BLOCK = 128 * 1024  # bytes: glibc's own initial threshold, held there


def map_large_blocks_apart() -> None:
    """From now on every block of LARGE_BLOCK bytes or more is a mapping of its own, returned to the system when freed.

    glibc starts so, but raises the threshold to the size of each mapped block freed (up to 32 MB): after the first
    reload, a reload's arrays (megabytes each) came from the heap, which keeps the holes they leave. In a 4-minute
    paced load run with `index` committing (tiny ViT, 100,000 photos, AMD EPYC, 2 cores), the server's memory by
    minute went from 207, 226, 236, 236 MB to 164, 168, 170, 170 MB held so.
    """
    if _mallopt is not None:
        _mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)


class LibraryProblem(UserError):
    """The index or bundle changed under the server into something it cannot search with."""

    status_code = 409


@dataclass(frozen=True)
class Snapshot:
    """One consistent state: searches use one snapshot from start to end."""

    index: PhotoIndex
    searcher: Searcher | None  # None while the index holds no photos
    bundle: Bundle
    embedder: Embedder
    weights_warning: str | None
    signature: tuple
    problem: str | None = None  # why the index or bundle on disk cannot be used now (this snapshot is the last good one)


class Library:
    """The served index and bundle, reloaded when either changes on disk."""

    # How long the request that noticed a change waits for the reload it started before it answers from the
    # snapshot before (None: until the reload is done). A reload at 100,000 photos takes 0.25-0.37 s, and the
    # requests that waited it out, one or two per `index` run, were the text search's p99 in a paced load run.
    RELOAD_WAIT: float | None = 0.05

    def __init__(self, index_dir: Path, artifacts: Path | None, threads: int):
        self.index_dir, self.artifacts, self.threads = Path(index_dir), artifacts, threads
        # Held by the one request checking for changes (and reloading); model runs need no lock:
        # onnxruntime's sessions are thread-safe and ncnn makes an extractor per call.
        self._checking = threading.Lock()
        self._watch: tuple[int, sqlite3.Connection] | None = None
        self._snapshot = self._load(self._signature())
        self.reloads = 0

    @classmethod
    def open(cls, index_dir: Path, artifacts: Path | None, threads: int) -> "Library":
        return cls(index_dir, artifacts, threads)

    # ---- noticing changes ----------------------------------------------------------------------

    def _data_version(self) -> tuple:
        """(inode, data_version) of the index database: data_version changes with every commit by another
        connection, the inode when the file was replaced (a deleted and rebuilt index)."""
        database = self.index_dir / INDEX_FILE
        try:
            inode = database.stat().st_ino
        except FileNotFoundError:
            return (None, None)
        if self._watch is None or self._watch[0] != inode:
            if self._watch is not None:
                self._watch[1].close()
            uri = f"{database.resolve().as_uri()}?mode=ro"
            self._watch = (inode, sqlite3.connect(uri, uri=True, check_same_thread=False))
        try:
            return (inode, self._watch[1].execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:  # a read-only folder (no WAL index can be made): the inode is all there is
            return (inode, None)

    def _bundle_files(self, bundle: Bundle, stage: str) -> tuple:
        paths = [bundle.manifest.path, *(f for t in TOWERS for f in bundle.manifest.artifact(t, stage).files)]
        return tuple(_file_signature(path) for path in paths)

    def _signature(self, snapshot: Snapshot | None = None) -> tuple:
        bundle_files = None if snapshot is None else self._bundle_files(snapshot.bundle, snapshot.index.artifact.stage)
        return self._data_version(), bundle_files

    def current(self) -> Snapshot:
        """The snapshot to answer with, reloaded first if the index or bundle changed; may take a while
        (call it from a worker thread). Raises LibraryProblem when what changed cannot be used.

        One request at a time checks, and reloads in a thread of its own; the others meanwhile answer from the
        snapshot already loaded, the index as committed a moment earlier, rather than wait: a reload at 100,000
        photos takes a few tenths of a second of CPU, and while a nightly `index` commits, searches queued
        behind reloads (text search p99 2.0 s in a paced load run, docs/serving-a-household.md). The request that
        started it waits RELOAD_WAIT at most.
        """
        if self._checking.acquire(blocking=False):
            try:
                signature = self._signature(self._snapshot)
            except BaseException:
                self._checking.release()
                raise
            if signature == self._snapshot.signature:
                self._checking.release()
            else:
                reloader = threading.Thread(target=self._reload, args=(signature,), name="cnclip-reload", daemon=True)
                reloader.start()
                reloader.join(self.RELOAD_WAIT)
        snapshot = self._snapshot  # one read: the snapshot and its problem belong together
        if snapshot.problem:
            raise LibraryProblem(snapshot.problem)
        return snapshot

    def _reload(self, signature: tuple) -> None:
        """Runs in a thread of its own, holding `_checking`, which it releases."""
        try:
            previous = self._snapshot
            try:
                self._snapshot = self._load(signature)
            except UserError as error:
                # The last good snapshot, marked as having seen `signature` so that a problem is not reloaded on every request.
                problem = (f"The index or bundle changed while serving and cannot be used: {error} "
                           "Searches are refused until it is fixed; the server notices by itself.")
                self._snapshot = replace(self._snapshot, signature=signature, problem=problem)
            self.reloads += 1
            if _malloc_trim is not None and self._snapshot.index.vectors is not previous.index.vectors:
                # glibc keeps the memory of the arrays a reload replaced for later use, in the arena of the
                # thread that reloaded: a server with `index` committing grew by a fifth in two minutes.
                _malloc_trim(0)
        finally:
            self._checking.release()

    def _load(self, signature: tuple) -> Snapshot:
        previous = getattr(self, "_snapshot", None)
        index = load_index(self.index_dir, previous.index if previous is not None else None)
        if previous is not None and previous.index.artifact == index.artifact and signature[1] == previous.signature[1]:
            bundle, embedder = previous.bundle, previous.embedder  # only the index changed
        else:
            bundle = index.artifact.open_bundle(self.artifacts, index.file)
            embedder = bundle.embedder(index.artifact.stage, self.threads)
        reuse = previous.searcher if previous is not None else None
        searcher = Searcher(index, threads=self.threads, reuse=reuse) if len(index) else None
        return Snapshot(index, searcher, bundle, embedder, weights_warning(bundle),
                        (signature[0], self._bundle_files(bundle, index.artifact.stage)))

    def status(self) -> dict:
        """The database's facts, what is loaded, and any problem."""
        try:
            self.current()
        except LibraryProblem:
            pass
        snapshot = self._snapshot
        database = IndexDatabase(self.index_dir)
        try:
            facts = database.status()
        finally:
            database.close()
        return facts | {"loaded_photos": len(snapshot.index), "bundle": str(snapshot.bundle.manifest.root),
                        "weights_warning": snapshot.weights_warning, "problem": snapshot.problem}

    # ---- files ---------------------------------------------------------------------------------

    def photo_file(self, photo_id: int, snapshot: Snapshot) -> str:
        """The photo `photo_id` (its rowid), if it is still indexed and a regular file inside an indexed folder,
        or a URL under an indexed URL (a library in a bucket)."""
        index = snapshot.index
        row = index.row_of(photo_id)
        path = index.photos.paths[row]
        if is_url(path):
            if not any(path.startswith(root + "/") for root in index.roots if is_url(root)):
                raise LookupError(row)
            return path
        resolved = Path(path).resolve()
        inside = any(resolved.is_relative_to(Path(root).resolve()) for root in index.roots if not is_url(root))
        if not inside or not resolved.is_file():
            raise LookupError(row)
        return str(resolved)

    def thumbnail(self, photo_id: int, snapshot: Snapshot) -> bytes:
        path = self.photo_file(photo_id, snapshot)
        if is_url(path):  # as listed when indexed: asking the bucket for every thumbnail would cost a request each
            row = snapshot.index.row_of(photo_id)
            size, mtime_ns = int(snapshot.index.photos.size[row]), int(snapshot.index.photos.mtime_ns[row])
        else:
            stat = os.stat(path)
            size, mtime_ns = stat.st_size, stat.st_mtime_ns
        key = hashlib.sha256(f"{os.fsencode(path)!r}:{size}:{mtime_ns}:{THUMBNAIL_PX}".encode()).hexdigest()
        cached = self.index_dir / THUMBNAIL_FOLDER / f"{key}.jpg"
        if cached.is_file():
            return cached.read_bytes()
        # Turned upright for people, unlike the model's pixels, which use the file as stored.
        image = ImageOps.exif_transpose(load_photo(path))
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=80)
        try:
            atomic_write_bytes(cached, buffer.getvalue())
        except OSError:  # a full disk or a read-only index folder: the thumbnail is still shown, only not kept
            pass
        return buffer.getvalue()


def _file_signature(path: Path) -> tuple | None:
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
