"""rknn-fp16 and rknn-int8: the tiny models built for the RK3588 and checked in rknn-toolkit2's simulator (its
environment is made on first use, about 30 s)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import jsonschema
import onnx
import pytest
from onnx import numpy_helper

from converters.app.artifact import Artifact
from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest, schema as manifest_schema
from converters.app.runtimes import open_tower
from converters.app.runtimes.onnx_runtime import OnnxTower
from converters.errors import ArtifactError, ConversionError
from converters.export.bundle_parity import run_parity
from converters.export.config import load_config
from converters.export.context import StageContext
from converters.export.mixed_precision import FloatFallback
from converters.export.stages import rknn
from converters.progress import ignore
from converters.validate.fidelity import DEFAULT_TARGETS, measure
from converters.validate.report import render_markdown
from tests.conftest import TINY_MODELS, convert_random
from tests.export.stages.test_bm1684x import copied

pytestmark = pytest.mark.rknn
RKNN_STAGES = ("rknn-fp16", "rknn-int8")


@pytest.fixture(scope="module", params=TINY_MODELS)
def rknn_bundle(request, tmp_path_factory) -> tuple[str, Path]:
    """A tiny model's bundle with both rknn stages, parity passed; tests must copy it before changing it."""
    out = tmp_path_factory.mktemp(f"{request.param}-rknn") / "bundle"
    report = convert_random(request.param, out, stages=("onnx-fp32", "onnx-sim", *RKNN_STAGES)).parity
    assert report.passed, render_markdown(report)
    return request.param, out


def test_both_stages_pass_parity_in_the_simulator_on_the_whole_parity_set(rknn_bundle):
    _, bundle = rknn_bundle
    report = json.loads(BundleLayout(bundle).parity_json.read_text())
    for stage in RKNN_STAGES:
        (row,) = [s for s in report["stages"] if s["stage"] == stage]
        assert row["runtime"] == "rknnrt"
        assert row["visual"]["samples"] == report["parity_set"]["images"]
        assert row["text"]["samples"] == report["parity_set"]["captions"]


def test_the_manifest_describes_each_rknn_for_the_board(rknn_bundle):
    model, bundle = rknn_bundle
    layout = BundleLayout(bundle)
    data = json.loads(layout.manifest.read_text())
    jsonschema.validate(data, manifest_schema())
    manifest, config = Manifest.load(layout.manifest), load_config(model)
    for stage in RKNN_STAGES:
        for tower in ("visual", "text"):
            artifact = manifest.artifact(tower, stage)
            description = artifact.rknn
            (entry,) = description["files"]
            assert entry["platform"] == "rk3588" and entry["reproducible"]
            assert artifact.model_file.name == f"{tower}.{stage.replace('-', '.')}.rk3588.rknn"
            assert description["toolkit"] == "rknn-toolkit2 2.5.0" and description["mean_std_folded"] is False
            (tensor,) = artifact.spec.inputs
            # int8 gives the embedding L2-normalized (an int8 output would clip where calibration ended); parity
            # judged its norm against 1.
            assert artifact.spec.outputs[0].role == ("normalized_embedding" if stage == "rknn-int8" else "embedding")
            if tower == "text":
                assert (tensor.dtype, tensor.shape) == ("int64", (1, config.context_length))
                assert description["cpu_ops"], "the text tower's id mask and embedding run on the CPU"
            else:
                assert description["input"]["layout"] == "nchw" and description["native_input_layout"] == "nhwc"
                if stage == "rknn-int8":  # the compiler makes the int8 model's input int8 on the board
                    assert description["input"]["native_dtype"] == "int8"
                assert description["cpu_ops"] == []
        assert (manifest.artifact("visual", "rknn-int8").files[1].name == "visual.rknn.int8.calibration.npy")


def test_a_swapped_rknn_file_fails_the_sha256_proof(rknn_bundle, tmp_path):
    """The int8 file in place of the fp16 one (manifest updated to match): the simulator cannot run the shipped
    file, and the rebuild proves it is not what the recorded inputs make."""
    model, bundle = rknn_bundle
    bundle, manifest = copied(bundle, tmp_path)
    fp16, int8 = (manifest.artifact("visual", stage) for stage in RKNN_STAGES)
    shutil.copyfile(int8.model_file, fp16.model_file)
    manifest.record(fp16, manifest.entry("visual", "rknn-fp16").inputs_digest)
    manifest.save()
    with pytest.raises(ArtifactError, match="is not what its recorded inputs build"):
        run_parity(load_config(model), BundleLayout(bundle), ignore)


def output_projection(model: onnx.ModelProto) -> onnx.TensorProto:
    """The weights of the tower's last matrix product (its output projection)."""
    weights = {t.name: t for t in model.graph.initializer}
    last = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")][-1]
    return weights[next(i for i in last.input if i in weights)]


@pytest.mark.parametrize("rknn_bundle", ["tiny-vit"], indirect=True)
def test_weights_beyond_fp16_range_fail_parity(rknn_bundle, tmp_path):
    """A tower with one weight beyond float16's range builds (the toolkit says nothing) and the simulation,
    proven to be of the file built, must fail against the float model."""
    _, bundle = rknn_bundle
    manifest = Manifest.load(BundleLayout(bundle).manifest)
    parent = manifest.artifact("visual", "onnx-sim")
    model = onnx.load(str(parent.model_file))
    projection = output_projection(model)
    values = numpy_helper.to_array(projection).copy()
    values.flat[0] = 1e6
    projection.CopyFrom(numpy_helper.from_array(values, projection.name))
    scaled = tmp_path / "visual.sim.onnx"
    onnx.save(model, scaled)
    scaled_parent = Artifact("visual", "onnx-sim", (scaled,), parent.spec)
    (tmp_path / "work").mkdir()
    converted = rknn.run(scaled_parent, rknn.RknnOptions(), StageContext(manifest, tmp_path / "work"), stage="rknn-fp16")
    pixels = StageContext(manifest, tmp_path).calibration_inputs("visual", 4)
    try:
        simulated = open_tower(converted).embed(pixels)
    except ArtifactError as error:
        # Sometimes the simulator will not run such a build at all (init_runtime: "RKNN model does not exist",
        # seen once in a fresh CI run): a refusal too, never a pass.
        assert "failed while simulating" in str(error)
        return
    assert not measure(OnnxTower(scaled_parent).embed(pixels), simulated, DEFAULT_TARGETS["fp16"]).passed


@pytest.mark.parametrize("rknn_bundle", ["tiny-vit"], indirect=True)
def test_an_op_on_the_cpu_is_refused_before_building_naming_it(rknn_bundle, tmp_path):
    """RK3568 runs every attention softmax on its CPU: refused, naming the tower, platform, op and option."""
    _, bundle = rknn_bundle
    manifest = Manifest.load(BundleLayout(bundle).manifest)
    parent = manifest.artifact("visual", "onnx-sim")
    options = rknn.RknnOptions(platforms=("rk3568",))
    with pytest.raises(ConversionError, match=r"visual tower on the rk3568's CPU.*exSoftmax13.*allow_cpu_ops") as caught:
        rknn.run(parent, options, StageContext(manifest, tmp_path), stage="rknn-fp16")
    assert not list(tmp_path.glob("*.rknn")), "nothing is built"
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("rknn_bundle", ["tiny-rn"], indirect=True)
def test_weights_scaled_after_calibration_are_refused(rknn_bundle, tmp_path):
    """The onnx-sim tower's output projection ×1000 after the int8 file was calibrated and built from it (the
    manifest updated to match the new file): the int8 file can no longer be proven, so parity refuses it."""
    model, bundle = rknn_bundle
    bundle, manifest = copied(bundle, tmp_path)
    parent = manifest.artifact("visual", "onnx-sim")
    graph = onnx.load(str(parent.model_file))
    projection = output_projection(graph)
    projection.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(projection) * 1000, projection.name))
    onnx.save(graph, parent.model_file)
    manifest.record(parent, manifest.entry("visual", "onnx-sim").inputs_digest)
    manifest.save()
    with pytest.raises(ArtifactError, match=r"rebuilt from visual\.sim\.onnx.*not the one it was built from"):
        run_parity(load_config(model), BundleLayout(bundle), ignore)


@pytest.mark.parametrize("rknn_bundle", ["tiny-vit"], indirect=True)
def test_the_float16_tensors_are_ranked_in_one_analysis_then_bisected(rknn_bundle, tmp_path, monkeypatch):
    """A target the all-int8 tower misses: the tensors are ranked by one accuracy_analysis, not one build each (six
    hours for ViT-B-16's visual tower), and the kept prefix is found by bisection over that ranking."""
    _, bundle = rknn_bundle
    manifest = Manifest.load(BundleLayout(bundle).manifest)
    parent = manifest.artifact("visual", "onnx-sim")
    builds, analysed = [], {}
    trial, read = rknn._Builder.trial, rknn.single_layer_cosines
    monkeypatch.setattr(rknn._Builder, "trial", lambda self, kept, folder: builds.append(kept) or trial(self, kept, folder))
    monkeypatch.setattr(rknn, "single_layer_cosines", lambda table: analysed.update(read(table)) or dict(analysed))
    strict = rknn.RknnInt8Options(float_fallback=FloatFallback(cosine_min=0.99999, cosine_mean=0.99999))
    (tmp_path / "work").mkdir()
    converted = rknn.run(parent, strict, StageContext(manifest, tmp_path / "work"), stage="rknn-int8")
    choice = converted.mixed_precision
    assert choice["ranked_by"].startswith("rknn-toolkit2 accuracy_analysis") and choice["sensitivity"] == []
    assert choice["kept_layers"], "the all-int8 tower misses a cosine of 0.99999"
    # Kept in the analysis's order, worst first: tensors it named, not model order under a cosine of 1 for all.
    kept_cosines = [analysed.get(name, 1.0) for name in choice["kept_layers"]]
    assert choice["kept_layers"][0] in analysed and kept_cosines == sorted(kept_cosines)
    assert int(re.search(r"\((\d+) of \d+ tensors", choice["ranked_by"]).group(1)) > 0
    # The all-int8 trial, the bisection's, and the chosen mix built once more by the fallback.
    assert len(builds) <= 1 + math.ceil(math.log2(choice["quantizable_layers"])) + 1
    assert builds[0] == frozenset() and builds[-1] == frozenset(choice["kept_layers"])


def test_the_analysis_table_is_read_whatever_the_toolkit_colours():
    table = ("[Input] pixels      1.00000 | 0.00000   1.00000 | 0.00000\n"
             "[Conv] /a/Conv_output_0      0.99986 | 0.30396   0.99991 | 0.24522\n"
             "[Add] /b/Add_1_output_0-rs   0.99788 | 2.26992   \x1b[1;33m0.99824\x1b[0m | 2.07916\n"
             "[exNorm] _v_695_tp_rs        nan | nan   nan | nan\n"
             "[Split] /c/Split_output_0    0.99 | 0.1   - | -\n"
             "layer_name     simulator_error\n")
    assert rknn.single_layer_cosines(table) == {"pixels": 1.0, "/a/Conv_output_0": 0.99991,
                                                "/b/Add_1_output_0-rs": 0.99824, "_v_695_tp_rs": -1.0,
                                                "/c/Split_output_0": -1.0}
