"""Chinese-CLIP's image preprocessing without torch: the pixels `cn_clip.clip.image_transform` makes,
or, for a Hugging Face checkpoint, those its ChineseCLIPImageProcessor makes.

cn_clip resizes the PIL image as it comes (any mode) to a square with Pillow's
bicubic filter, and only then converts it to RGB; the order matters for
palette, alpha and 16-bit images, so it is kept. ToTensor's 1/255 and
Normalize are done in float32, in the same order, which makes the result
equal to cn_clip's bit for bit (tests/app/test_preprocess.py checks this).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

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



class ImageError(UserError, ValueError):
    """An image file cannot be used: missing, not an image, truncated, or too large."""


def load_image(path: str | Path, opened: BinaryIO | None = None) -> Image.Image:
    """Decode the first frame of an image file, as stored (EXIF orientation is not applied, as in cn_clip).

    `opened`: the file already opened elsewhere (a photo on S3); `path` then only names it in errors.
    """
    if opened is None:
        path = Path(path)
        if path.exists() and not path.is_file():
            # Opening a FIFO would wait for a writer forever.
            raise ImageError(f"{path} is not a regular file (a folder, pipe, socket or device).")
    try:
        # The pixel limit is enforced below; Pillow's warning for the same images would only repeat it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path if opened is None else opened)
    except Image.UnidentifiedImageError as error:
        empty = (path.stat().st_size if opened is None else opened.seek(0, io.SEEK_END)) == 0
        what = "an empty file" if empty else "not an image Pillow can read"
        raise ImageError(f"{path} is {what}.") from error
    except Image.DecompressionBombError as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(found.group(1)):,} pixels" if found else f"more than {2 * MAX_PIXELS:,} pixels"
        raise ImageError(
            f"{path} is {size}, above the limit of {MAX_PIXELS:,} (decoding it would take too much memory); "
            "downscale the image first."
        ) from error
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


@dataclass(frozen=True)
class Transform:
    """How a checkpoint wants its pixels: cn_clip's square resize, or a Hugging Face processor's crop.

    - `square` (cn_clip.clip.image_transform): resize the image in its own mode to resolution ×
      resolution (aspect not kept, no crop), then convert to RGB.
    - `shortest_edge_center_crop` (ChineseCLIPImageProcessor): convert to RGB, resize so the
      shorter side is `shortest_edge` (aspect kept), then cut the centre resolution × resolution.
    Both use Pillow's bicubic filter, then (u8 / 255 - mean) / std in float32, NCHW.
    """

    resolution: int
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    resize: Literal["square", "shortest_edge_center_crop"] = "square"
    shortest_edge: int | None = None

    def resized_rgb(self, image: Image.Image) -> Image.Image:
        """The integer stage of the transform: the RGB image the model sees, before scaling and normalizing."""
        if self.resize == "square":
            return image.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC).convert("RGB")
        rgb = image.convert("RGB")
        width, height = rgb.size
        short, long = sorted((width, height))
        scaled = (self.shortest_edge, int(self.shortest_edge * long / short))
        rgb = rgb.resize(scaled if width <= height else scaled[::-1], Image.Resampling.BICUBIC)
        left, top = (rgb.width - self.resolution) // 2, (rgb.height - self.resolution) // 2
        return rgb.crop((left, top, left + self.resolution, top + self.resolution))

    def pixels(self, image: Image.Image) -> np.ndarray:
        """One PIL image of any mode → float32 `[3, resolution, resolution]`."""
        mean = np.array(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.array(self.std, dtype=np.float32).reshape(3, 1, 1)
        values = np.asarray(self.resized_rgb(image), dtype=np.float32).transpose(2, 0, 1)
        return (values / np.float32(255) - mean) / std

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images → float32 `[N, 3, resolution, resolution]` (NCHW)."""
        batch = np.empty((len(images), 3, self.resolution, self.resolution), dtype=np.float32)
        for slot, image in zip(batch, images):
            slot[...] = self.pixels(image)
        return batch

    def spec(self) -> dict:
        """What an app must reproduce to feed the image tower, as JSON-able facts (preprocess.json)."""
        if self.resize == "square":
            resize = f"to exactly {self.resolution}x{self.resolution}: aspect ratio not kept, no crop"
            order = "resize in the file's own mode first, then convert('RGB'): palette expanded, alpha dropped without compositing"
        else:
            resize = (f"the shorter side to {self.shortest_edge} (the longer to int({self.shortest_edge} × long / short)), "
                      f"then the centre {self.resolution}x{self.resolution}: left = (width - {self.resolution}) // 2, "
                      f"top = (height - {self.resolution}) // 2")
            order = "convert('RGB') first, then resize and crop"
        return {
            "resolution": self.resolution,
            "layout": "NCHW",
            "dtype": "float32",
            "channel_order": "RGB",
            "frame": "the first frame of animated or multi-page files",
            "exif_orientation": "not applied, matching cn_clip and transformers: pixels are used as stored in the file",
            "resize_mode": self.resize,
            "shortest_edge": self.shortest_edge,
            "resize": resize,
            "interpolation": "bicubic (Pillow)",
            "pillow_bicubic": "antialiased (the kernel widens with the reduction), a = -0.5; Pillow resizes modes "
            "'1' and 'P' with nearest instead, and LA/RGBA with premultiplied alpha",
            "order": order,
            "scale": 1 / 255,
            "mean": list(self.mean),
            "std": list(self.std),
            "formula": "(uint8 / 255 - mean) / std per channel, in float32",
            "max_pixels": MAX_PIXELS,
        }

    @classmethod
    def from_spec(cls, spec: dict) -> "Transform":
        return cls(spec["resolution"], tuple(spec["mean"]), tuple(spec["std"]), spec.get("resize_mode", "square"),
                   spec.get("shortest_edge"))
