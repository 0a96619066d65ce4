"""The index database's schema and format: what `store` creates, and checks before it reads a row."""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import sys
from pathlib import Path

INDEX_FILE = "index.sqlite"
# The single-file format of earlier versions; such an index is refused with how to rebuild it.
LEGACY_FILE = "index.cnclip"
FORMAT = "cnclip-photo-index"
VERSION = 3
MAX_DIM = 65_536
PHOTO_COLUMNS = ("path", "size", "mtime_ns", "time", "captured", "width", "height", "orientation", "embedding")
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE roots (path BLOB PRIMARY KEY) STRICT;
CREATE TABLE photos (
    path BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, time INTEGER NOT NULL,
    captured INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, orientation INTEGER NOT NULL,
    embedding BLOB NOT NULL
) STRICT;
CREATE TABLE runs (
    id INTEGER PRIMARY KEY, root BLOB NOT NULL, started TEXT NOT NULL, finished TEXT,
    added INTEGER NOT NULL DEFAULT 0, updated INTEGER NOT NULL DEFAULT 0, removed INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE skipped (root BLOB NOT NULL, reason TEXT NOT NULL) STRICT;
"""

# Counted by SQLite on every change to the photos table, whichever program makes it: a running server reads
# the photos again only when the count moved (a run's start and end, and the skipped files, are commits too).
# With GENERATION, a random id each database is made with (or first given by a writer of this version), the
# count names one state of the photos: a rebuilt index starts counting again. Writers add both to an index
# made before them; until then a server compares every row.
PHOTOS_CHANGES, GENERATION = "photos_changes", "generation"
TRIGGER_NAMES = {event: f"photos_{event.lower()}" for event in ("INSERT", "UPDATE", "DELETE")}
TRIGGERS = tuple(
    f"""CREATE TRIGGER IF NOT EXISTS {name} AFTER {event} ON photos BEGIN
    INSERT INTO meta VALUES ('{PHOTOS_CHANGES}', '1')
    ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT); END"""
    for event, name in TRIGGER_NAMES.items()
)

def table_columns(table: str) -> list[str]:
    body = SCHEMA.split(f"CREATE TABLE {table} (")[1].split(") STRICT;")[0]
    return [part.strip() for part in body.replace("\n", " ").split(",") if part.strip()]


def count_changes(connection: sqlite3.Connection) -> None:
    """Make the database count its photos' changes (TRIGGERS), if it does not yet; inside a write transaction."""
    for trigger in TRIGGERS:
        connection.execute(trigger)
    connection.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (GENERATION, secrets.token_hex(8)))


def photos_state(connection: sqlite3.Connection) -> str | None:
    """Which state the photos table is in ("generation:count"), or None when the database does not count changes."""
    names = tuple(TRIGGER_NAMES.values())
    triggers = connection.execute(
        f"SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'photos' "
        f"AND name IN ({', '.join('?' * len(names))})", names
    ).fetchone()[0]
    meta = dict(connection.execute("SELECT key, value FROM meta WHERE key IN (?, ?)", (GENERATION, PHOTOS_CHANGES)))
    if triggers != len(names) or GENERATION not in meta:
        return None
    return f"{meta[GENERATION]}:{meta.get(PHOTOS_CHANGES, '0')}"


FILESYSTEM_ENCODING = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())


def encode_path(path: str) -> bytes:
    """Paths are stored as the bytes the file system has: names need not be UTF-8."""
    return os.fsencode(path)


def decode_path(path: bytes) -> str:
    return path.decode(*FILESYSTEM_ENCODING)  # os.fsdecode without its checks, a third of a reload's time at 100,000 photos


def remove_database(file: Path) -> None:
    """Delete a closed database and SQLite's journal beside it (a run that made it failed before its first photo)."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            file.with_name(file.name + suffix).unlink(missing_ok=True)
