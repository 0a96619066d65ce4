"""The onnx-int4 stage on both tiny architectures: 4-bit weights where it says, a valid graph, parity."""

import json

import onnx
import pytest

from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.export.context import StageContext
from converters.export.stages.onnx_int4 import Int4Options
from converters.validate.fidelity import DEFAULT_TARGETS
from converters.export.stages.onnx_int4 import INT4_OPSET, quantizer

FOUR_BIT_OPS = {"MatMulNBits", "GatherBlockQuantized"}


@pytest.mark.parametrize("tower", ["visual", "text"])
def test_weights_are_4_bit_except_the_layers_kept_as_int8(tiny_bundle, tower):
    layout = BundleLayout(tiny_bundle)
    (path,) = layout.model_files(tower, "onnx-int4")
    model = onnx.load(str(path))
    choice = Manifest.load(layout.manifest).artifact(tower, "onnx-int4").mixed_precision
    four_bit = [node for node in model.graph.node if node.op_type in FOUR_BIT_OPS]
    assert len(four_bit) == choice["quantizable_layers"] - len(choice["kept_layers"]) > 0
    # The quantizer names a 4-bit node after the one it replaces.
    kept_layers = set(choice["kept_layers"])
    assert not any(node.name.removesuffix("_Q4") in kept_layers for node in four_bit)
    assert {o.domain: o.version for o in model.opset_import}[""] == INT4_OPSET
    manifest = Manifest.load(layout.manifest)
    layers = quantizer(manifest.artifact(tower, "onnx-sim"), Int4Options(), StageContext(manifest, layout.root)).layers
    kept_matmuls = [name for name in kept_layers if layers[name] == "MatMul"]
    assert choice["kept_as"] == "int8"
    quantized = {node.name for node in model.graph.node if node.op_type == "MatMulInteger"}
    assert all(f"{name}_quant" in quantized for name in kept_matmuls), (kept_matmuls, quantized)
    onnx.checker.check_model(model)  # ops converted to opset 21, not only stamped with it


def test_the_word_table_is_4_bit_unless_kept_float_and_the_size_follows(tiny_bundle):
    layout = BundleLayout(tiny_bundle)
    (int4,) = layout.model_files("text", "onnx-int4")
    (sim,) = layout.model_files("text", "onnx-sim")
    names = {node.name for node in onnx.load(str(int4)).graph.node}
    word_table = "/bert/embeddings/word_embeddings/Gather"
    kept_layers = Manifest.load(layout.manifest).artifact("text", "onnx-int4").mixed_precision["kept_layers"]
    if word_table in kept_layers:
        assert word_table in names and int4.stat().st_size < sim.stat().st_size
    else:
        # The word table is most of a tiny text tower: 4 bits and a scale per 32 values is under a sixth of fp32.
        assert word_table + "_Q4" in names and int4.stat().st_size < sim.stat().st_size / 3


def test_parity_meets_the_int8_tolerance(tiny_bundle):
    report = json.loads(BundleLayout(tiny_bundle).parity_json.read_text())
    (stage,) = [s for s in report["stages"] if s["stage"] == "onnx-int4"]
    for tower in ("visual", "text"):
        assert stage[tower]["cosine_min"] >= DEFAULT_TARGETS["int8"].cosine_min
        assert stage[tower]["cosine_mean"] >= DEFAULT_TARGETS["int8"].cosine_mean
