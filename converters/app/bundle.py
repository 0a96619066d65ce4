"""The torch-free bundle API: what a Python edge app, the search engine and the benchmark import.

    bundle = Bundle.open("artifacts/ViT-B-16")
    model = bundle.embedder("onnx-int8")      # any stage name: onnx-fp32, onnx-sim, ncnn-fp16, …
    image_vectors = model.embed_images(bundle.pixels([Image.open("a.jpg")]))
    text_vectors = model.embed_texts(bundle.token_ids(["海边的日落"]))

Every file (models, vocabulary) is checked against its sha256 in the
manifest before it is loaded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from converters.app.fsutil import sha256_text
from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.app.preprocess import Transform
from converters.app.runtimes import Embedder, TowerPair, open_tower
from converters.app.specs import TOWERS
from converters.app.tokenizer import Tokenizer
from converters.errors import ArtifactError, UserError

# The simplified fp32 ONNX towers: exact, and run wherever onnxruntime does.
DEFAULT_STAGE = "onnx-sim"

@dataclass
class Bundle:
    manifest: Manifest
    tokenizer: Tokenizer

    @classmethod
    def open(cls, path: str | Path) -> "Bundle":
        layout = BundleLayout(Path(path))
        manifest = Manifest.load(layout.manifest)
        return cls(manifest, manifest.text_tokenizer())

    @property
    def model(self) -> str:
        return self.manifest.model

    @property
    def resolution(self) -> int:
        return self.manifest.preprocess["resolution"]

    @property
    def transform(self) -> Transform:
        return self.manifest.image_transform()

    @property
    def embedding_dim(self) -> int:
        return self.manifest.embedding.dim

    def stages(self) -> list[str]:
        """The stages whose artifacts this bundle can run: both towers present."""
        return self.manifest.complete_stages()

    def _require(self, stage: str) -> None:
        if stage not in self.stages():
            raise ArtifactError(
                f"The bundle at {self.manifest.root} has no complete '{stage}' artifacts (both towers); it has: "
                f"{', '.join(self.stages()) or 'none'}."
            )

    def embedder(self, stage: str = DEFAULT_STAGE, threads: int = 0, gpu: bool = False) -> Embedder:
        """Both towers of `stage` (e.g. "onnx-int8") in their runtime; `threads=0` uses every core; `gpu`: an onnx
        stage on onnxruntime's CUDA provider."""
        self._require(stage)
        return TowerPair(*(open_tower(self.manifest.artifact(t, stage), threads, gpu) for t in TOWERS))

    def artifact_id(self, stage: str) -> str:
        """One sha256 naming both towers' files: embeddings made with different ids never mix."""
        self._require(stage)
        return sha256_text(*(f.sha256 for t in TOWERS for f in self.manifest.entry(t, stage).files))

    def pixels(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.transform.batch(images)

    def token_ids(self, texts: Sequence[str]) -> np.ndarray:
        """Padded ids; a text longer than the context is cut as cn_clip cuts it, with a warning."""
        texts = list(texts)
        counts = self.tokenizer.piece_counts(texts)
        for text, count in zip(texts, counts):
            if count == 0:
                raise QueryError(
                    f"The text {text!r} has no words once tokenized (it is empty, or only spaces and invisible "
                    "characters); write what to look for, e.g. 海边的日落."
                )
            if count > self.tokenizer.max_pieces:
                warnings.warn(
                    f"The text {text[:20]!r}… has {count} word pieces; only the first {self.tokenizer.max_pieces} "
                    "are used, as cn_clip does.",
                    TruncationWarning,
                    stacklevel=2,
                )
        return self.tokenizer.encode(texts)


class QueryError(UserError):
    """A query that cannot be searched: empty text, a bad date, an empty index."""


class TruncationWarning(UserWarning):
    """A text was longer than the context length and was cut."""
