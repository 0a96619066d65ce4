"""The parity set: real photographs and Chinese captions, as model inputs.

It lives in `converters/data/parity/` (`images/*.jpg`, `captions.json`) and is
turned into tensors with the same torch-free preprocessing and tokenizer an
app uses, so that parity measures the runtimes and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.app.fsutil import sha256_file, sha256_text
from converters.app.preprocess import Transform, load_image
from converters.app.tokenizer import Tokenizer

DATA_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class ParitySet:
    image_files: tuple[Path, ...]
    captions: tuple[str, ...]
    transform: Transform
    pixels: np.ndarray
    token_ids: np.ndarray
    digest: str

    def summary(self) -> dict:
        return {"images": len(self.image_files), "captions": len(self.captions), "sha256": self.digest}


def load_parity_set(directory: Path, transform: Transform, tokenizer: Tokenizer) -> ParitySet:
    image_files = tuple(sorted(p for p in (directory / "images").iterdir() if p.suffix.lower() in DATA_IMAGE_SUFFIXES))
    captions = tuple(entry["text"] for entry in json.loads((directory / "captions.json").read_text("utf-8")))
    pixels = transform.batch([load_image(p) for p in image_files])
    token_ids = tokenizer.encode(list(captions))
    digest = sha256_text(
        json.dumps(transform.spec(), sort_keys=True),
        str(tokenizer.context_length),
        *(sha256_file(p) for p in image_files),
        sha256_file(directory / "captions.json"),
    )
    return ParitySet(image_files, captions, transform, pixels, token_ids, digest)
