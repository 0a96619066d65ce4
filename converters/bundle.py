"""The torch-free bundle API: what a Python edge app, the search engine and the benchmark import.

    bundle = Bundle.open("artifacts/ViT-B-16")
    model = bundle.embedder("onnx-int8")
    image_vectors = model.embed_images(bundle.pixels([Image.open("a.jpg")]))
    text_vectors = model.embed_texts(bundle.token_ids(["海边的日落"]))

Every artifact's files are checked against their sha256 in the manifest
before they are loaded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from converters.errors import ArtifactError, UserError
from converters.fsutil import sha256_text
from converters.layout import BundleLayout
from converters.manifest import Manifest
from converters.preprocess import preprocess_batch
from converters.runtimes import Embedder, TowerPair, open_tower
from converters.tokenizer import Tokenizer

# What an app asks for, and the pipeline stage whose artifacts answer it.
RUNTIME_STAGES = {
    "onnx": "simplify",
    "onnx-int8": "int8",
    "ncnn": "ncnn",  # fp16 weights and ncnn's default Options: what an app ships
    "ncnn-fp32": "ncnn-fp32",
    "ncnn-int8": "ncnn-int8",
}


@dataclass
class Bundle:
    manifest: Manifest
    tokenizer: Tokenizer

    @classmethod
    def open(cls, path: str | Path) -> "Bundle":
        layout = BundleLayout(Path(path))
        manifest = Manifest.load(layout.manifest)
        tokenizer = Tokenizer.from_vocab(layout.vocab, manifest.data["tokenizer"]["context_length"])
        return cls(manifest, tokenizer)

    @property
    def model(self) -> str:
        return self.manifest.data["model"]

    @property
    def resolution(self) -> int:
        return self.manifest.data["preprocess"]["resolution"]

    @property
    def embedding_dim(self) -> int:
        return self.manifest.data["embedding"]["dim"]

    def runtimes(self) -> list[str]:
        """The runtimes this bundle has artifacts for, both towers present."""
        stages = self.manifest.stages()
        return [name for name, stage in RUNTIME_STAGES.items() if stage in stages]

    def _stage(self, runtime: str) -> str:
        if runtime not in self.runtimes():
            raise ArtifactError(
                f"The bundle at {self.manifest.root} has no '{runtime}' artifacts; it has: "
                f"{', '.join(self.runtimes()) or 'none'}."
            )
        return RUNTIME_STAGES[runtime]

    def embedder(self, runtime: str = "onnx", threads: int = 0) -> Embedder:
        stage = self._stage(runtime)
        return TowerPair(*(open_tower(self.manifest.artifact(t, stage), threads) for t in ("visual", "text")))

    def artifact_id(self, runtime: str) -> str:
        """One sha256 naming both towers' files: embeddings made with different ids never mix."""
        stage = self._stage(runtime)
        return sha256_text(*(f["sha256"] for t in ("visual", "text") for f in self.manifest.entry(t, stage)["files"]))

    def pixels(self, images: Sequence[Image.Image]) -> np.ndarray:
        return preprocess_batch(images, self.resolution)

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
