"""The photo index: one SQLite database per index folder, updated in place, one transaction per batch.

`<index dir>/index.sqlite` (WAL journal) holds

    meta      format, version, the artifact stamp (which artifact made the embeddings), its dim
    roots     the indexed folders
    photos    one row per photo: path (bytes: names need not be UTF-8), size, mtime_ns, time
              (wall-clock seconds: EXIF capture time, else mtime), captured, width, height, EXIF
              orientation, and the L2-normalized float16 embedding as a BLOB
    runs      one row per `index` run: folder, start, end (NULL while running or if it was killed), counts
    skipped   what the last run of each folder left out, one sentence each, naming the file

Apps keep photo embeddings the same way (Room, Core Data, GRDB). A kill at any moment loses at most the batch in
flight, and SQLite's journal keeps the file whole. Search loads the embeddings into memory once, as float16 rows
for rescoring and int8 codes for the scan.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from converters import __version__
from converters.errors import UserError
from converters.search.photos import PhotoIndex, PhotoRow, PhotoRows, assemble
from converters.search.schema import (
    FORMAT, INDEX_FILE, LEGACY_FILE, MAX_DIM, PHOTO_COLUMNS, SCHEMA, VERSION, count_changes, decode_path, encode_path,
    photos_state, table_columns,
)
from converters.search.stamp import ArtifactStamp
from converters.search.vectors import int8_codes

CHANGES_CHUNK = 4_096  # rows of the listing a reload compares at once


class IndexFileError(UserError):
    """The index is missing, corrupt, of another format version, or cannot be written."""


def corrupt(file: Path, why: str) -> IndexFileError:
    return IndexFileError(
        f"The photo index {file} is unusable: {why}. "
        "Delete it and run `python -m converters index` again to rebuild it."
    )


def writable(folder: Path) -> bool:
    """Whether this user can write the index in `folder` (the folder, and its database when there is one)."""
    database = Path(folder) / INDEX_FILE
    return os.access(folder, os.W_OK) and (not database.exists() or os.access(database, os.W_OK))


def require_writable(folder: Path) -> None:
    if not writable(folder):
        raise IndexFileError(
            f"The index folder {folder} is read-only for this user: `index` writes {INDEX_FILE} and its journal there. "
            "The index in it is intact and `search` and `serve` can read it; to update it, make the folder and "
            "its files writable (chmod u+w), run as their owner, or index into another --index."
        )


class IndexDatabase:
    """One open index; `create` makes it for `stamp` when the folder has none."""

    def __init__(self, index_dir: Path, create_for: ArtifactStamp | None = None):
        self.file = Path(index_dir) / INDEX_FILE
        legacy = Path(index_dir) / LEGACY_FILE
        if legacy.exists():
            raise IndexFileError(
                f"{legacy} is an index of an earlier version of this tool (a single file, not a database). "
                f"Delete it and run `python -m converters index` again: the photos are embedded anew into {self.file}."
            )
        if not self.file.is_file() and create_for is None:
            raise IndexFileError(
                f"No photo index at {self.file}. Build one with `python -m converters index PHOTOS --bundle BUNDLE`, "
                "or point --index at the directory that holds it."
            )
        if create_for is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            require_writable(self.file.parent)
        # SQLite writes a WAL index beside the file even to read it; in a folder this user cannot write (a
        # read-only share, another user's index) the file is read as immutable, as it stands on disk.
        self.read_only = not writable(self.file.parent)
        try:
            if self.read_only:
                self.connection = sqlite3.connect(f"{self.file.resolve().as_uri()}?mode=ro&immutable=1", uri=True,
                                                  isolation_level=None)
            else:
                self.connection = sqlite3.connect(self.file, isolation_level=None)
                self.connection.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode: a power cut may lose the last transactions, never the database.
                self.connection.execute("PRAGMA synchronous=NORMAL")
            tables = {row[0] for row in self.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables and create_for is not None:
                self._create(create_for)
            self.stamp = self._check()
        except sqlite3.DatabaseError as error:
            raise corrupt(self.file, f"SQLite cannot read it ({error})") from None

    def _create(self, stamp: ArtifactStamp) -> None:
        with self.transaction():
            for statement in filter(str.strip, SCHEMA.split(";")):
                self.connection.execute(statement)
            count_changes(self.connection)
            meta = {"format": FORMAT, "version": str(VERSION), "artifact": json.dumps(asdict(stamp)),
                    "created_by": f"cnclip-converters {__version__}"}
            self.connection.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())

    def _check(self) -> ArtifactStamp:
        """The schema, the format version and the stamp as this tool writes them, before any row is used."""
        for table in ("meta", "roots", "photos", "runs", "skipped"):
            columns = [row[1] for row in self.connection.execute(f"PRAGMA table_info({table})")]
            expected = [line.split()[0] for line in table_columns(table)]
            if columns != expected:
                raise corrupt(self.file, f"its table '{table}' has columns {columns}, expected {expected}")
        meta = dict(self.connection.execute("SELECT key, value FROM meta"))
        if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
            raise corrupt(self.file, f"it is {meta.get('format')} version {meta.get('version')}; this tool reads {FORMAT} version {VERSION}")
        try:
            stamp = ArtifactStamp(**json.loads(meta["artifact"]))
            if not (isinstance(stamp.dim, int) and 0 < stamp.dim <= MAX_DIM and isinstance(stamp.id, str)):
                raise ValueError(f"dim {stamp.dim!r}")
        except (KeyError, TypeError, ValueError) as error:
            raise corrupt(self.file, f"its artifact stamp is malformed ({type(error).__name__}: {error})") from None
        return stamp

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All of the block's writes, or none of them."""
        try:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")
        except sqlite3.OperationalError as error:
            raise IndexFileError(
                f"Cannot write the index {self.file}: {error}. What was saved before is kept; free some space "
                "or choose another --index, then run index again."
            ) from None

    def close(self) -> None:
        self.connection.close()

    # ---- what the indexer reads and writes ----------------------------------------------------

    def known_files(self) -> dict[str, tuple[int, int]]:
        """Every indexed path with its (size, mtime_ns)."""
        return {decode_path(path): (size, mtime) for path, size, mtime in self.connection.execute("SELECT path, size, mtime_ns FROM photos")}

    def start_run(self, root: str) -> int:
        """A run over `root`: the folder is indexed from now on, and what its last run left out is forgotten."""
        with self.transaction():
            count_changes(self.connection)  # an index made by an earlier version counts its changes from now on
            self.connection.execute("INSERT OR IGNORE INTO roots VALUES (?)", (encode_path(root),))
            self.connection.execute("DELETE FROM skipped WHERE root = ?", (encode_path(root),))
            cursor = self.connection.execute("INSERT INTO runs (root, started) VALUES (?, ?)", (encode_path(root), _now()))
        return cursor.lastrowid

    def finish_run(self, run: int) -> None:
        with self.transaction():
            self.connection.execute("UPDATE runs SET finished = ? WHERE id = ?", (_now(), run))

    def write(self, run: int, root: str, rows: Iterable[PhotoRow], removed: Iterable[str], skipped: Iterable[str],
              added: int = 0, updated: int = 0) -> None:
        """One batch in one transaction: new or changed photos, photos gone, what was left out (sentences)."""
        with self.transaction():
            self.connection.executemany(
                f"INSERT OR REPLACE INTO photos VALUES ({', '.join('?' * len(PHOTO_COLUMNS))})",
                ((encode_path(r.path), r.size, r.mtime_ns, r.time, int(r.captured), r.width, r.height, r.orientation,
                  np.ascontiguousarray(r.embedding, "<f2").tobytes()) for r in rows),
            )
            gone = [(encode_path(path),) for path in removed]
            self.connection.executemany("DELETE FROM photos WHERE path = ?", gone)
            self.connection.executemany("INSERT INTO skipped VALUES (?, ?)", ((encode_path(root), why) for why in skipped))
            self.connection.execute(
                "UPDATE runs SET added = added + ?, updated = updated + ?, removed = removed + ? WHERE id = ?",
                (added, updated, len(gone), run),
            )


    def count(self) -> int:
        return self.connection.execute("SELECT COUNT(*) FROM photos").fetchone()[0]

    # ---- what search reads ---------------------------------------------------------------------

    def load(self, previous: PhotoIndex | None = None) -> PhotoIndex:
        """Every photo as committed at one moment: the reads share one transaction, so an `index` run
        committing meanwhile (a running `serve` reloads) cannot change the count under the rows.

        With `previous` (this index loaded earlier), only rows it does not hold are read (the indexer replaces
        a changed row, never updates it), and none when the photos' state (schema.TRIGGERS) is unchanged.
        """
        self.connection.execute("BEGIN")
        try:
            return self._load(previous if previous is not None and previous.artifact == self.stamp else None)
        finally:
            self.connection.execute("COMMIT")

    def _load(self, previous: PhotoIndex | None) -> PhotoIndex:
        roots = [decode_path(row[0]) for row in self.connection.execute("SELECT path FROM roots ORDER BY rowid")]
        # Complete when the latest run over every folder finished; an earlier killed run was finished by a later one.
        unfinished = self.connection.execute(
            "SELECT COUNT(*) FROM runs AS r WHERE finished IS NULL AND id = (SELECT MAX(id) FROM runs WHERE root = r.root)"
        ).fetchone()[0]
        state = photos_state(self.connection)
        if previous is not None and state is not None and state == previous.state:
            # Only the runs or the skipped files changed: a run's start and end, about three commits in four.
            return replace(previous, roots=roots, complete=unfinished == 0)
        dim = self.stamp.dim
        bad = self.connection.execute("SELECT COUNT(*) FROM photos WHERE length(embedding) != ?", (2 * dim,)).fetchone()[0]
        if bad:
            raise corrupt(self.file, f"{bad} embeddings are not {dim} float16 values long")
        parts = self._changes(previous) if previous is not None and len(previous) else [self._rows("", (), self.count())]
        rowids, photos, vectors, int8 = assemble(parts, dim)
        return PhotoIndex(self.file, self.stamp, roots, unfinished == 0, photos, vectors, int8, rowids, state)

    def _changes(self, previous: PhotoIndex) -> list[PhotoRows]:
        """The rows of `previous` that are unchanged, and the others read anew; columns compared a chunk at once (a
        row loop held the interpreter 0.36 s at 100,000 photos; the listing read whole spread Python's small-object
        arenas, which the new rows' paths kept: 153 → 175 MB over 40 reloads at 100,000 photos, 154 → 155 in chunks).
        Paths too: SQLite gives a new row a removed last row's rowid, so a renamed photo can come back under its old
        rowid, size and mtime."""
        facts, known_paths, kept, fresh = previous.photos, np.array(previous.photos.paths, object), [], []
        listing = self.connection.execute("SELECT rowid, size, mtime_ns, path FROM photos ORDER BY rowid")
        while listed := listing.fetchmany(CHANGES_CHUNK):
            rowids, sizes, mtimes, paths = zip(*listed)
            rowids = np.array(rowids, np.int64)
            row = previous.rows_of(rowids)
            same = (row >= 0) & (facts.size[row] == sizes) & (facts.mtime_ns[row] == mtimes)
            same[same] = known_paths[row[same]] == np.array([decode_path(paths[i]) for i in np.flatnonzero(same)], object)
            kept.append(row[same])
            fresh += rowids[~same].tolist()
        parts = [PhotoRows.kept(previous, np.concatenate([np.empty(0, np.int64), *kept]), known_paths)]
        for start in range(0, len(fresh), 500):  # SQLite's limit on parameters is far above 500
            chunk = fresh[start : start + 500]
            parts.append(self._rows(f"WHERE rowid IN ({', '.join('?' * len(chunk))})", chunk, len(chunk)))
        return parts

    def _rows(self, where: str, parameters, count: int) -> PhotoRows:
        vectors = np.empty((count, self.stamp.dim), np.float16)
        rowids, paths, numbers = np.empty(count, np.int64), [], np.empty((count, 4), np.int64)
        rows = self.connection.execute(
            f"SELECT rowid, path, size, mtime_ns, time, captured, embedding FROM photos {where} ORDER BY rowid", parameters
        )
        for i, (rowid, path, size, mtime, moment, captured, embedding) in enumerate(rows):  # one row at a time in memory
            rowids[i], numbers[i] = rowid, (size, mtime, moment, captured)
            paths.append(decode_path(path))
            vectors[i] = np.frombuffer(embedding, "<f2")
        return PhotoRows(rowids, paths, numbers, vectors, int8_codes(vectors))

    def status(self) -> dict:
        """The index at a glance: photos, artifact, last run, skipped files."""
        last = self.connection.execute(
            "SELECT root, started, finished, added, updated, removed FROM runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        skipped = [row[0] for row in self.connection.execute("SELECT reason FROM skipped ORDER BY rowid")]
        return {
            "index": str(self.file),
            "photos": self.count(),
            "artifact": asdict(self.stamp),
            "roots": [decode_path(row[0]) for row in self.connection.execute("SELECT path FROM roots ORDER BY rowid")],
            "last_run": None if last is None else dict(
                zip(("root", "started", "finished", "added", "updated", "removed"), (decode_path(last[0]), *last[1:]))
            ),
            "skipped": skipped,
        }


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def load_index(index_dir: Path, previous: PhotoIndex | None = None) -> PhotoIndex:
    """Open the index in `index_dir` for searching: every embedding in memory (reusing `previous`'s unchanged rows)."""
    database = IndexDatabase(index_dir)
    try:
        return database.load(previous)
    finally:
        database.close()


def read_artifact(index_dir: Path) -> ArtifactStamp | None:
    """The artifact an index was made with; None when there is no index."""
    if not (Path(index_dir) / INDEX_FILE).is_file() and not (Path(index_dir) / LEGACY_FILE).exists():
        return None
    database = IndexDatabase(index_dir)
    database.close()
    return database.stamp

