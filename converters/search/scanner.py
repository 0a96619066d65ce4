"""Finding photos under a folder and reading each one as the model's pixels and a capture time."""

from __future__ import annotations

import os
import stat
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
    image = load_image(found.path)
    try:
        # One photo at a time: a batch of full-size decoded photos would hold gigabytes.
        return PhotoRead(bundle.pixels([image])[0], capture_time(image), *image.size, _orientation(image))
    except Exception as error:  # a decoder may fail in any way on a damaged file: that file is skipped
        raise ImageError(f"{found.path} cannot be converted to the model's pixels: {error}") from error


def _orientation(image: Image.Image) -> int:
    try:
        value = int(image.getexif().get(ExifTags.Base.Orientation, 0))
    except Exception:  # malformed EXIF: as if there were none
        return 0
    return value if 1 <= value <= 8 else 0
