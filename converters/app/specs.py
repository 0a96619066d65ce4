"""What each tower takes and gives, as data: names, dtypes, shapes and roles of its tensors.

Export, manifest, runtimes and parity all read these specs, so an input's
name, dtype, symbolic dims and role are declared once (the specs of each
tower family and target are built in `converters.export.towers`). Symbolic
dims are strings; they become dynamic axes in ONNX and named dims in the
manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Tower = Literal["visual", "text"]
TOWERS: tuple[Tower, ...] = ("visual", "text")

Role = Literal["pixels", "token_ids", "position_ids", "attention_mask", "embedding"]
# The input every tower of a kind takes, whatever its runtime.
TOWER_INPUT_ROLES: dict[Tower, Role] = {"visual": "pixels", "text": "token_ids"}


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


# The artifacts a bundle can hold, in pipeline order. Each name says the runtime and the precision,
# is the pipeline stage that makes the artifact, and is what an app asks the bundle for.
STAGE_NAMES = ("onnx-fp32", "onnx-sim", "onnx-fp16", "onnx-int8", "onnx-int4", "ncnn-fp32", "ncnn-fp16", "ncnn-int8",
               "bm1684x-f16", "bm1684x-int8")


def runtime_of(stage: str) -> str:
    """The runtime that runs a stage's artifacts: "onnxruntime", "ncnn", or "bmruntime" (Sophgo's, on the chip;
    tpu-mlir's simulators here)."""
    return {"onnx": "onnxruntime", "ncnn": "ncnn", "bm1684x": "bmruntime"}[stage.split("-")[0]]
