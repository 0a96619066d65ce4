"""Int8 weights for an ncnn model: a port of ncnn2int8 (ncnn tools/quantize/ncnn2int8.cpp).

With a calibration table it quantizes what ncnn2int8 quantizes in a CLIP
tower: Convolution and InnerProduct (per-output-row weight scales and a
static input scale), Embed (one scale), MultiHeadAttention (per-row q/k/v
scales, one output scale; activations quantized at run time) and every Gemm
(one scale for its constant B; activations quantized at run time), then
fuses int8 Convolution pairs so the first writes int8 for the second
("requantize"). Weights are quantized with the runtime's own
`quantize_to_int8`, so the rounding is ncnn's. The params and the order of
the weights in the .bin are those each layer's `load_model` reads (ncnn
src/layer/*.cpp), which `converters.export.ncnn.model_file.read_model` checks on reading
the result back.
"""

from __future__ import annotations

import ncnn
import numpy as np

from converters.errors import ConversionError
from converters.export.ncnn.calibration import CalibrationTable
from converters.export.ncnn.model_file import Layer, NcnnModel, Weight

# ncnn2int8 covers these too; a CLIP tower has none, so they are refused rather than left fp32 unnoticed.
UNPORTED_TYPES = ("ConvolutionDepthWise", "RNN", "LSTM", "GRU", "SDPA")
# The param ids of the int8 switch (src/layer/*.cpp load_param).
INT8_SCALE_TERM = {"Convolution": 8, "InnerProduct": 8, "Embed": 18, "Gemm": 18, "MultiHeadAttention": 18}
# int8_scale_term 2: per-row weight scales; +100: the output is requantized to int8 for the next Convolution.
PER_ROW = 2
REQUANTIZE = 100


def quantizable_layers(model: NcnnModel, table: CalibrationTable) -> dict[str, str]:
    """The layers `quantize` turns int8 (name → type), in model order."""
    return {
        layer.name: layer.type
        for layer in model.layers
        if layer.type in ("Embed", "Gemm", "MultiHeadAttention")
        or (layer.type in ("Convolution", "InnerProduct") and layer.name in table.activations)
    }


def quantize(model: NcnnModel, table: CalibrationTable, float_layers: frozenset[str] = frozenset()) -> None:
    """Quantize the model in place, apart from the layers named in `float_layers`."""
    unported = sorted({layer.type for layer in model.layers if layer.type in UNPORTED_TYPES})
    if unported:
        raise ConversionError(
            f"int8 quantization of {', '.join(unported)} layers is not implemented here; "
            "leave the ncnn-int8 stage out of --stages for this model."
        )
    for layer in model.layers:
        if layer.name in float_layers:
            continue
        if layer.type in ("Convolution", "InnerProduct") and layer.name in table.activations:
            _quantize_convolution_or_innerproduct(layer, table)
        elif layer.type == "Embed":
            _quantize_embed(layer, table)
        elif layer.type == "Gemm":
            _quantize_gemm(layer)
        elif layer.type == "MultiHeadAttention":
            _quantize_multiheadattention(layer, table)
    _fuse_requantize(model, table)


def is_int8(layer: Layer) -> bool:
    return layer.type in INT8_SCALE_TERM and layer.int_param(INT8_SCALE_TERM[layer.type]) != 0


def _int8(values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """`values` as one row per scale, each times its scale, rounded and clamped to ±127 by ncnn."""
    option = ncnn.Option()
    option.use_packing_layout = False
    option.num_threads = 1
    rows = np.ascontiguousarray(values.reshape(len(scales), -1))
    quantized = ncnn.quantize_to_int8(ncnn.Mat(rows), ncnn.Mat(np.ascontiguousarray(scales, np.float32)), option)
    return np.array(quantized, dtype=np.int8).reshape(-1)


def _scales(table: CalibrationTable, layer: Layer, index: int) -> np.ndarray:
    key = f"{layer.name}_param_{index}"
    if key not in table.weights:
        raise ConversionError(f"The calibration table has no weight scales for {layer.type} '{layer.name}' ({key}).")
    return table.weights[key]


def _raw(values) -> Weight:
    return Weight(np.asarray(values, np.float32).reshape(-1), tagged=False)


def _quantize_convolution_or_innerproduct(layer: Layer, table: CalibrationTable) -> None:
    scales = _scales(table, layer, 0)
    layer.weights[0] = Weight(_int8(layer.weights[0].data, scales), tagged=True)
    # After the bias (when there is one): weight scales, then the input scale.
    layer.weights += [_raw(scales), _raw([table.activations[layer.name]])]
    layer.params[INT8_SCALE_TERM[layer.type]] = str(PER_ROW)


def _quantize_embed(layer: Layer, table: CalibrationTable) -> None:
    scale = _scales(table, layer, 0)
    layer.weights[0] = Weight(_int8(layer.weights[0].data, scale), tagged=True)
    layer.weights.append(_raw(scale[:1]))
    layer.params[INT8_SCALE_TERM["Embed"]] = str(PER_ROW)


def _quantize_gemm(layer: Layer) -> None:
    if layer.int_param(4):  # constantA
        raise ConversionError(
            f"Gemm '{layer.name}' has a constant A, whose int8 quantization is not implemented here; "
            "leave the ncnn-int8 stage out of --stages for this model."
        )
    if layer.int_param(5):  # constantB
        n, k = layer.int_param(8), layer.int_param(9)
        b = layer.weights[0].data
        if not layer.int_param(3):  # transB: store B as N rows of K, as the int8 kernel wants
            b = b.reshape(k, n).T
            layer.params[3] = "1"
        # ncnn2int8 takes the absmax of B_data.w values, which for a B stored as N rows of K
        # (what pnnx writes for nn.Linear) is the first row only, and clamps every larger
        # weight of the other rows to ±127; the absmax of all of B is what the scale is for.
        # Measured on ViT-B-16 with random weights (rows alike, so the clamping is mild):
        # text cosine min / mean 0.99916 / 0.99932 with ncnn2int8's scale, 0.99937 / 0.99947 with this.
        absmax = float(np.abs(b).max())
        scale = np.array([127 / absmax if absmax else 1.0], np.float32)
        layer.weights[0] = Weight(_int8(b, scale), tagged=True)
        layer.weights.append(_raw(scale))
    layer.params[INT8_SCALE_TERM["Gemm"]] = str(PER_ROW)


def _quantize_multiheadattention(layer: Layer, table: CalibrationTable) -> None:
    # Weights: q, q bias, k, k bias, v, v bias, out, out bias; then the scales of q, k, v and out.
    scales = [_scales(table, layer, i) for i in range(4)]
    for position, scale in zip((0, 2, 4, 6), scales):
        layer.weights[position] = Weight(_int8(layer.weights[position].data, scale), tagged=True)
    layer.weights += [_raw(scales[0]), _raw(scales[1]), _raw(scales[2]), _raw(scales[3][:1])]
    layer.params[INT8_SCALE_TERM["MultiHeadAttention"]] = str(PER_ROW)


def _fuse_requantize(model: NcnnModel, table: CalibrationTable) -> None:
    """An int8 Convolution whose output only feeds int8 Convolutions (directly, or through a Split) writes int8.

    As ncnn2int8, the output takes the input scale of its first consumer.
    """
    for layer in model.layers:
        if layer.type != "Convolution" or not is_int8(layer):
            continue
        consumers = model.consumers(layer.tops[0])
        if [c.type for c in consumers] == ["Split"]:
            split = consumers[0]
            consumers = [c for top in split.tops for c in model.consumers(top)]
            if len(consumers) != len(split.tops):  # a branch that nothing reads
                continue
        if consumers and all(c.type == "Convolution" and is_int8(c) and len(c.bottoms) == 1 for c in consumers):
            layer.params[INT8_SCALE_TERM["Convolution"]] = str(PER_ROW + REQUANTIZE)
            layer.weights.append(_raw([table.activations[consumers[0].name]]))
