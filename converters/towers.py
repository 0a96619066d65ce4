"""What each tower takes and gives, as data.

Export, manifest, runtimes and parity all read these specs, so an input's
name, dtype, symbolic dims and role are declared once. Symbolic dims are
strings; they become dynamic axes in ONNX and named dims in the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from converters.config import ModelConfig

Tower = Literal["visual", "text"]
TOWERS: tuple[Tower, ...] = ("visual", "text")

Role = Literal["pixels", "token_ids", "position_ids", "attention_mask", "embedding"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]
    role: Role

    def to_json(self) -> dict:
        return asdict(self) | {"shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict) -> "TensorSpec":
        return cls(data["name"], data["dtype"], tuple(data["shape"]), data["role"])


@dataclass(frozen=True)
class TowerSpec:
    tower: Tower
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            spec.name: {axis: dim for axis, dim in enumerate(spec.shape) if isinstance(dim, str)}
            for spec in (*self.inputs, *self.outputs)
        }

    def input(self, role: Role) -> TensorSpec:
        return next(spec for spec in self.inputs if spec.role == role)


def onnx_tower_specs(config: ModelConfig) -> dict[Tower, TowerSpec]:
    """Both ONNX towers: a dynamic batch, and for text a dynamic sequence length.

    The text tower takes ids padded with 0 (as cn_clip.clip.tokenize makes them)
    or an unpadded sequence of any length 2..context_length; the attention mask
    is derived inside the graph from `ids != 0`, exactly as cn_clip does.
    """
    size = config.image_resolution
    embedding = TensorSpec("embedding", "float32", ("batch", config.architecture.embed_dim), "embedding")
    return {
        "visual": TowerSpec(
            "visual", (TensorSpec("pixels", "float32", ("batch", 3, size, size), "pixels"),), (embedding,)
        ),
        "text": TowerSpec(
            "text", (TensorSpec("token_ids", "int64", ("batch", "sequence"), "token_ids"),), (embedding,)
        ),
    }
