"""Stage `onnx-int8`: onnxruntime dynamic int8 quantization of one simplified ONNX tower.

Weights become int8 at conversion time; activations are quantized per call
from their observed range, so no calibration data is needed. The settings
come from the config (see `Int8Options` for the measured reasons).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from converters.app.artifact import Artifact
from converters.app.layout import BundleLayout
from converters.errors import ConversionError
from converters.export import onnx_io
from converters.export.config import Int8Options
from converters.export.stages import Stage

_WEIGHT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


def run(parent: Artifact, options: Int8Options, workdir: Path) -> Artifact:
    quantized = workdir / "quantized.onnx"
    model = onnx.load(str(parent.model_file), load_external_data=False)
    excluded = [
        node.name for node in model.graph.node if any(p in node.name for p in options.exclude_name_patterns)
    ]
    try:
        with _without_quantizer_advice():
            quantize_dynamic(
                str(parent.model_file),
                str(quantized),
                op_types_to_quantize=list(options.op_types),
                per_channel=options.per_channel,
                reduce_range=options.reduce_range,
                weight_type=_WEIGHT_TYPES[options.weight_type],
                nodes_to_exclude=excluded,
                use_external_data_format=len(parent.files) > 1,
            )
    except Exception as exc:  # the quantizer raises whatever its graph walk hits
        raise ConversionError(f"int8 quantization of {parent.model_file} failed: {exc}") from None
    (path,) = BundleLayout(workdir).model_files(parent.tower, STAGE.name)
    return Artifact(parent.tower, STAGE.name, "int8", tuple(onnx_io.save(onnx.load(str(quantized)), path)), parent.spec)


class _QuantizerAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def _without_quantizer_advice():
    """Drop the quantizer's warnings for the call: it advises its pre-processing on the root logger at every
    run, and parity, not that advice, decides whether the result is good. Other loggers are untouched."""
    advice = _QuantizerAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


STAGE = Stage("onnx-int8", "onnx-sim", run)
