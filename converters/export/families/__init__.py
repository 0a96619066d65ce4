"""Tower families: `vit` and `resnet` for the visual tower, `bert` for text; the config's family chooses one.

Each family module holds everything that differs per family, as hooks the rest
of the export side calls without asking which family it has:
- `export_module(model)`: the export-only rewrite ncnn can express. Each builds a
  new module around the cn_clip model's own submodules and parameters; the
  model and cn_clip's classes are never modified, and every rewrite is proven
  equal to cn_clip's `encode_image`/`encode_text` by `tests/export/families/`
  before any conversion relies on it. They run one sample at a time (batch 1),
  the way an app runs ncnn.
- `smoothing_sites(tower)`: the normalizations whose output only linear maps
  read (`converters.export.smoothing`).
- `stress(tower, dims, options, resolution)`: what the family adds to the stress
  weights (`converters.export.stress`).
Adding a family: a module with these three, and its name below.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from converters.app.specs import Tower
    from converters.export.config import ModelConfig


@dataclass(frozen=True)
class Site:
    """A normalization whose output reaches only `consumer`'s input: `weight` is the consumer's, input channels on dim 1."""

    norm: nn.Module  # LayerNorm or BatchNorm2d: weight and bias per channel
    consumer: nn.Module  # the module whose input is measured
    weight: nn.Parameter  # [out, in, ...]


def family(config: ModelConfig, tower: Tower) -> ModuleType:
    """The family module of one tower of the config's architecture."""
    from converters.export.families import bert, resnet, vit

    name = config.architecture.vision.family if tower == "visual" else "bert"
    return {"vit": vit, "resnet": resnet, "bert": bert}[name]
