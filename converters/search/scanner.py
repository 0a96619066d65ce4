"""Finding photos under a folder and reading each one as the model's pixels and a capture time.

A library is a local folder, or a URL of any filesystem fsspec opens (`s3://bucket/photos` with s3fs
installed and credentials where fsspec's backend looks for them): `embed` lists it and its Ray tasks read
from it, and the index names each photo by its URL.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image

from converters.app.bundle import Bundle
from converters.app.preprocess import ImageError, load_image
from converters.console import is_url, local_path
from converters.errors import UserError

REMOTE_BLOCK = 1 << 20  # bytes read from a URL at a time
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
HEIF_SUFFIXES = frozenset({".heic", ".heif"})


def image_suffixes() -> frozenset[str]:
    """The suffixes indexed; HEIC and HEIF only where pillow-heif is installed to decode them."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return IMAGE_SUFFIXES
    register_heif_opener()
    return IMAGE_SUFFIXES | HEIF_SUFFIXES


@dataclass(frozen=True)
class FoundFile:
    path: str
    size: int
    mtime_ns: int


def find_photos(root: Path, suffixes: frozenset[str], skipped: list[str], exclude: Path | None = None) -> list[FoundFile]:
    """Regular image files under `root`, recursively, in a stable order; what is left out goes to `skipped`.

    Symlinked folders are not followed (a link back up the tree would loop forever), and each is
    named in `skipped`; a symlink to a file inside `root` is read like the file, one to a file
    elsewhere is left out. The folder `exclude` (the index's own, which holds thumbnails) is not entered. Anything that is not a regular file (a FIFO would block the reader
    forever, a device would never end) is left out.
    """
    found = []
    real_root = Path(os.path.realpath(root))
    excluded = os.path.realpath(exclude) if exclude is not None else None

    def note(error: OSError) -> None:
        skipped.append(f"{error.filename}: cannot list this folder: {error.strerror}.")

    for folder, folders, files in os.walk(root, onerror=note):
        for name in sorted(folders):
            if not name.startswith(".") and os.path.islink(os.path.join(folder, name)):
                skipped.append(f"{os.path.join(folder, name)}: a symlinked folder, not followed; index its target itself.")
        # Hidden folders hold caches, thumbnails and app data (and often the index itself), not photos.
        folders[:] = sorted(name for name in folders
                            if not name.startswith(".") and os.path.realpath(os.path.join(folder, name)) != excluded)
        for name in sorted(files):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in suffixes:
                continue
            path = os.path.join(folder, name)
            try:
                info = os.stat(path)
            except OSError as error:
                skipped.append(f"{path}: cannot read its size and date: {error.strerror}.")
                continue
            if not stat.S_ISREG(info.st_mode):
                skipped.append(f"{path}: not a regular file (a pipe, socket or device), left out.")
                continue
            if not Path(os.path.realpath(path)).is_relative_to(real_root):
                # `serve` shows only files inside indexed folders, so such a photo could never be opened there.
                skipped.append(f"{path}: a link to a file outside {root}, left out; index the folder it is in.")
                continue
            found.append(FoundFile(path, info.st_size, _int64(info.st_mtime_ns)))
    return found


def library_root(location: str | Path) -> str:
    """How the index names a library: a local folder's resolved path, or its URL as its photos' URLs begin."""
    if not is_url(location):
        return str(local_path(location).resolve())
    fs, root = _filesystem(str(location))
    # The listing names keys without doubled slashes or dot folders: so must the root their paths begin with.
    return fs.unstrip_protocol(posixpath.normpath(root) if root.strip("/") else root.rstrip("/"))


def find_photos_at(url: str, suffixes: frozenset[str]) -> list[FoundFile]:
    """The image files under `url`, recursively, in a stable order; names beginning with a dot are left out
    at any depth, as `find_photos` leaves them out. Sizes and dates come from the listing (on S3, one request
    per thousand files), not from a request per file. Nothing there is an empty list: a bucket emptied since
    the last run."""
    fs, root = _filesystem(url)
    try:
        fs.invalidate_cache()  # the process's cached listings of an earlier run (in a test, or a notebook)
        if fs.isfile(root):
            raise UserError(f"{url} is a file: give the folder it is in (the prefix of the photos' keys).")
        listing = fs.find(root, detail=True, withdirs=False)
    except UserError:
        raise
    except Exception as error:  # a backend fails in its own ways: no credentials, no such bucket, no network
        raise UserError(f"Cannot list {url}: {type(error).__name__}: {error}") from error
    found = []
    prefix = root.rstrip("/") + "/"
    for key in sorted(listing):
        under = key.removeprefix(prefix)
        if any(part.startswith(".") for part in under.split("/")) or os.path.splitext(key)[1].lower() not in suffixes:
            continue
        found.append(FoundFile(fs.unstrip_protocol(key), int(listing[key]["size"]), _int64(_modified_ns(listing[key], url))))
    return found


def _filesystem(url: str):
    try:
        from fsspec.core import url_to_fs
    except ImportError as error:
        raise UserError(f"Reading {url} needs fsspec and its package for the protocol: pip install 'cnclip-converters[s3]' "
                        "for s3://.") from error
    try:
        fs, path = url_to_fs(url)
    except (ImportError, ValueError) as error:  # fsspec says which package a protocol needs
        raise UserError(f"Cannot open {url}: {error}") from error
    except Exception as error:  # some backends connect at once (ftp://, sftp://) and fail in their own ways
        raise RemoteReadError(f"Cannot open {url}: {type(error).__name__}: {error}") from error
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)  # e.g. ("s3", "s3a")
    if protocols & {"file", "local"}:
        raise UserError(f"{url} names this machine's own files: give the folder as a path (or a file:// URL), which "
                        "is listed with the local checks (no pipes, no links out of the folder).")
    if protocols & {"http", "https"}:
        raise UserError(f"{url} is a web address, whose pages list no sizes or dates to tell a changed photo by: "
                        "give a folder (a mounted share) or a storage URL such as s3://bucket/photos.")
    return fs, path


# The listing's modification time, under the key each fsspec backend gives it (s3fs: LastModified; the
# in-memory one: created; others by their code); with the size it tells what changed since the last run.
_MODIFIED_KEYS = ("mtime", "LastModified", "last_modified", "updated", "created")


def _modified_ns(info: dict, url: str) -> int:
    for key in _MODIFIED_KEYS:
        value = info.get(key)
        if isinstance(value, str):
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if isinstance(value, datetime):
            return round(value.timestamp() * 1e9)
        if isinstance(value, (int, float)):
            return round(value * 1e9)
    raise UserError(f"{url}'s listing gives no modification time for {info.get('name')}, so a changed photo could not be "
                    "told from an unchanged one; copy the library to a filesystem that keeps one.")


def _int64(value: int) -> int:
    # ext4 keeps times up to the year 2446; int64 nanoseconds, as the index stores them, end in 2262.
    # A clamped time still tells a changed file from an unchanged one, run after run.
    return min(max(value, -(2**63)), 2**63 - 1)


def capture_time(image: Image.Image) -> datetime | None:
    """EXIF DateTimeOriginal as a naive local datetime, or None when absent or unreadable."""
    try:
        value = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.DateTimeOriginal)
        return datetime.strptime(str(value).strip("\0 ")[:19], "%Y:%m:%d %H:%M:%S") if value else None
    except Exception:  # EXIF in the wild is often malformed: such a photo is dated by its mtime instead.
        return None


@dataclass(frozen=True)
class PhotoRead:
    pixels: np.ndarray  # the model's input
    taken: datetime | None  # EXIF capture time
    width: int
    height: int
    orientation: int  # EXIF orientation 1–8 as stored (not applied to the pixels, as in cn_clip); 0 when absent


def read_photo(found: FoundFile, bundle: Bundle) -> PhotoRead:
    """One photo's model pixels and facts; any reason it cannot be used is an ImageError."""
    image = load_photo(found.path)
    try:
        # One photo at a time: a batch of full-size decoded photos would hold gigabytes.
        return PhotoRead(bundle.pixels([image])[0], capture_time(image), *image.size, _orientation(image))
    except Exception as error:  # a decoder may fail in any way on a damaged file: that file is skipped
        raise ImageError(f"{found.path} cannot be converted to the model's pixels: {error}") from error


def load_photo(path: str) -> Image.Image:
    """A library's photo decoded as stored: a local file, or one at a URL, read through fsspec."""
    if not is_url(path):
        return load_image(path)
    with open_remote(path) as remote:  # read as Pillow asks, not whole: the pixel limit comes first
        return load_image(path, remote)


class RemoteReadError(UserError):
    """The filesystem behind a URL did not answer as it should (the network, the endpoint, the credentials): not the
    photo's fault, so `index` stops rather than dropping its row, and `serve` says so rather than "not found"."""

    status_code = 502


def open_remote(url: str) -> BinaryIO:
    """A photo at a URL, opened for reading: ImageError when it is not there (or not for us), RemoteReadError when
    the filesystem fails."""
    fs, path = _filesystem(url)
    try:
        # fsspec would look a file up in a listing it cached when it first opened one in that folder, and miss the
        # files added since: `serve` runs for months.
        fs.invalidate_cache(path)
        # Blocks of REMOTE_BLOCK: s3fs's default of 50 MiB would fetch a whole photo before the decoder reads its
        # size, and hold that much for each photo `serve` streams.
        return fs.open(path, "rb", block_size=REMOTE_BLOCK)
    except (FileNotFoundError, PermissionError) as error:  # deleted since the listing, or not ours to read
        raise ImageError(f"Cannot read {url}: {type(error).__name__}: {error}") from error
    except Exception as error:  # a backend fails in its own ways
        raise RemoteReadError(f"Cannot read {url}: {type(error).__name__}: {error}. Check the connection and the "
                              "credentials, then run again: what was saved is kept.") from error


def _orientation(image: Image.Image) -> int:
    try:
        value = int(image.getexif().get(ExifTags.Base.Orientation, 0))
    except Exception:  # malformed EXIF: as if there were none
        return 0
    return value if 1 <= value <= 8 else 0
