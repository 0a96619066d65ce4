"""The ncnn-int8 stage on both tiny architectures, and its ports of ncnn2table and ncnn2int8."""

import hashlib
import json
import math

import numpy as np
import pytest

from converters.app.layout import BundleLayout
from converters.app.preprocess import Transform
from converters.app.tokenizer import Tokenizer
from converters.data import CALIBRATION_SET_DIR, PARITY_SET_DIR
from converters.data.calibration_set import calibration_pixels, calibration_token_ids
from converters.errors import ConversionError
from converters.export.checkpoint import cn_clip_vocab
from converters.validate.fidelity import DEFAULT_TARGETS
from converters.export.ncnn.calibration import (
    KL_EPS,
    TARGET_BINS,
    CalibrationTable,
    kl_threshold_bin,
)
from converters.export.ncnn.model_file import (
    Layer,
    NcnnModel,
    Weight,
    read_model,
    write_model,
)
from converters.export.ncnn.quantize import INT8_SCALE_TERM, is_int8, quantize

QUANTIZED_TYPES = set(INT8_SCALE_TERM)


def int8_files(bundle, tower):
    return BundleLayout(bundle).model_files(tower, "ncnn-int8")


@pytest.mark.parametrize("tower", ["visual", "text"])
def test_every_quantizable_layer_stores_int8_weights(tiny_bundle, tower):
    model = read_model(*int8_files(tiny_bundle, tower))
    quantizable = [layer for layer in model.layers if layer.type in QUANTIZED_TYPES]
    assert quantizable and all(is_int8(layer) for layer in quantizable)
    for layer in quantizable:
        assert layer.weights[0].data.dtype == np.int8, layer.name
    fp32_bin = BundleLayout(tiny_bundle).model_files(tower, "ncnn-fp32")[1]
    assert int8_files(tiny_bundle, tower)[1].stat().st_size < fp32_bin.stat().st_size / 3


def test_parity_meets_the_int8_tolerance_in_ncnn(tiny_bundle):
    report = json.loads(BundleLayout(tiny_bundle).parity_json.read_text())
    (stage,) = [s for s in report["stages"] if s["stage"] == "ncnn-int8"]
    for tower in ("visual", "text"):
        assert stage[tower]["cosine_min"] >= DEFAULT_TARGETS["int8"].cosine_min
        assert stage[tower]["cosine_mean"] >= DEFAULT_TARGETS["int8"].cosine_mean
    manifest = json.loads(BundleLayout(tiny_bundle).manifest.read_text())
    assert manifest["artifacts"]["text.ncnn-int8"]["runtime_options"]["use_int8_inference"] is True


def test_unquantized_weights_are_written_as_pnnx_writes_fp16(tiny_bundle, tmp_path):
    """ncnn2int8 stores every weight it does not quantize as fp16, in the layout pnnx's fp16=1 writes.

    The values may differ by one fp16 step: pnnx rounds with its own conversion and flushes
    subnormals to zero, ncnn2int8 (and this port) with ncnn's cast.
    """
    layout = BundleLayout(tiny_bundle)
    write_model(read_model(*layout.model_files("text", "ncnn-fp32")), tmp_path / "m.param", tmp_path / "m.bin")
    ours, pnnx = read_model(tmp_path / "m.param", tmp_path / "m.bin"), read_model(*layout.model_files("text", "ncnn-fp16"))
    assert (tmp_path / "m.bin").stat().st_size == layout.model_files("text", "ncnn-fp16")[1].stat().st_size
    def weights(model):
        return [w for layer in model.layers for w in layer.weights]

    for mine, theirs in zip(weights(ours), weights(pnnx), strict=True):
        assert mine.tagged == theirs.tagged and mine.data.shape == theirs.data.shape
        if mine.tagged:
            np.testing.assert_allclose(mine.data, theirs.data, rtol=2**-10, atol=2**-14)
        else:
            np.testing.assert_array_equal(mine.data, theirs.data)


def test_a_truncated_bin_is_refused(tiny_bundle, tmp_path):
    layout = BundleLayout(tiny_bundle)
    param = layout.model_files("text", "ncnn-fp32")[0]
    short = tmp_path / "short.bin"
    short.write_bytes(layout.model_files("text", "ncnn-fp32")[1].read_bytes()[:-4096])
    with pytest.raises(ConversionError, match="short.bin ends before the weights do"):
        read_model(param, short)


def test_gemm_scale_covers_all_of_b():
    """ncnn2int8 scales B by the absmax of its first row only; every row must stay within ±127 unclamped."""
    n, k = 4, 8
    b = np.linspace(-1, 1, n * k, dtype=np.float32).reshape(n, k) * np.arange(1, n + 1, dtype=np.float32)[:, None]
    layer = Layer("Gemm", "g", ["x"], ["y"], {3: "1", 5: "1", 8: str(n), 9: str(k)}, [Weight(b.reshape(-1), True)])
    quantize(NcnnModel([layer], blob_count=2), CalibrationTable(weights={}, activations={}))
    scale = layer.weights[-1].data[0]
    assert scale == pytest.approx(127 / 4)
    np.testing.assert_allclose(layer.weights[0].data.astype(np.float32) / scale, b.reshape(-1), atol=0.5 / scale)
    assert layer.params[18] == "2"


def kl_threshold_bin_as_in_ncnn2table(histogram):
    """ncnn2table's loops (tools/quantize/ncnn2table.cpp, QuantNet::quantize_KL) in plain Python.

    Its first, middle and last level are one case here: the first has no left part,
    the last no right part.
    """
    normed = histogram / histogram.sum()
    best, best_divergence = TARGET_BINS, math.inf
    for threshold in range(TARGET_BINS, len(histogram)):
        clip = [KL_EPS + normed[j] for j in range(threshold)]
        clip[threshold - 1] += sum(normed[threshold:])
        per_bin = threshold / TARGET_BINS
        quantized = [0.0] * TARGET_BINS
        for j in range(TARGET_BINS):
            start, end = j * per_bin, min((j + 1) * per_bin, threshold)
            left_upper, right_lower = math.ceil(start), math.floor(end)
            left_scale, right_scale = left_upper - start, end - right_lower
            if left_scale > 0:
                quantized[j] += left_scale * normed[left_upper - 1]
            if right_scale > 0 and right_lower < threshold:
                quantized[j] += right_scale * normed[right_lower]
            quantized[j] += sum(normed[left_upper:right_lower])
            quantized[j] /= end - start
        expanded = [KL_EPS] * threshold
        for j in range(TARGET_BINS):
            start, end = j * per_bin, min((j + 1) * per_bin, threshold)
            left_upper, right_lower = math.ceil(start), math.floor(end)
            left_scale, right_scale = left_upper - start, end - right_lower
            if left_scale > 0:
                expanded[left_upper - 1] += left_scale * quantized[j]
            if right_scale > 0 and right_lower < threshold:
                expanded[right_lower] += right_scale * quantized[j]
            for m in range(left_upper, right_lower):
                expanded[m] += quantized[j]
        divergence = sum(c * math.log(c / e) for c, e in zip(clip, expanded))
        if divergence < best_divergence:
            best, best_divergence = threshold, divergence
    return best


# ncnn2table's 2048 bins take the plain-Python loops a minute; fewer bins exercise the same arithmetic.
@pytest.mark.parametrize("bins, seed", [(512, 0), (640, 1)])
def test_kl_threshold_matches_ncnn2table(bins, seed):
    # |x| of a heavy-tailed activation: most mass near 0, a long sparse tail.
    values = np.abs(np.random.default_rng(seed).standard_t(3, 200_000))
    histogram = np.bincount(np.minimum((values / values.max() * bins).astype(int), bins - 1), minlength=bins)
    assert kl_threshold_bin(histogram) == kl_threshold_bin_as_in_ncnn2table(histogram)


def test_calibration_set_is_not_the_parity_set():
    def digests(directory):
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in (directory / "images").iterdir()}

    assert not digests(CALIBRATION_SET_DIR) & digests(PARITY_SET_DIR)
    parity_captions = {c["text"] for c in json.loads((PARITY_SET_DIR / "captions.json").read_text("utf-8"))}
    assert not set((CALIBRATION_SET_DIR / "captions.txt").read_text("utf-8").splitlines()) & parity_captions


def test_calibration_samples_are_distinct_preprocessed_inputs():
    pixels = calibration_pixels(12, Transform(32))
    assert pixels.shape == (12, 3, 32, 32) and pixels.dtype == np.float32
    assert len({p.tobytes() for p in pixels}) == 12
    ids = calibration_token_ids(8, Tokenizer.from_vocab(cn_clip_vocab()))
    assert (ids[:, 0] == 101).all() and len({row.tobytes() for row in ids}) == 8
