"""onnxruntime sessions flush denormal floats, as the manifest tells an app to, and refuse options they do not know."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.app.bundle import Bundle
from converters.app.runtimes.onnx_runtime import GPU_PROVIDER, RUNTIME_OPTIONS, OnnxTower
from converters.app.specs import STAGES
from converters.errors import ArtifactError, UserError

DENORMAL = 1e-39  # below float32's smallest normal number, 1.2e-38


def identity_matmul(n: int) -> bytes:
    weight = numpy_helper.from_array(np.eye(n, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_every_onnx_artifact_of_a_bundle_is_run_with_denormals_flushed(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    onnx_stages = [spec.name for spec in STAGES if spec.runtime == "onnxruntime" and spec.name in bundle.manifest.stages()]
    assert onnx_stages
    for stage in onnx_stages:
        for tower in (bundle.embedder(stage).visual, bundle.embedder(stage).text):
            assert tower.session.get_session_options().get_session_config_entry("session.set_denormal_as_zero") == "1"
        assert bundle.manifest.artifact("visual", stage).runtime_options == RUNTIME_OPTIONS


@pytest.mark.parametrize("threads", [1, 2])
def test_the_option_makes_onnxruntime_compute_with_denormals_flushed(threads):
    """In a fresh process (the flags are per thread and onnxruntime sets the caller's when the process's first
    session asks for them, so a test process's history would decide): with the option a denormal input is read
    as zero; without it, it is kept."""
    code = (
        "import numpy as np, sys; sys.path.insert(0, {here!r}); from test_onnx_runtime import identity_matmul\n"
        "from converters.app.runtimes.onnx_runtime import session\n"
        "x = np.full((256, 256), {denormal!r}, np.float32)\n"
        "print(float((session(identity_matmul(256), {threads}, {options!r}).run(None, {{'x': x}})[0] == 0).mean()))"
    )
    here = str(Path(__file__).parent)
    flushed = {
        name: float(subprocess.run(
            [sys.executable, "-c", code.format(here=here, denormal=DENORMAL, threads=threads, options=options)],
            capture_output=True, text=True, check=True).stdout)
        for name, options in (("on", RUNTIME_OPTIONS), ("off", None))
    }
    assert flushed == {"on": 1.0, "off": 0.0}


def test_an_unknown_runtime_option_is_refused(tiny_bundle):
    artifact = Bundle.open(tiny_bundle).manifest.artifact("text", "onnx-int8")
    with pytest.raises(ArtifactError, match="knows no onnxruntime option"):
        OnnxTower(dataclasses.replace(artifact, runtime_options={"session.use_magic": True}))


def test_a_gpu_tower_is_refused_where_onnxruntime_has_no_cuda(tiny_bundle):
    """This machine's onnxruntime is the CPU build: asked for the GPU, it would run on the CPU and say nothing."""
    artifact = Bundle.open(tiny_bundle).manifest.artifact("visual", "onnx-fp16")
    with pytest.raises(UserError, match="has no CUDAExecutionProvider .*onnxruntime-gpu"):
        OnnxTower(artifact, gpu=True)


def test_a_gpu_tower_that_onnxruntime_would_put_on_the_cpu_is_refused(tiny_bundle, monkeypatch):
    """An onnxruntime-gpu whose CUDA libraries cannot be loaded lists the provider but makes a CPU session, with a
    warning; stood in for by the CPU build told it has the provider."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [GPU_PROVIDER, "CPUExecutionProvider"])
    artifact = Bundle.open(tiny_bundle).manifest.artifact("visual", "onnx-fp16")
    with pytest.raises(UserError, match="could not start CUDA .* on CPUExecutionProvider"):
        OnnxTower(artifact, gpu=True)
