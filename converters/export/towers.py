"""One spec per tower family and target: the module traced, what it takes and gives, its example inputs.

The family comes from the config (`vit` or `resnet` for the visual tower,
`bert` for text); the target is the converter's (`onnx` or `ncnn`):

- `onnx` traces cn_clip's own `encode_image` / `encode_text` with a dynamic
  batch axis (and for text a dynamic sequence: ids padded with 0 as
  cn_clip.clip.tokenize makes them, or unpadded; the mask `ids != 0` is
  computed in the graph, as cn_clip does).
- `ncnn` traces the family's export-only rewrite (`converters.export.families`)
  at batch 1, the way an app runs ncnn; pnnx names its blobs in0, in1, … and
  out0, drops the batch axis and reads integer ids as int32.

Export, manifest, runtimes and parity read these specs, so no tower fact is
written twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import torch
from cn_clip.clip.model import CLIP
from torch import nn

from converters.app.specs import TensorSpec, Tower, TowerSpec
from converters.export.config import ModelConfig
from converters.export.families import family

Target = Literal["onnx", "ncnn"]
# The traced batch of the ONNX export: 2, so that tracing cannot mistake the batch size for a constant.
ONNX_TRACE_BATCH = 2
# ncnn has no 64-bit integers: it reads integer blobs as int32.
_NCNN_DTYPES = {"float32": "float32", "int64": "int32", "int32": "int32"}


class EncodeTower(nn.Module):
    """One tower of a cn_clip model as a module of its own: `encode_image` or `encode_text`."""

    def __init__(self, model: CLIP, tower: Tower):
        super().__init__()
        self.model = model
        self.encode = model.encode_image if tower == "visual" else model.encode_text

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.encode(inputs)


@dataclass(frozen=True)
class ExportSpec:
    tower: Tower
    family: ModuleType  # the tower's family module (converters.export.families)
    target: Target
    traced: TowerSpec  # the traced module's arguments and result
    graph: TowerSpec  # the converted graph's inputs and outputs: what the manifest lists and runtimes feed

    def module(self, model: CLIP) -> nn.Module:
        """The module to trace, in eval mode, sharing `model`'s parameters."""
        module = EncodeTower(model, self.tower) if self.target == "onnx" else self.family.export_module(model)
        return module.eval()

    def example_inputs(self, sequence: int) -> tuple[torch.Tensor, ...]:
        """Inputs of the traced shapes, `sequence` long for text; ids are valid for any vocabulary."""
        generator = torch.Generator().manual_seed(0)
        tensors = []
        for tensor in self.traced.inputs:
            sizes = {"batch": ONNX_TRACE_BATCH, "sequence": sequence}
            shape = [sizes[dim] if isinstance(dim, str) else dim for dim in tensor.shape]
            if tensor.role == "pixels":
                tensors.append(torch.randn(shape, generator=generator))
            else:
                # Position i holds id i + 1 ([PAD] is 0), or the position i itself.
                offset = 1 if tensor.role == "token_ids" else 0
                tensors.append((torch.arange(shape[-1]) + offset).expand(shape).to(getattr(torch, tensor.dtype)))
        return tuple(tensors)

    @property
    def has_dynamic_sequence(self) -> bool:
        return any("sequence" in tensor.shape for tensor in self.traced.inputs)


def export_spec(config: ModelConfig, tower: Tower, target: Target) -> ExportSpec:
    batch = "batch" if target == "onnx" else 1
    size = config.image_resolution
    embedding = (TensorSpec("embedding", "float32", (batch, config.architecture.embed_dim), "embedding"),)
    if tower == "visual":
        inputs = (TensorSpec("pixels", "float32", (batch, 3, size, size), "pixels"),)
    elif target == "onnx":
        inputs = (TensorSpec("token_ids", "int64", (batch, "sequence"), "token_ids"),)
    else:
        # The rewrite takes one row of ids without its padding, and the position of each id in the
        # padded row (0, 1, 2, … for ids from cn_clip.clip.tokenize).
        inputs = (
            TensorSpec("token_ids", "int64", (batch, "sequence"), "token_ids"),
            TensorSpec("position_ids", "int64", (batch, "sequence"), "position_ids"),
        )
    traced = TowerSpec(tower, inputs, embedding)
    graph = traced if target == "onnx" else _ncnn_blobs(traced)
    return ExportSpec(tower, family(config, tower), target, traced, graph)


def _ncnn_blobs(traced: TowerSpec) -> TowerSpec:
    def blobs(prefix: str, specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(f"{prefix}{i}", _NCNN_DTYPES[s.dtype], s.shape[1:], s.role) for i, s in enumerate(specs))

    return TowerSpec(traced.tower, blobs("in", traced.inputs), blobs("out", traced.outputs))


@dataclass(frozen=True)
class ModelTower:
    """The parent of the stages that export from PyTorch: one tower of the loaded model."""

    model: CLIP
    config: ModelConfig
    tower: Tower

    def spec(self, target: Target) -> ExportSpec:
        return export_spec(self.config, self.tower, target)
