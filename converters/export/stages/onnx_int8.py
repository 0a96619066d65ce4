"""Stage `onnx-int8`: onnxruntime dynamic int8 quantization of one simplified ONNX tower.

Weights become int8 at conversion time; activations are quantized per call
from their observed range, so no calibration data is needed. The settings
come from the config (see `Int8Options` for the measured reasons). When the
all-int8 tower misses the config's `float_fallback` target on calibration
samples, the most harmful nodes stay in float (`converters.export.mixed_precision`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from converters.app.artifact import Artifact
from converters.app.layout import BundleLayout
from converters.app.runtimes.onnx_runtime import RUNTIME_OPTIONS
from converters.errors import ConversionError
from converters.export import onnx_io
from converters.app.specs import stage_spec
from converters.export.context import StageContext
from converters.export.mixed_precision import FloatFallback, Quantizer, build_with_fallback
from converters.export.stages import Stage, StageOptions

WEIGHT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


class Int8Options(StageOptions):
    """onnxruntime dynamic quantization, chosen by measured parity, size and speed (docs/measurements: int8
    settings on AVX2, and the levers): without `reduce_range`, int8 weights saturate AVX2's u8*s8 pair sums
    (vpmaddubsw) on CPUs without VNNI; uint8 weights do not, but run a 1.5x slower kernel there; per-channel
    scales cost 0.4 MB and gain cosine everywhere; Gather is quantized because the word table is most of
    the text tower."""

    weight_type: Literal["int8", "uint8"] = "int8"
    per_channel: bool = True
    reduce_range: bool = True
    op_types: tuple[str, ...] = ("MatMul", "Gemm", "Gather")
    # Nodes whose names contain one of these stay in fp32.
    exclude_name_patterns: tuple[str, ...] = ()
    float_fallback: FloatFallback = FloatFallback()


def run(parent: Artifact, options: Int8Options, context: StageContext) -> Artifact:
    return build_with_fallback(parent, quantizer(parent, options, context), options.float_fallback, context)


def quantizer(parent: Artifact, options: Int8Options, context: StageContext) -> Quantizer:
    """The nodes this stage can quantize, and how to quantize all but some of them (dynamic: nothing fitted)."""
    nodes = GraphNodes.of(parent, options)

    def build(float_layers: frozenset[str], folder: Path) -> Artifact:
        return quantized_artifact(parent, folder, lambda output: quantize_dynamic(
            str(parent.model_file),
            str(output),
            op_types_to_quantize=list(options.op_types),
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            weight_type=WEIGHT_TYPES[options.weight_type],
            nodes_to_exclude=nodes.excluded_with(float_layers),
            use_external_data_format=len(parent.files) > 1,
        ))

    return Quantizer(nodes.quantizable, build)


@dataclass(frozen=True)
class GraphNodes:
    op_types: dict[str, str]  # every node's name → op type
    excluded: tuple[str, ...]  # matched by the config's exclude_name_patterns: never quantized
    quantizable: dict[str, str]

    @classmethod
    def of(cls, parent: Artifact, options: Int8Options) -> "GraphNodes":
        graph = onnx.load(str(parent.model_file), load_external_data=False).graph
        op_types = {node.name: node.op_type for node in graph.node}
        excluded = tuple(name for name in op_types if any(p in name for p in options.exclude_name_patterns))
        quantizable = {name: op for name, op in op_types.items() if op in options.op_types and name not in excluded}
        return cls(op_types, excluded, quantizable)

    def excluded_with(self, float_layers: frozenset[str]) -> list[str]:
        """`nodes_to_exclude` for onnxruntime's quantizers: the excluded nodes and the float layers, by the names
        the quantizer knows them by. It turns a Gemm into a MatMul named `<name>_MatMul` (and an Add) before it
        reads nodes_to_exclude (onnxruntime.quantization.onnx_model, 1.32), so a Gemm excluded by its own name
        alone would be quantized all the same."""
        names = [*self.excluded, *sorted(float_layers)]
        return [alias for name in names
                for alias in ((name, f"{name}_MatMul") if self.op_types.get(name) == "Gemm" else (name,))]


def quantized_artifact(parent: Artifact, folder: Path, quantize: Callable[[Path], None]) -> Artifact:
    """The onnx-int8 artifact that `quantize(output)` (one of onnxruntime's quantizers) writes from the parent."""
    quantized = folder / "quantized.onnx"
    try:
        with without_quantizer_advice():
            quantize(quantized)
    except Exception as exc:  # the quantizer raises whatever its graph walk hits
        raise ConversionError(f"int8 quantization of {parent.model_file} failed: {exc}") from None
    (path,) = BundleLayout(folder).model_files(parent.tower, "onnx-int8")
    files = tuple(onnx_io.save(onnx.load(str(quantized)), path))
    for scratch in folder.glob("quantized.onnx*"):
        scratch.unlink()
    return Artifact(parent.tower, "onnx-int8", files, parent.spec, dict(RUNTIME_OPTIONS))


class _QuantizerAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def without_quantizer_advice():
    """Drop the quantizer's warnings for the call: it advises its pre-processing on the root logger at every
    run, and parity, not that advice, decides whether the result is good. Other loggers are untouched."""
    advice = _QuantizerAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


STAGES = (Stage(stage_spec("onnx-int8"), Int8Options, run, quantizer),)
