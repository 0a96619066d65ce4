"""Stage `int8`: onnxruntime dynamic int8 quantization of one simplified ONNX tower.

Weights become int8 at conversion time; activations are quantized per call
from their observed range, so no calibration data is needed. The settings
come from the config (see `Int8Options` for the measured reasons).
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from converters import onnx_io
from converters.artifact import Artifact
from converters.config import Int8Options
from converters.errors import ConversionError
from converters.layout import BundleLayout

NAME = "int8"
PARENT = "simplify"
TAG = "int8"

_WEIGHT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


def run(parent: Artifact, options: Int8Options, workdir: Path) -> Artifact:
    quantized = workdir / "quantized.onnx"
    model = onnx.load(str(parent.model_file), load_external_data=False)
    excluded = [
        node.name for node in model.graph.node if any(p in node.name for p in options.exclude_name_patterns)
    ]
    try:
        # The quantizer logs a generic advice to run its pre-processing at WARNING on
        # the root logger; parity, not that advice, decides whether the result is good.
        logging.disable(logging.WARNING)
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
    finally:
        logging.disable(logging.NOTSET)
    files = onnx_io.save(onnx.load(str(quantized)), workdir / BundleLayout(workdir).onnx_model(parent.tower, TAG).name)
    return Artifact(parent.tower, NAME, "onnxruntime", "int8", tuple(files), parent.spec)
