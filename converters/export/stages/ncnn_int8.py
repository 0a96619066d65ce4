"""Stage `ncnn-int8`: one ncnn-fp32 tower → int8 weights, as ncnn's ncnn2table and ncnn2int8 make them.

ncnn's quantization tools cannot be built from ncnn's source distribution on
PyPI: `ncnn-1.0.20261020.tar.gz` holds `src/`, `cmake/`, `glslang/` and
`python/` (its MANIFEST.in), not `tools/`, and no registry this project can
reach ships them. So the two tools are ported (`converters.export.ncnn.calibration`
for ncnn2table, `converters.export.ncnn.quantize` for ncnn2int8) on top of the
installed ncnn wheel: its layers read the weights, its `quantize_to_int8`
rounds them, its fp32 runtime produces the calibration activations, and
parity runs the result in the same runtime. Checked once against the real
tools, built from upstream's tools/quantize (2026-07 snapshot) and the
sdist's src: on both towers of tiny-vit and tiny-rn, with kl and
aciq, the same table (to the 6 decimals the table prints) and, given one
table, a byte-identical .bin, apart from the Gemm scale that
`converters.export.ncnn.quantize` corrects.

The calibration set is not the parity set (`converters.data.calibration_set`).
When the all-int8 tower misses the config's `float_fallback` target on it, the
most harmful layers stay in float (`converters.export.mixed_precision`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import ncnn
from pydantic import Field

from converters.app.artifact import Artifact
from converters.app.layout import BundleLayout
from converters.app.runtimes.ncnn_runtime import DENORMALS_FLUSHED, NcnnTower
from converters.errors import ConversionError
from converters.app.specs import stage_spec
from converters.export.context import StageContext
from converters.export.mixed_precision import PROBE_THREADS, FloatFallback, Quantizer, build_with_fallback
from converters.export.ncnn.calibration import calibrate
from converters.export.ncnn.model_file import read_model, write_model
from converters.export.ncnn.quantize import is_int8, quantizable_layers, quantize
from converters.export.stages import Stage, StageOptions

# int8 layers compute in int8 (ncnn's default), the rest as the ncnn-fp32 stage does. fp16
# storage and arithmetic on gave the same cosines to 6 digits on this AVX2 CPU (ViT-B-16, RN50);
# they stay off because ARMv8.2 cores compute in fp16 where x86 does not, which no test covers.
RUNTIME_OPTIONS = {
    "use_int8_inference": True,
    "use_fp16_storage": False,
    "use_fp16_packed": False,
    "use_fp16_arithmetic": False,
    **DENORMALS_FLUSHED,
}


class NcnnInt8Options(StageOptions):
    """aciq thresholds by default: with stress weights, kl clips the few huge channels that outlier dimensions put
    into a layer's input and aciq keeps them; with random weights the two agree within 3e-4 (measured by
    `levers`, docs/measurements). 32 samples: 8 or 64 gave cosines within 1e-5 of 32 with random weights."""

    # How the input scale of each Convolution and InnerProduct is found from the calibration set.
    method: Literal["kl", "aciq"] = "aciq"
    # Calibration samples per tower: photos and crops of them, or captions.
    samples: int = Field(default=32, gt=0)
    float_fallback: FloatFallback = FloatFallback()


def run(parent: Artifact, options: NcnnInt8Options, context: StageContext) -> Artifact:
    artifact = build_with_fallback(parent, quantizer(parent, options, context), options.float_fallback, context)
    _check(*artifact.files)
    return artifact


def quantizer(parent: Artifact, options: NcnnInt8Options, context: StageContext) -> Quantizer:
    """The layers this stage can quantize, and how to quantize all but some of them."""
    try:
        model = read_model(*parent.files)
    except ConversionError as error:
        raise ConversionError(f"{error} Convert it again: --stages ncnn-fp32,ncnn-int8.") from None
    # ncnn2table calibrates with the fp32 model, fp16 off (the parent's own options), one thread per sample
    # (PROBE_THREADS says why).
    fp32 = NcnnTower(parent, threads=PROBE_THREADS)
    table = calibrate(model, fp32, fp32.feeds(context.calibration_inputs(parent.tower, options.samples)), options.method)

    def build(float_layers: frozenset[str], folder: Path) -> Artifact:
        variant = copy.deepcopy(model)
        quantize(variant, table, float_layers)
        param, binary = BundleLayout(folder).model_files(parent.tower, "ncnn-int8")
        write_model(variant, param, binary)
        return Artifact(parent.tower, "ncnn-int8", (param, binary), parent.spec, dict(RUNTIME_OPTIONS))

    return Quantizer(quantizable_layers(model, table), build, fitted=options.samples)


def _check(param: Path, binary: Path) -> None:
    """Read the result back with ncnn's loaders: every weight where the int8 layers expect it."""
    written = read_model(param, binary)
    if not any(is_int8(layer) for layer in written.layers):
        raise ConversionError(f"{param.name} has no int8 layer: the tower has no layer type ncnn quantizes.")
    net = ncnn.Net()
    if net.load_param(str(param)) != 0 or net.load_model(str(binary)) != 0:
        raise ConversionError(f"ncnn cannot load the int8 model {param.name} with {binary.name}.")


STAGES = (Stage(stage_spec("ncnn-int8"), NcnnInt8Options, run, quantizer),)
