"""What the search tests share: reading an index database from outside, as another process would."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from converters.search.store import INDEX_FILE


def indexed_rows(index_dir: Path) -> int:
    """Photos committed so far; 0 while there is no database yet."""
    if not (index_dir / INDEX_FILE).exists():
        return 0
    try:
        with sqlite3.connect(index_dir / INDEX_FILE, timeout=0.1) as connection:
            return connection.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
    except sqlite3.Error:
        return 0


def integrity(index_dir: Path) -> str:
    with sqlite3.connect(index_dir / INDEX_FILE) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
