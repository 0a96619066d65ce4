"""The facts of a bundle that are not models: weights, embedding, tokenizer, preprocessing.

They are written at the start of every conversion: into the manifest, and as
files beside the models (vocabulary, tokenizer and preprocessing specs) that
the manifest lists with sha256, so an app build needs nothing but the folder.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Callable

from converters import preprocess
from converters.config import ModelConfig
from converters.fsutil import atomic_write_bytes, atomic_write_text, sha256_file
from converters.layout import BundleLayout
from converters.manifest import Manifest
from converters.tokenizer import Tokenizer


def cn_clip_vocab() -> Path:
    """cn_clip's vocab.txt, located without importing cn_clip (which imports torch)."""
    spec = importlib.util.find_spec("cn_clip")
    return Path(next(iter(spec.submodule_search_locations))) / "clip" / "vocab.txt"


def record(manifest: Manifest, config: ModelConfig, source, logit_scale: Callable[[], float]) -> None:
    layout = BundleLayout(manifest.root)
    if not layout.vocab.is_file() or sha256_file(layout.vocab) != sha256_file(cn_clip_vocab()):
        atomic_write_bytes(layout.vocab, cn_clip_vocab().read_bytes())
    tokenizer_spec = Tokenizer.from_vocab(layout.vocab, config.context_length).spec()
    preprocess_spec = preprocess.spec(config.image_resolution)
    previous = manifest.data.get("embedding", {})
    manifest.set("checkpoint", {
        "source": "random" if source.path is None else str(source.path),
        "description": source.description,
        "sha256": source.digest,
    })
    manifest.set("embedding", {
        "dim": config.architecture.embed_dim,
        "normalized": False,
        "note": "Outputs are unnormalized, as cn_clip's encode_image/encode_text return them; L2-normalize before "
        "comparing, and multiply cosine similarities by logit_scale for CLIP logits.",
        "logit_scale": previous.get("logit_scale") or logit_scale(),
    })
    manifest.set("preprocess", preprocess_spec)
    manifest.set("tokenizer", tokenizer_spec)
    write_json(layout.tokenizer_spec, tokenizer_spec)
    write_json(layout.preprocess_spec, preprocess_spec)
    for role, path in (("vocab", layout.vocab), ("tokenizer_spec", layout.tokenizer_spec), ("preprocess_spec", layout.preprocess_spec)):
        manifest.record_file(role, path)


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
