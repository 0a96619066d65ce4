"""Command-line options that `index`, `search`, `serve` and `bench` share, declared once."""

from __future__ import annotations

import os
from pathlib import Path

import click

from converters.search.updater import DEFAULT_INDEX_DIR

# More threads than this only queue for the same cores: 100,000 once started about 9,700 threads
# (16 GB, load 2,200) before failing, and a process in that state ignored SIGTERM.
MAX_THREADS = 4 * (os.cpu_count() or 1)
THREADS = click.IntRange(0, MAX_THREADS)

index_option = click.option(
    "--index", "index_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_INDEX_DIR,
    show_default=True, help="Index directory (env CNCLIP_INDEX).",
)
artifacts_option = click.option(
    "--artifacts", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Bundle directory, e.g. artifacts/ViT-B-16 (default: the bundle the index was made with).",
)


def threads_option(default: int, what: str):
    return click.option(
        "--threads", type=THREADS, default=default, show_default=True,
        help=f"{what} threads (0: all cores; at most {MAX_THREADS}, 4 × the cores).",
    )
