"""Chinese-CLIP's image preprocessing without torch: the pixels `cn_clip.clip.image_transform` makes.

cn_clip resizes the PIL image as it comes (any mode) to a square with Pillow's
bicubic filter, and only then converts it to RGB; the order matters for
palette, alpha and 16-bit images, so it is kept. ToTensor's 1/255 and
Normalize are done in float32, in the same order, which makes the result
equal to cn_clip's bit for bit (tests/test_preprocess.py checks this).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from converters.errors import UserError

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
# Pillow's own default decompression-bomb threshold (about 270 MB decoded as RGB). Larger images are
# refused rather than decoded at reduced size with Image.draft: on JPEGs that changes the result by up
# to 2/255 per pixel (7/255 when the reduced image is less than twice the resolution), so it is no longer
# what cn_clip computes.
MAX_PIXELS = 89_478_485

_MEAN = np.array(MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.array(STD, dtype=np.float32).reshape(3, 1, 1)


class ImageError(UserError, ValueError):
    """An image file cannot be used: missing, not an image, truncated, or too large."""


def load_image(path: str | Path) -> Image.Image:
    """Decode the first frame of an image file, as stored (EXIF orientation is not applied, as in cn_clip)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        # Opening a FIFO would wait for a writer forever.
        raise ImageError(f"{path} is not a regular file (a folder, pipe, socket or device).")
    try:
        # The pixel limit is enforced below; Pillow's warning for the same images would only repeat it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.UnidentifiedImageError as error:
        what = "an empty file" if path.stat().st_size == 0 else "not an image Pillow can read"
        raise ImageError(f"{path} is {what}.") from error
    except Image.DecompressionBombError as error:
        raise ImageError(f"{path}: {error} The limit is {MAX_PIXELS:,} pixels; downscale the image first.") from error
    except OSError as error:
        raise ImageError(f"Cannot open {path}: {error.strerror or error}.") from error
    except Exception as error:  # Pillow's plugins fail on hostile headers with any exception type
        raise ImageError(f"{path} is not an image Pillow can read ({type(error).__name__}: {error}).") from error
    with image:
        _check_size(path, image.size)
        try:
            image.load()
        except Exception as error:  # truncated, corrupt, or content Pillow identifies but cannot decode
            raise ImageError(f"{path} is truncated or corrupt ({type(error).__name__}: {error}).") from error
    return image


def _check_size(path: Path, size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{path} is {width}×{height} = {width * height:,} pixels, above the limit of {MAX_PIXELS:,} "
            "(decoding it would take too much memory); downscale the image first."
        )


def resized_rgb(image: Image.Image, resolution: int) -> Image.Image:
    """The integer stage of the transform: the square RGB image before scaling and normalizing."""
    return image.resize((resolution, resolution), Image.Resampling.BICUBIC).convert("RGB")


def preprocess(image: Image.Image, resolution: int) -> np.ndarray:
    """One PIL image of any mode → float32 `[3, resolution, resolution]`."""
    pixels = np.asarray(resized_rgb(image, resolution), dtype=np.float32).transpose(2, 0, 1)
    return (pixels / np.float32(255) - _MEAN) / _STD


def preprocess_batch(images: Sequence[Image.Image], resolution: int) -> np.ndarray:
    """PIL images → float32 `[N, 3, resolution, resolution]` (NCHW)."""
    batch = np.empty((len(images), 3, resolution, resolution), dtype=np.float32)
    for slot, image in zip(batch, images):
        slot[...] = preprocess(image, resolution)
    return batch


def spec(resolution: int) -> dict:
    """What an app must reproduce to feed the image tower, as JSON-able facts."""
    return {
        "resolution": resolution,
        "layout": "NCHW",
        "dtype": "float32",
        "channel_order": "RGB",
        "frame": "the first frame of animated or multi-page files",
        "exif_orientation": "not applied, matching cn_clip: pixels are used as stored in the file",
        "resize": f"to exactly {resolution}x{resolution}: aspect ratio not kept, no crop",
        "interpolation": "bicubic (Pillow)",
        "pillow_bicubic": "antialiased (the kernel widens with the reduction), a = -0.5; Pillow resizes modes "
        "'1' and 'P' with nearest instead, and LA/RGBA with premultiplied alpha",
        "order": "resize in the file's own mode first, then convert('RGB'): palette expanded, alpha dropped "
        "without compositing",
        "scale": 1 / 255,
        "mean": list(MEAN),
        "std": list(STD),
        "formula": "(uint8 / 255 - mean) / std per channel, in float32",
        "max_pixels": MAX_PIXELS,
    }
