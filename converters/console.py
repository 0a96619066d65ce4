"""What every command shares: one line for the person at the keyboard, and the options that mean the same everywhere.

Commands import from here, never from each other or from `converters.cli` (which imports the commands).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import click

# More threads than this only queue for the same cores: 100,000 once started about 9,700 threads
# (16 GB, load 2,200) before failing, and a process in that state ignored SIGTERM.
MAX_THREADS = 4 * (os.cpu_count() or 1)
THREADS = click.IntRange(0, MAX_THREADS)


def say(message: str) -> None:
    """One line for the person at the keyboard, on stderr (stdout carries results)."""
    click.echo(f"[cnclip] {message}", err=True)


optional_model_argument = click.argument("model", metavar="[MODEL]", required=False)


def bundle_option(help: str, *, required: bool = False, old_name: str | None = "--out"):
    """The bundle folder, `--bundle` in every command; `old_name` (what the command called it before 0.5.0) is kept as
    an alias so that scripts written for it still run (None: a command that never had another name for it)."""
    names = ("--bundle", old_name) if old_name else ("--bundle",)
    return click.option(
        *names, "bundle", type=click.Path(file_okay=False, path_type=Path), default=None, required=required,
        help=f"{help} ({old_name} is the older name of this option.)" if old_name else help,
    )


def is_url(location: str | Path) -> bool:
    """Whether a photo library, or a photo, is named by the URL of a filesystem fsspec opens (`s3://bucket/photos`).
    A `file://` URL is a local folder: it is listed and served with the local checks (no pipes, no links out)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def local_path(location: str | Path) -> Path:
    """A local folder given as a path or as a `file://` URL (of this machine: file://nas/share is refused)."""
    text = str(location)
    if not text.startswith("file://"):
        return Path(location)
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise click.BadParameter(f"{text} names a folder on {parts.netloc}; mount it here and give its local path.")
    return Path(url2pathname(parts.path))


class LibraryLocation(click.ParamType):
    """A photo library: an existing local folder, or a URL (see `is_url`), which is listed only when the command runs."""

    name = "folder or URL"

    def convert(self, value, param, ctx):
        if is_url(value):
            return str(value)
        return click.Path(exists=True, file_okay=False, path_type=Path).convert(str(local_path(value)), param, ctx)


library_argument = click.argument("photos", type=LibraryLocation())


def threads_option(default: int, what: str):
    return click.option(
        "--threads", type=THREADS, default=default, show_default=True,
        help=f"{what} threads (0: all cores; at most {MAX_THREADS}, 4 × the cores).",
    )
