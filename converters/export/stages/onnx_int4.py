"""Stage `onnx-int4`: onnxruntime weight-only 4-bit quantization of one simplified ONNX tower.

Every MatMul with a constant weight becomes a `MatMulNBits` (4-bit blocks with
one scale each along the reduction axis) and the word-embedding `Gather` a
`GatherBlockQuantized`; activations stay float. It is the stage for a bundle
that has to be small (an APK's 150 MB base download). Gemm nodes are first
rewritten as MatMul + Add, which the 4-bit quantizer covers. As for int8, the
layers that hurt the embedding most are kept out of 4 bits when the all-4-bit
tower misses the config's `float_fallback` target (`converters.export.mixed_precision`),
as int8 by default (`kept_as`), which keeps the bundle small.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Literal

import onnx
import onnx.version_converter

from converters.app.artifact import Artifact
from converters.app.layout import BundleLayout
from converters.app.runtimes.onnx_runtime import RUNTIME_OPTIONS
from converters.errors import ConversionError
from converters.export import onnx_io
from converters.app.specs import stage_spec
from converters.export.context import StageContext
from converters.export.mixed_precision import FloatFallback, Quantizer, build_with_fallback
from converters.export.stages import Stage, StageOptions
from converters.export.stages.onnx_int8 import Int8Options, without_quantizer_advice

INT4_OPSET = 21


class Int4Options(StageOptions):
    """4-bit blocks with one scale per `block_size` values along the reduction axis, symmetric; the float
    fallback decides which layers keep wider weights (docs/measurements: the onnx-int4 size/fidelity curve)."""

    block_size: Literal[16, 32, 64, 128] = 32
    op_types: tuple[Literal["MatMul", "Gather"], ...] = ("MatMul", "Gather")
    float_fallback: FloatFallback = FloatFallback()
    # What the layers the fallback keeps out of 4 bits become: int8 (onnxruntime dynamic, as onnx-int8)
    # keeps a bundle small where float would not: the ViT-B-16 word table is 65 MB in float, 16 MB in int8.
    kept_as: Literal["int8", "float"] = "int8"


def run(parent: Artifact, options: Int4Options, context: StageContext) -> Artifact:
    return build_with_fallback(parent, quantizer(parent, options, context), options.float_fallback, context)


def quantizer(parent: Artifact, options: Int4Options, context: StageContext) -> Quantizer:
    """The weights this stage can store in 4 bits (node name → op type), and how to quantize all but some."""
    from onnxruntime.quantization.onnx_model import ONNXModel

    # The quantizer stamps opset 21 on a model whose Gather it quantizes (int4 tensors need it) without
    # converting the ops whose form changed (ReduceMean's axes became an input in 18): convert properly first.
    rewritten = ONNXModel(onnx.version_converter.convert_version(onnx.load(str(parent.model_file)), INT4_OPSET))
    rewritten.replace_gemm_with_matmul()
    model = rewritten.model
    constants = {tensor.name for tensor in model.graph.initializer}
    layers = {
        node.name: node.op_type
        for node in model.graph.node
        if node.op_type in options.op_types
        and (node.input[1] if node.op_type == "MatMul" else node.input[0]) in constants
    }

    def build(kept_layers: frozenset[str], folder: Path) -> Artifact:
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits

        config = nbits.DefaultWeightOnlyQuantConfig(
            block_size=options.block_size, is_symmetric=True, op_types_to_quantize=options.op_types,
            quant_axes=(("MatMul", 0), ("Gather", 1)),
        )
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        try:
            with _quiet_quantizer():
                quantized = nbits.MatMulNBitsQuantizer(copy, nodes_to_exclude=sorted(kept_layers), algo_config=config)
                quantized.process()
        except Exception as exc:  # the quantizer raises whatever its graph walk hits
            raise ConversionError(f"4-bit quantization of {parent.model_file} failed: {exc}") from None
        result = quantized.model.model
        if kept_layers and options.kept_as == "int8":
            result = _int8(result, sorted(kept_layers), folder)
        (path,) = BundleLayout(folder).model_files(parent.tower, "onnx-int4")
        return Artifact(parent.tower, "onnx-int4", tuple(onnx_io.save(result, path)), parent.spec,
                        dict(RUNTIME_OPTIONS))

    return Quantizer(layers, build, kept_as=options.kept_as)


def _int8(model: onnx.ModelProto, nodes: list[str], folder: Path) -> onnx.ModelProto:
    """`nodes` of a 4-bit model quantized to int8 as onnx-int8 quantizes (its default settings)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = Int8Options()
    scratch = folder / "kept-int8.onnx"
    try:
        with without_quantizer_advice():
            quantize_dynamic(
                model, scratch, op_types_to_quantize=["MatMul", "Gather"], nodes_to_quantize=nodes,
                per_channel=settings.per_channel, reduce_range=settings.reduce_range, weight_type=QuantType.QInt8,
            )
        return onnx.load(str(scratch))
    except Exception as exc:  # the quantizer raises whatever its graph walk hits
        raise ConversionError(f"int8 quantization of the layers kept out of 4 bits failed: {exc}") from None
    finally:
        scratch.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_quantizer():
    """The 4-bit quantizer logs two INFO lines per node on its own logger; keep its errors only."""
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


STAGES = (Stage(stage_spec("onnx-int4"), Int4Options, run, quantizer),)
