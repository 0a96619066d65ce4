"""The index database's schema and format: what `store` creates, and checks before it reads a row."""

from __future__ import annotations

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
