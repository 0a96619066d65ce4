"""The calibration set of the int8 stages: photos and captions kept apart from the parity set.

Calibrating on the parity set would grade the scales on the data they were
fitted to. `converters/data/calibration/` holds its own photos (`images/`, see
SOURCES.md there) and caption-like phrases (`captions.txt`, made from jieba's
word list by `make_captions.py`). More image samples than photos are made
from random crops and mirror images of the photos, each preprocessed as
cn_clip preprocesses an image, with a fixed seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from converters.app.fsutil import sha256_file, sha256_text
from converters.app.preprocess import Transform, load_image
from converters.app.tokenizer import Tokenizer
from converters.data import CALIBRATION_SET_DIR
from converters.data.parity_set import DATA_IMAGE_SUFFIXES

SEED = 0
# A crop keeps at least this fraction of each side of the photo.
MIN_CROP_SIDE = 0.5


def calibration_photos(transform: Transform, directory: Path = CALIBRATION_SET_DIR) -> np.ndarray:
    """The photos whole, as the model's pixels: the first samples of `calibration_pixels`."""
    return transform.batch(_photos(directory))


def photos_digest(directory: Path = CALIBRATION_SET_DIR) -> str:
    """The photos' content: stress weights measure their BatchNorm statistics on them, so it is part of their digest."""
    return sha256_text(*(sha256_file(p) for p in _photo_files(directory)))


def _photos(directory: Path) -> list[Image.Image]:
    return [load_image(p) for p in _photo_files(directory)]


def _photo_files(directory: Path) -> list[Path]:
    return sorted(p for p in (directory / "images").iterdir() if p.suffix.lower() in DATA_IMAGE_SUFFIXES)


def calibration_pixels(count: int, transform: Transform, directory: Path = CALIBRATION_SET_DIR) -> np.ndarray:
    """`count` images as the model's pixels [count, 3, R, R]: the photos whole, then crops of them."""
    photos = _photos(directory)
    rng = np.random.default_rng(SEED)
    samples = []
    for index in range(count):
        photo = photos[index % len(photos)]
        round_ = index // len(photos)
        samples.append(photo if round_ == 0 else _crop(photo, rng, mirrored=round_ % 2 == 1))
    return transform.batch(samples)


def _crop(photo: Image.Image, rng: np.random.Generator, mirrored: bool) -> Image.Image:
    width, height = photo.size
    crop_w, crop_h = (int(side * rng.uniform(MIN_CROP_SIDE, 1.0)) for side in (width, height))
    left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    crop = photo.crop((left, top, left + crop_w, top + crop_h))
    return ImageOps.mirror(crop) if mirrored else crop


def calibration_token_ids(count: int, tokenizer: Tokenizer, directory: Path = CALIBRATION_SET_DIR) -> np.ndarray:
    """The first `count` captions as int64 token ids [count, context_length], padded with 0."""
    captions = (directory / "captions.txt").read_text(encoding="utf-8").splitlines()
    return tokenizer.encode([captions[i % len(captions)] for i in range(count)])
