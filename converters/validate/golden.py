"""Golden vectors: expected inputs and outputs for an app's own CI.

For a handful of the parity set's photos and captions, `golden.json` gives
the checksums of the preprocessed tensors, the token ids, and the embedding
each artifact produced, so an app can test its own preprocessing, tokenizer
and runtime against them. The photos are copied beside it.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from converters.app.fsutil import (
    atomic_write_bytes,
    atomic_write_json,
    own_folder,
    sha256_file,
)
from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.data.parity_set import ParitySet
from converters.validate.metrics import Embeddings

IMAGES = 4
CAPTIONS = 6


def _spread(count: int, total: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, total - 1, min(count, total))})


def _rounded(vectors: np.ndarray) -> list[list[float]]:
    return [[float(f"{value:.7g}") for value in row] for row in vectors.astype(np.float32)]


def write(manifest: Manifest, parity_set: ParitySet, embeddings: dict[str, Embeddings]) -> None:
    """`embeddings` maps "pytorch" and each stage name to that stage's parity-set embeddings."""
    layout = BundleLayout(manifest.root)
    image_rows = _spread(IMAGES, len(parity_set.image_files))
    caption_rows = _spread(CAPTIONS, len(parity_set.captions))
    own_folder(layout.golden_images)
    images = []
    for row in image_rows:
        source = parity_set.image_files[row]
        target = layout.golden_images / source.name
        atomic_write_bytes(target, source.read_bytes())
        pixels = parity_set.pixels[row]
        with Image.open(target) as image:
            resized = np.asarray(parity_set.transform.resized_rgb(image))
        images.append({
            "file": target.relative_to(layout.root).as_posix(),
            "sha256": sha256_file(target),
            "resized_rgb_sha256": hashlib.sha256(resized.tobytes()).hexdigest(),
            "pixels_sha256": hashlib.sha256(pixels.astype("<f4").tobytes()).hexdigest(),
            "pixels_shape": list(pixels.shape),
            "pixels_sum": float(pixels.astype(np.float64).sum()),
            "pixels_abs_max": float(np.abs(pixels).max()),
        })
    captions = [
        {"text": parity_set.captions[row], "token_ids": parity_set.token_ids[row].tolist()} for row in caption_rows
    ]
    atomic_write_json(layout.golden, {
        "model": manifest.model,
        "how_to_use": (
            "resized_rgb_sha256 is the uint8 RGB image after the bicubic resize (bit-exact with Pillow); "
            "pixels_sha256 the float32 little-endian NCHW tensor after normalization. Embeddings are unnormalized: "
            "compare an app's output with cosine similarity against the row of its stage, within that "
            "stage's parity tolerance (parity.json)."
        ),
        "images": images,
        "captions": captions,
        "embeddings": {
            name: {"images": _rounded(e.images[image_rows]), "texts": _rounded(e.texts[caption_rows])}
            for name, e in embeddings.items()
        },
    })
    manifest.record_file("golden", layout.golden)
    for image in images:
        manifest.record_file(f"golden_image:{image['file']}", layout.root / image["file"])
