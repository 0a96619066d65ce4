"""Finding photos under a folder and reading each one as the model's pixels and a capture time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from converters.app.bundle import Bundle
from converters.app.preprocess import ImageError, load_image

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


def find_photos(root: Path, suffixes: frozenset[str], skipped: list[str]) -> list[FoundFile]:
    """Image files under `root`, recursively, in a stable order; what cannot be listed goes to `skipped`."""
    found = []

    def note(error: OSError) -> None:
        skipped.append(f"{error.filename}: cannot list this folder: {error.strerror}.")

    for folder, folders, files in os.walk(root, onerror=note):
        # Hidden folders hold caches, thumbnails and app data (and often the index itself), not photos.
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in suffixes:
                continue
            path = os.path.join(folder, name)
            try:
                stat = os.stat(path)
            except OSError as error:
                skipped.append(f"{path}: cannot read its size and date: {error.strerror}.")
                continue
            found.append(FoundFile(path, stat.st_size, stat.st_mtime_ns))
    return found


def capture_time(image: Image.Image) -> datetime | None:
    """EXIF DateTimeOriginal as a naive local datetime, or None when absent or unreadable."""
    try:
        value = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.DateTimeOriginal)
        return datetime.strptime(str(value).strip("\0 ")[:19], "%Y:%m:%d %H:%M:%S") if value else None
    except Exception:  # EXIF in the wild is often malformed: such a photo is dated by its mtime instead.
        return None


def read_photo(found: FoundFile, bundle: Bundle) -> tuple[np.ndarray, datetime | None]:
    """One photo's model pixels and capture time; any reason it cannot be used is an ImageError."""
    image = load_image(found.path)
    try:
        # One photo at a time: a batch of full-size decoded photos would hold gigabytes.
        return bundle.pixels([image])[0], capture_time(image)
    except (OSError, ValueError) as error:
        raise ImageError(f"{found.path} cannot be converted to the model's pixels: {error}") from error
