"""The onnx-fp16 stage on both tiny architectures: fp16 weights, float32 inputs and outputs, and overflow refused."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from converters.app.artifact import Artifact
from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.app.runtimes.onnx_runtime import OnnxTower, session
from converters.export.context import StageContext
from converters.export.stages.onnx_fp16 import Fp16Options
from converters.export.stages import onnx_fp16
from converters.validate.fidelity import DEFAULT_TARGETS, measure


@pytest.mark.parametrize("tower", ["visual", "text"])
def test_weights_are_fp16_and_the_app_still_feeds_and_reads_float32(tiny_bundle, tower):
    layout = BundleLayout(tiny_bundle)
    (fp16,) = layout.model_files(tower, "onnx-fp16")
    (sim,) = layout.model_files(tower, "onnx-sim")
    model = onnx.load(str(fp16))
    float_weights = [t for t in model.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert float_weights and all(t.data_type == TensorProto.FLOAT16 for t in float_weights)
    assert fp16.stat().st_size < 0.6 * sim.stat().st_size
    running = session(str(fp16))
    spec = Manifest.load(layout.manifest).artifact(tower, "onnx-fp16").spec
    assert [i.type for i in running.get_inputs()] == [f"tensor({'int64' if tower == 'text' else 'float'})"]
    assert [o.type for o in running.get_outputs()] == ["tensor(float)"]
    assert [i.name for i in running.get_inputs()] == [t.name for t in spec.inputs]


def test_the_manifest_names_the_execution_providers_the_files_are_for(tiny_bundle):
    artifact = Manifest.load(BundleLayout(tiny_bundle).manifest).artifact("visual", "onnx-fp16")
    assert artifact.precision == "fp16" and "CUDAExecutionProvider" in artifact.execution_providers


def test_weights_beyond_fp16_range_fail_parity(tiny_bundle, tmp_path):
    """float16 stops at ±65504: a tower with larger weights converts (clipped), and parity must refuse it.

    Activations beyond that range are not caught here: onnxruntime's CPU provider computes the matrix
    products in fp32 (it has no fp16 kernels for them on x86), so only a GPU's run would overflow."""
    layout = BundleLayout(tiny_bundle)
    parent = Manifest.load(layout.manifest).artifact("text", "onnx-sim")
    model = onnx.load(str(parent.model_file))
    last_matmul = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")][-1]
    weights = {t.name: t for t in model.graph.initializer}
    name = next(i for i in last_matmul.input if i in weights)
    values = numpy_helper.to_array(weights[name]).copy()
    values.flat[0] = 1e6  # one trained-like outlier weight, beyond fp16's range
    weights[name].CopyFrom(numpy_helper.from_array(values, name))
    scaled = tmp_path / "text.sim.onnx"
    onnx.save(model, scaled)
    scaled_parent = Artifact("text", "onnx-sim", (scaled,), parent.spec)
    converted = onnx_fp16.run(scaled_parent, Fp16Options(), StageContext(Manifest.load(layout.manifest), tmp_path))
    ids = np.array([[101, 3862, 6804, 4638, 102], [101, 4344, 102, 0, 0]])
    reference = OnnxTower(scaled_parent).embed(ids)
    measured = measure(reference, OnnxTower(converted).embed(ids), DEFAULT_TARGETS["fp16"])
    assert measured.failures and not measured.passed
