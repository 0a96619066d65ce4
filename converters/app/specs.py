"""The facts every side reads, as data: the stage table, and what each tower takes and gives.

`STAGES` is the one table of stages (see `StageSpec`). Export, manifest, runtimes
and parity all read the tower specs, so an input's
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

# What a tower gives: the embedding as cn_clip does (unnormalized), or that embedding L2-normalized.
OutputRole = Literal["embedding", "normalized_embedding"]
Role = Literal["pixels", "token_ids", "position_ids", "attention_mask", OutputRole]
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

    @property
    def normalized(self) -> bool:
        """Whether its embedding comes L2-normalized (rknn-int8's), not as cn_clip gives it."""
        return self.outputs[0].role == "normalized_embedding"


Runtime = Literal["onnxruntime", "ncnn", "bmruntime", "rknnrt"]
# What parity compares against PyTorch with: exact float, float16 storage, or a quantized tower.
ToleranceFamily = Literal["fp32", "fp16", "int8"]


@dataclass(frozen=True)
class StageSpec:
    """One kind of artifact a bundle can hold, and the pipeline stage that makes it.

    The name says the runtime, then the precision; it is what `--stages`, `index --stage`, the manifest and
    an app's `bundle.embedder(...)` take. Everything else that differs per stage is derived from this row:
    the config's options key and parity tolerance, the file names, the CLI's choices, the schema's enums
    (checked by a test) and the README's stage table (checked by a test).
    """

    name: str
    runtime: Runtime  # the engine that runs the artifact, nothing else
    precision: str  # of the weights (and arithmetic where the runtime has it)
    file_tag: str  # in the artifact's file names: `visual.<file_tag>.onnx`
    parent: str | None  # the stage whose artifact it is made from; None: the PyTorch model
    by_default: bool  # built by `convert` unless --stages says otherwise; else asked for by name
    tolerance: ToleranceFamily  # which of parity's default tolerances it is held to
    output: OutputRole = "embedding"  # what its towers give

    @property
    def normalized(self) -> bool:
        """Whether its towers give the embedding L2-normalized."""
        return self.output == "normalized_embedding"

    @property
    def config_key(self) -> str:
        """Its key under the config's `stages:` and `parity:` (`onnx_int8` for `onnx-int8`)."""
        return self.name.replace("-", "_")


# The one stage table, in pipeline order (a parent before its children).
STAGES: tuple[StageSpec, ...] = (
    StageSpec("onnx-fp32", "onnxruntime", "fp32", "fp32", None, True, "fp32"),
    StageSpec("onnx-sim", "onnxruntime", "fp32", "sim", "onnx-fp32", True, "fp32"),
    StageSpec("onnx-fp16", "onnxruntime", "fp16", "fp16", "onnx-sim", True, "fp16"),
    StageSpec("onnx-int8", "onnxruntime", "int8", "int8", "onnx-sim", True, "int8"),
    # Asked for by name: its fallback's sensitivity pass is most of a full-size conversion's time.
    StageSpec("onnx-int4", "onnxruntime", "int4", "int4", "onnx-sim", False, "int8"),
    StageSpec("ncnn-fp32", "ncnn", "fp32", "fp32", None, True, "fp32"),
    StageSpec("ncnn-fp16", "ncnn", "fp16", "fp16", None, True, "fp16"),
    StageSpec("ncnn-int8", "ncnn", "int8", "int8", "ncnn-fp32", True, "int8"),
    # Asked for by name: they need tpu-mlir's own environment (`make sophgo-env`, about 6.4 GB).
    StageSpec("bm1684x-f16", "bmruntime", "fp16", "bm1684x.f16", "onnx-sim", False, "fp16"),
    StageSpec("bm1684x-int8", "bmruntime", "int8", "bm1684x.int8", "onnx-sim", False, "int8"),
    # Asked for by name: they need rknn-toolkit2's own environment (`make rknn-env`, 630 MB, 30 s).
    StageSpec("rknn-fp16", "rknnrt", "fp16", "rknn.fp16", "onnx-sim", False, "fp16"),
    # Normalized on the NPU: an int8 output clips an embedding whose norm is past what calibration saw.
    StageSpec("rknn-int8", "rknnrt", "int8", "rknn.int8", "onnx-sim", False, "int8", "normalized_embedding"),
)
STAGE_SPECS: dict[str, StageSpec] = {spec.name: spec for spec in STAGES}
STAGE_NAMES: tuple[str, ...] = tuple(STAGE_SPECS)
DEFAULT_STAGES: tuple[str, ...] = tuple(spec.name for spec in STAGES if spec.by_default)
RUNTIMES: tuple[Runtime, ...] = ("onnxruntime", "ncnn", "bmruntime", "rknnrt")
# Runtimes of an accelerator that only a vendor's simulator runs on this machine: their speed here says nothing.
SIMULATED_RUNTIMES: frozenset[Runtime] = frozenset({"bmruntime", "rknnrt"})


def stage_spec(stage: str) -> StageSpec:
    return STAGE_SPECS[stage]


def runtime_of(stage: str) -> Runtime:
    """The runtime that runs a stage's artifacts: "onnxruntime", "ncnn", "bmruntime" (Sophgo's, on the chip;
    tpu-mlir's simulators here) or "rknnrt" (Rockchip's librknnrt on the board; rknn-toolkit2's simulator here)."""
    return STAGE_SPECS[stage].runtime
