"""Export-only rewrites: each cn_clip tower in an equal form that ncnn can express.

One module per tower family: `vit`, `resnet` (with its attention pool) and
`bert`. Each builds a new module around the cn_clip model's own submodules
and parameters; the model and cn_clip's classes are never modified. Every
rewrite is proven equal to cn_clip's `encode_image`/`encode_text` by
`tests/rewrites/` before any conversion relies on it.

Export modules run one sample at a time (batch 1), the way an app runs ncnn.
"""

from __future__ import annotations

from types import ModuleType

from cn_clip.clip.model import CLIP, ModifiedResNet
from torch import nn

from converters.config import ModelConfig
from converters.rewrites import bert, resnet, vit
from converters.towers import TensorSpec, Tower, TowerSpec

FAMILIES: dict[str, ModuleType] = {"vit": vit, "resnet": resnet, "bert": bert}


def export_module(model: CLIP, tower: Tower) -> nn.Module:
    """The rewritten `tower` of `model`, in eval mode, sharing the model's parameters."""
    if tower == "text":
        family = "bert"
    else:
        family = "resnet" if isinstance(model.visual, ModifiedResNet) else "vit"
    return FAMILIES[family].export_module(model)


def export_spec(config: ModelConfig, tower: Tower) -> TowerSpec:
    """What the export module of `tower` takes and returns; "sequence" is the one dynamic dim."""
    embedding = TensorSpec("embedding", "float32", (1, config.architecture.embed_dim), "embedding")
    if tower == "text":
        return TowerSpec("text", bert.INPUTS, (embedding,))
    size = config.image_resolution
    return TowerSpec("visual", (TensorSpec("pixels", "float32", (1, 3, size, size), "pixels"),), (embedding,))
