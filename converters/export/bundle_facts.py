"""The facts of a bundle that are not models: weights, embedding, tokenizer, preprocessing.

They are written at the start of every conversion: into the manifest, and as
files beside the models (vocabulary, tokenizer and preprocessing specs) that
the manifest lists with sha256, so an app build needs nothing but the folder.
"""

from __future__ import annotations

import importlib.metadata
from typing import Callable

from converters.app.fsutil import atomic_write_bytes, atomic_write_json
from converters.app.layout import BundleLayout
from converters.app.manifest import CheckpointRecord, EmbeddingFacts, Manifest
from converters.app.tokenizer import Tokenizer
from converters.export.config import ModelConfig

# The libraries whose versions decide what the files hold and how parity ran them.
# Pillow too: its resize decides the golden images (13.0 reordered the two passes for some sizes).
TOOLS = ("cnclip-converters", "ncnn", "pnnx", "onnxruntime", "onnx", "onnxsim", "torch", "cn_clip", "transformers",
         "pillow")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def record(manifest: Manifest, config: ModelConfig, source, logit_scale: Callable[[], float]) -> None:
    layout = BundleLayout(manifest.root)
    if not layout.vocab.is_file() or layout.vocab.read_bytes() != source.vocab:
        atomic_write_bytes(layout.vocab, source.vocab)
    tokenizer = Tokenizer.from_vocab(layout.vocab, config.context_length)
    tokenizer_spec = tokenizer.spec()
    preprocess_spec = source.transform.spec()
    manifest.checkpoint = CheckpointRecord(
        str(source.path) if source.path else "stress" if source.stress else "random", source.description, source.digest
    )
    # The logit scale is read from the model only when no earlier run of the same weights recorded it:
    # that spares loading a large checkpoint when every stage is up to date.
    scale = manifest.embedding.logit_scale if manifest.embedding else logit_scale()
    manifest.embedding = EmbeddingFacts(config.architecture.embed_dim, scale)
    manifest.preprocess = preprocess_spec
    manifest.tools = {name: _version(name) for name in TOOLS}
    manifest.tokenizer = tokenizer_spec
    atomic_write_json(layout.tokenizer_spec, tokenizer_spec)
    atomic_write_json(layout.preprocess_spec, preprocess_spec)
    atomic_write_bytes(layout.tokenizer_hf, tokenizer.hf_json().encode("utf-8"))
    for role, path in (("vocab", layout.vocab), ("tokenizer_spec", layout.tokenizer_spec),
                       ("tokenizer_hf", layout.tokenizer_hf), ("preprocess_spec", layout.preprocess_spec)):
        manifest.record_file(role, path)
