"""Int8 scales for an ncnn model: a port of ncnn2table (ncnn tools/quantize/ncnn2table.cpp).

Weight scales come from the weights; the input scale of each Convolution and
InnerProduct comes from running the fp32 model on calibration samples in the
real runtime, by `kl` (the threshold whose 128-level quantization of a
2048-bin histogram of |x| loses the least information) or `aciq` (the
optimal clip of a Gaussian with the observed absmax). ncnn2table's third
method, `eq` (a search that re-runs every layer per candidate scale), is not
ported. Names follow ncnn2table's table: `<layer>_param_<i>` for weights,
`<layer>` for its input.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from converters.app.runtimes.ncnn_runtime import NcnnTower
from converters.export.ncnn.model_file import Layer, NcnnModel

Method = Literal["kl", "aciq"]

# Layer types whose input is quantized with a calibrated scale (ncnn2table also takes
# ConvolutionDepthWise, which no CLIP tower has).
CALIBRATED_TYPES = ("Convolution", "InnerProduct")
HISTOGRAM_BINS = 2048
TARGET_BINS = 128
KL_EPS = 1e-4
# ACIQ's clipping point of a Gaussian in units of its std, per bit width 1..8.
_ALPHA_GAUSSIAN = (0, 1.71063519, 2.15159277, 2.55913646, 2.93620062, 3.28691474, 3.6151146, 3.92403714)


@dataclass(frozen=True)
class CalibrationTable:
    weights: dict[str, np.ndarray]  # "<layer>_param_<i>" → one scale per output row
    activations: dict[str, float]  # "<layer>" → the scale of its input blob


def calibrate(model: NcnnModel, tower: NcnnTower, feeds: Iterable[dict], method: Method) -> CalibrationTable:
    """Scales for every layer ncnn2int8 quantizes with a table; `tower` runs the fp32 model on `feeds`."""
    weights = {}
    for layer in model.layers:
        weights.update(weight_scales(layer, method))
    calibrated = [layer for layer in model.layers if layer.type in CALIBRATED_TYPES]
    return CalibrationTable(weights, activation_scales(calibrated, tower, list(feeds), method))


def weight_scales(layer: Layer, method: Method) -> dict[str, np.ndarray]:
    """ncnn2table's weight scales: per output row for Convolution, InnerProduct and the q/k/v projections."""
    key = f"{layer.name}_param_"
    if layer.type == "Convolution":
        rows = layer.weights[0].data.reshape(layer.int_param(0), -1)
        return {key + "0": _row_scales(rows, 6 if _is_winograd43(layer) else 8, method)}
    if layer.type == "InnerProduct":
        return {key + "0": _row_scales(layer.weights[0].data.reshape(layer.int_param(0), -1), 8, method)}
    # Embed and MultiHeadAttention take absmax scales whatever the method (ncnn2table's
    # initialize_static_weight_scales).
    if layer.type == "Embed":
        return {key + "0": _row_scales(layer.weights[0].data.reshape(1, -1), 8, "kl")}
    if layer.type == "MultiHeadAttention":
        embed_dim = layer.int_param(0)
        q, k, v, out = (layer.weights[i].data for i in (0, 2, 4, 6))
        return {
            key + "0": _row_scales(q.reshape(embed_dim, -1), 8, "kl"),
            key + "1": _row_scales(k.reshape(embed_dim, -1), 8, "kl"),
            key + "2": _row_scales(v.reshape(embed_dim, -1), 8, "kl"),
            key + "3": _row_scales(out.reshape(1, -1), 8, "kl"),
        }
    return {}


def _is_winograd43(layer: Layer) -> bool:
    """3x3 stride-1 undilated convolutions, which ncnn runs as int8 winograd F(4,3): their weights get 6 bits."""
    kernel_w = layer.int_param(1)
    dilation_w, stride_w = layer.int_param(2, 1), layer.int_param(3, 1)
    square = (kernel_w, dilation_w, stride_w) == (
        layer.int_param(11, kernel_w), layer.int_param(12, dilation_w), layer.int_param(13, stride_w)
    )
    return square and (kernel_w, dilation_w, stride_w) == (3, 1, 1)


def _row_scales(rows: np.ndarray, bits: int, method: Method) -> np.ndarray:
    levels = 2 ** (bits - 1) - 1
    absmax = np.abs(rows).max(axis=1).astype(np.float32)
    threshold = absmax if method == "kl" else np.array([aciq_clip(a, rows.shape[1], bits) for a in absmax], np.float32)
    # ncnn2table divides by zero for an all-zero Convolution row; 1 quantizes it to zeros all the same.
    return np.where(threshold == 0, np.float32(1), np.float32(levels) / np.where(threshold == 0, 1, threshold))


def aciq_clip(absmax: float, count: int, bits: int = 8) -> float:
    gaussian_const = (0.5 * 0.35) * (1 + math.sqrt(math.pi * math.log(4)))
    std = (absmax * 2 * gaussian_const) / math.sqrt(2 * math.log(count))
    return float(np.float32(_ALPHA_GAUSSIAN[bits - 1] * std))


def activation_scales(layers: list[Layer], tower: NcnnTower, feeds: list[dict], method: Method) -> dict[str, float]:
    """The scale of each layer's input blob over the calibration feeds, in two passes as ncnn2table makes them."""
    if not layers:
        return {}
    blobs = [layer.bottoms[0] for layer in layers]
    absmax = np.zeros(len(blobs), np.float32)
    sizes = [0] * len(blobs)
    for feed in feeds:
        for i, values in enumerate(tower.extract(feed, blobs)):
            absmax[i] = max(absmax[i], np.abs(values).max())
            sizes[i] = values.size
    if method == "aciq":
        thresholds = [aciq_clip(a, n) for a, n in zip(absmax, sizes)]
    else:
        histograms = np.zeros((len(blobs), HISTOGRAM_BINS), np.int64)
        for feed in feeds:
            for i, values in enumerate(tower.extract(feed, blobs)):
                histograms[i] += _histogram(values, absmax[i])
        thresholds = [(kl_threshold_bin(h) + 0.5) * a / HISTOGRAM_BINS for h, a in zip(histograms, absmax)]
    return {layer.name: float(np.float32(127) / np.float32(t)) for layer, t in zip(layers, thresholds)}


def _histogram(values: np.ndarray, absmax: np.float32) -> np.ndarray:
    # float32 arithmetic and truncation as in ncnn2table; exact zeros are not counted.
    magnitude = np.abs(values[values != 0]).astype(np.float32)
    bins = np.minimum((magnitude / absmax * np.float32(HISTOGRAM_BINS)).astype(np.int64), HISTOGRAM_BINS - 1)
    return np.bincount(bins, minlength=HISTOGRAM_BINS)


def kl_threshold_bin(histogram: np.ndarray) -> int:
    """The bin, at least 128, where clipping there and quantizing to 128 levels diverges least from the histogram.

    ncnn2table spreads each of the 128 levels over `threshold / 128` histogram bins,
    fractional bins shared by their overlap; with the cumulative histogram as a
    piecewise-linear function that is a difference of two interpolations.
    """
    normed = histogram / histogram.sum()
    cumulative = np.concatenate([[0.0], np.cumsum(normed)])
    best, best_divergence = TARGET_BINS, math.inf
    for threshold in range(TARGET_BINS, len(histogram)):
        clipped = normed[:threshold] + KL_EPS
        clipped[-1] += normed[threshold:].sum()
        edges = np.arange(TARGET_BINS + 1) * (threshold / TARGET_BINS)
        level_mass = np.diff(np.interp(edges, np.arange(threshold + 1), cumulative[: threshold + 1]))
        spread = np.diff(np.interp(np.arange(threshold + 1), edges, np.concatenate([[0.0], np.cumsum(level_mass)])))
        divergence = float(np.sum(clipped * np.log(clipped / (spread + KL_EPS))))
        if divergence < best_divergence:
            best, best_divergence = threshold, divergence
    return best
