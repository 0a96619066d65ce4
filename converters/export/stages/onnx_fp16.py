"""Stage `onnx-fp16`: one simplified ONNX tower with float16 weights and arithmetic, float32 inputs and outputs.

The form the official Chinese-CLIP deployment ships for GPUs, NNAPI and
CoreML: half the size of fp32, and fp16 compute where the execution provider
has fp16 kernels. The conversion is onnxruntime's own float16 converter
(`onnxruntime.transformers.float16`), with casts at the graph's inputs and
outputs so that an app feeds and reads float32 as with every other ONNX
tower. Parity runs it with onnxruntime's CPU provider, which inserts casts
around the operators it has no fp16 kernel for and computes those in fp32:
the CPU numbers measure fp16 storage and the fp16 operators the CPU has, not
a GPU's fp16 arithmetic.
"""

from __future__ import annotations

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from converters.app.artifact import Artifact
from converters.app.layout import BundleLayout
from converters.app.runtimes.onnx_runtime import RUNTIME_OPTIONS
from converters.errors import ConversionError
from converters.export import onnx_io
from converters.app.specs import stage_spec
from converters.export.context import StageContext
from converters.export.stages import Stage, StageOptions

# What the manifest says the files are for; only the CPU provider is measured here.
EXECUTION_PROVIDERS = ("CUDAExecutionProvider", "CoreMLExecutionProvider", "NnapiExecutionProvider")


class Fp16Options(StageOptions):
    # Operator types kept in float32 besides the converter's own list (ops without float16 definitions).
    keep_fp32_ops: tuple[str, ...] = ()


def run(parent: Artifact, options: Fp16Options, context: StageContext) -> Artifact:
    try:
        # Weights beyond ±65504 are clipped and activations beyond it become inf: parity refuses both
        # (a non-finite output fails before any number is compared).
        converted = convert_float_to_float16(
            onnx.load(str(parent.model_file)), keep_io_types=True,
            op_block_list=[*DEFAULT_OP_BLOCK_LIST, *options.keep_fp32_ops],
        )
    except Exception as exc:  # the converter raises whatever its graph walk hits
        raise ConversionError(f"float16 conversion of {parent.model_file} failed: {exc}") from None
    (path,) = BundleLayout(context.workdir).model_files(parent.tower, "onnx-fp16")
    return Artifact(parent.tower, "onnx-fp16", tuple(onnx_io.save(converted, path)), parent.spec, dict(RUNTIME_OPTIONS),
                    execution_providers=EXECUTION_PROVIDERS)


STAGES = (Stage(stage_spec("onnx-fp16"), Fp16Options, run),)
