"""Golden vectors: expected inputs and outputs for an app's own CI.

For a handful of the parity set's photos and captions, `golden.json` gives
the checksums of the preprocessed tensors, the token ids, and the embedding
each artifact produced, so an app can test its own preprocessing, tokenizer
and runtime against them. The photos are saved beside it as PNG, with the resized image each
should become.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

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
from converters.validate.fidelity import RESIZED_RGB_TOLERANCE, Embeddings

IMAGES = 4
CAPTIONS = 6
# Cosine an app's embedding must reach against the golden row of its stage. The rows come from this
# machine's runtimes; the same files elsewhere differ by summation order, fp16 arithmetic (ARMv8.2
# computes in fp16 where x86 does not: text cosine 0.99993 measured under qemu) and int8 kernels (ncnn
# built from source: 0.99981 on x86, 0.99969 on ARM against the wheel's row).
GOLDEN_COSINE_MIN = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.995, "int4": 0.995}


def _spread(count: int, total: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, total - 1, min(count, total))})


def golden_rows(parity_set: ParitySet) -> tuple[list[int], list[int]]:
    """The parity set's image and caption rows that become golden vectors: photos spread over the set, and the
    tallest one, on which Pillow 13 resizes columns first (a port that always goes rows first misses it)."""
    sizes = [Image.open(f).size for f in parity_set.image_files]
    tallest = max(range(len(sizes)), key=lambda row: sizes[row][1] / sizes[row][0])
    images = sorted({*_spread(IMAGES - 1, len(sizes)), tallest})
    return images, _spread(CAPTIONS, len(parity_set.captions))


def _rounded(vectors: np.ndarray) -> list[list[float]]:
    return [[float(f"{value:.7g}") for value in row] for row in vectors.astype(np.float32)]


def _lossless(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def write(manifest: Manifest, parity_set: ParitySet, embeddings: dict[str, Embeddings]) -> None:
    """`embeddings` maps "pytorch" and each stage name to that stage's parity-set embeddings."""
    layout = BundleLayout(manifest.root)
    image_rows, caption_rows = golden_rows(parity_set)
    own_folder(layout.golden_images)
    images = []
    for row in image_rows:
        # PNG, not the JPEG: every decoder gives a PNG's pixels exactly, while JPEG decoders differ by ±1.
        target = layout.golden_images / f"{parity_set.image_files[row].stem}.png"
        resized_file = target.with_suffix(".resized.png")
        with Image.open(parity_set.image_files[row]) as photo:
            photo.load()
            _lossless(photo, target)
            resized = parity_set.transform.resized_rgb(photo)
        _lossless(resized, resized_file)
        pixels = parity_set.pixels[row]
        images.append({
            "file": target.relative_to(layout.root).as_posix(),
            "sha256": sha256_file(target),
            "resized_rgb_file": resized_file.relative_to(layout.root).as_posix(),
            "resized_rgb_sha256": hashlib.sha256(np.asarray(resized).tobytes()).hexdigest(),
            "resized_rgb_tolerance": RESIZED_RGB_TOLERANCE,
            "pixels_sha256": hashlib.sha256(pixels.astype("<f4").tobytes()).hexdigest(),
            "pixels_shape": list(pixels.shape),
            "pixels_sum": float(pixels.astype(np.float64).sum()),
            "pixels_abs_max": float(np.abs(pixels).max()),
        })
    captions = []
    for row in caption_rows:
        ids = parity_set.token_ids[row]
        kept = np.flatnonzero(ids)
        captions.append({
            "text": parity_set.captions[row],
            "token_ids": ids.tolist(),
            "unpadded_ids": ids[kept].tolist(),
            "position_ids": kept.tolist(),
        })
    atomic_write_json(layout.golden, {
        "model": manifest.model,
        "how_to_use": (
            "Images: decode `file` (PNG: the same pixels everywhere) and preprocess it as preprocess.json says; the "
            "uint8 RGB image after the resize should equal `resized_rgb_file` within `resized_rgb_tolerance` per "
            "channel value (resized_rgb_sha256 holds only for a bit-exact port of Pillow's bicubic), and the float32 "
            "NCHW tensor matches pixels_sha256 only then too; pixels_sum and pixels_abs_max check it loosely. "
            "Texts: your tokenizer must give `token_ids` exactly. ONNX text towers take `token_ids` as int64 [1, L] "
            "(padded or not); ncnn text towers take in0 = `unpadded_ids` and in1 = `position_ids`, both int32. "
            "Embeddings are unnormalized, except the rows of a stage whose output role is normalized_embedding "
            "(rknn-int8's): the cosine between yours and the row of your stage must reach that stage's "
            "`cosine_min`. Run one sample per call, as the rows were made."
        ),
        "images": images,
        "captions": captions,
        "embeddings": {
            name: {
                "images": _rounded(e.images[image_rows]),
                "texts": _rounded(e.texts[caption_rows]),
                **({} if name == "pytorch" else {"cosine_min": GOLDEN_COSINE_MIN[manifest.entry("text", name).artifact.precision]}),
            }
            for name, e in embeddings.items()
        },
    })
    manifest.record_file("golden", layout.golden)
    for image in images:
        for key in ("file", "resized_rgb_file"):
            manifest.record_file(f"golden_image:{image[key]}", layout.root / image[key])
