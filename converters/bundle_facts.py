"""The facts of a bundle that are not artifacts: weights, embedding, tokenizer, preprocessing.

They are written into the manifest at the start of every conversion, and the
tokenizer vocabulary is copied beside the models, so an app build needs
nothing but the bundle folder.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Callable

from converters import preprocess
from converters.config import ModelConfig
from converters.fsutil import sha256_file
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
        shutil.copyfile(cn_clip_vocab(), layout.vocab)
    tokenizer = Tokenizer.from_vocab(layout.vocab, config.context_length)
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
    manifest.set("preprocess", preprocess.spec(config.image_resolution))
    manifest.set("tokenizer", tokenizer.spec() | {
        "vocab": {"path": layout.vocab.name, "bytes": layout.vocab.stat().st_size, "sha256": sha256_file(layout.vocab)},
    })
