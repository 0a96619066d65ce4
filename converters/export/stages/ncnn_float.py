"""Stages `ncnn-fp32` and `ncnn-fp16`: one tower → ncnn .param/.bin through pnnx, fp32 or fp16 weights.

Both trace the tower family's export-only rewrite (`converters.export.towers`)
and differ only in how the .bin stores weights and in the `ncnn::Option`
fields an app must set to run the result as parity measured it.
`ncnn-fp16` is what an app gets with pnnx's and ncnn's defaults (half the
size); `ncnn-fp32` separates conversion error from fp16 rounding in the
parity report.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from converters.app.artifact import Artifact
from converters.app.layout import BundleLayout
from converters.app.runtimes.ncnn_runtime import DENORMALS_FLUSHED
from converters.app.specs import stage_spec
from converters.export.context import StageContext
from converters.export.stages import Stage, StageOptions

if TYPE_CHECKING:
    from converters.export.towers import ModelTower

# ncnn's Option defaults turn all three on; the fp32 path needs them off: with them on, even an
# fp32 .bin drifts (tiny-rn: 1e-4 max abs) as convolutions store fp16.
FP32_OPTIONS = {"use_fp16_storage": False, "use_fp16_packed": False, "use_fp16_arithmetic": False, **DENORMALS_FLUSHED}
# ncnn's defaults: fp16 storage and arithmetic wherever the CPU has them. On x86 (AVX2, F16C) most
# layers still compute in fp32; ARMv8.2 cores also compute in fp16, which no test here covers.
FP16_OPTIONS = {"use_fp16_storage": True, "use_fp16_packed": True, "use_fp16_arithmetic": True, **DENORMALS_FLUSHED}
# A second, shorter sequence makes pnnx write the sequence dim as dynamic (Gemm M=0, not 52).
DYNAMIC_PROBE_LENGTH = 4


class NcnnOptions(StageOptions):
    """pnnx conversion of the rewritten towers (the tower families' export-only rewrites); the precision is the stage's."""


def run(parent: ModelTower, options: NcnnOptions, context: StageContext, *, stage: str) -> Artifact:
    from converters.export.ncnn.pnnx import convert_with_pnnx

    spec = parent.spec("ncnn")
    fp16 = stage == "ncnn-fp16"
    param, binary = BundleLayout(context.workdir).model_files(parent.tower, stage)
    convert_with_pnnx(
        spec.module(parent.model),
        spec.example_inputs(parent.config.context_length),
        param,
        binary,
        fp16,
        dynamic_example=spec.example_inputs(DYNAMIC_PROBE_LENGTH) if spec.has_dynamic_sequence else None,
    )
    return Artifact(parent.tower, stage, (param, binary), spec.graph, FP16_OPTIONS if fp16 else FP32_OPTIONS)


STAGES = tuple(Stage(stage_spec(name), NcnnOptions, partial(run, stage=name)) for name in ("ncnn-fp32", "ncnn-fp16"))
