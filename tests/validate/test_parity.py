"""The parity check refuses what cosine similarity alone would let through, and checks as the pipeline goes."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from filelock import FileLock
from onnx import helper, numpy_helper

from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.errors import UserError
from converters.export.config import load_config
from converters.progress import ignore
from converters.validate.fidelity import DEFAULT_TARGETS, measure
from converters.export.bundle_parity import run_parity
from tests.conftest import convert_random

ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "converters", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def break_output(model_file: Path, how: str) -> None:
    """Rewrite an ONNX tower so that its embedding is NaN, zero, 1000x too large, or half as long."""
    model = onnx.load(str(model_file))
    graph = model.graph
    output = graph.output[0]
    broken = output.name + "_broken"
    for node in graph.node:
        node.output[:] = [broken if name == output.name else name for name in node.output]
    if how == "half":
        graph.initializer.extend([
            numpy_helper.from_array(np.array([0], np.int64), "half_start"),
            numpy_helper.from_array(np.array([output.type.tensor_type.shape.dim[1].dim_value // 2], np.int64), "half_end"),
            numpy_helper.from_array(np.array([1], np.int64), "half_axis"),
        ])
        graph.node.append(helper.make_node("Slice", [broken, "half_start", "half_end", "half_axis"], [output.name]))
        output.type.tensor_type.shape.dim[1].dim_param = "half"
    else:
        factor = {"nan": np.nan, "zero": 0.0, "x1000": 1000.0}[how]
        graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "factor"))
        graph.node.append(helper.make_node("Mul", [broken, "factor"], [output.name]))
    onnx.save(model, str(model_file))


def copy_with_broken(tiny_bundle: Path, tmp_path: Path, stage: str, tower: str, how: str) -> Path:
    """A copy of the bundle whose `tower.stage` is broken, the manifest updated so that the sha256 checks pass."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = Manifest.load(BundleLayout(bundle).manifest)
    artifact = manifest.artifact(tower, stage)
    break_output(artifact.model_file, how)
    manifest.record(artifact, manifest.entry(tower, stage).inputs_digest)
    manifest.save()
    return bundle


@ON_TINY_VIT
@pytest.mark.parametrize("how, failure", [
    ("nan", "not finite"), ("zero", "all zeros"), ("x1000", "embedding norm off"), ("half", "output shape"),
])
@pytest.mark.parametrize("stage, tower", [("onnx-int8", "visual"), ("onnx-sim", "text")])
def test_a_broken_artifact_fails_parity_with_exit_3(tiny_bundle, tmp_path, stage, tower, how, failure):
    bundle = copy_with_broken(tiny_bundle, tmp_path, stage, tower, how)
    result = run_cli("parity", "tiny-vit", "--out", bundle)
    assert result.returncode == 3, result.stderr
    report = json.loads((bundle / "parity.json").read_text())
    (broken,) = [s for s in report["stages"] if s["stage"] == stage]
    assert not broken["passed"] and any(failure in f and f.startswith(tower) for f in broken["failures"])
    assert all(s["passed"] for s in report["stages"] if s["stage"] != stage)


def relabelled(bundle: Path, stage: str, tower: str, role: str, normalize: bool) -> None:
    """The bundle's `tower.stage` said to give `role`, its graph given an L2 normalization or not."""
    manifest = Manifest.load(BundleLayout(bundle).manifest)
    artifact = manifest.artifact(tower, stage)
    if normalize:
        model = onnx.load(str(artifact.model_file))
        output = model.graph.output[0]
        for node in model.graph.node:
            node.output[:] = [output.name + "_raw" if name == output.name else name for name in node.output]
        model.graph.node.append(helper.make_node("LpNormalization", [output.name + "_raw"], [output.name], axis=1, p=2))
        onnx.save(model, str(artifact.model_file))
    (embedding,) = artifact.spec.outputs
    spec = dataclasses.replace(artifact.spec, outputs=(dataclasses.replace(embedding, role=role),))
    manifest.record(dataclasses.replace(artifact, spec=spec), manifest.entry(tower, stage).inputs_digest)
    manifest.save()


@ON_TINY_VIT
@pytest.mark.parametrize("role, normalize, passes", [
    ("normalized_embedding", True, True), ("normalized_embedding", False, False), ("embedding", True, False),
])
def test_a_normalized_output_is_judged_against_the_normalized_reference(tiny_bundle, tmp_path, role, normalize, passes):
    """rknn-int8 gives L2-normalized embeddings: its norm is still checked, against 1, and a tower that says one
    thing and gives the other fails on its norm."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    relabelled(bundle, "onnx-int8", "visual", role, normalize)
    report = run_parity(load_config("tiny-vit"), BundleLayout(bundle), ignore)
    (row,) = [s for s in report.stages if s.stage == "onnx-int8"]
    assert row.passed == passes, row.failures
    assert passes or any("embedding norm off" in failure for failure in row.failures)


def test_nan_fails_every_number_check():
    reference = np.ones((3, 4), np.float32)
    for candidate in (np.full((3, 4), np.nan, np.float32), np.zeros((3, 4), np.float32), reference[:, :2]):
        assert not measure(reference, candidate, DEFAULT_TARGETS["fp32"]).passed
    assert measure(reference, reference.copy(), DEFAULT_TARGETS["fp32"]).passed


@ON_TINY_VIT
def test_a_child_is_not_built_on_a_parent_that_fails_parity(tiny_bundle, tmp_path):
    bundle = copy_with_broken(tiny_bundle, tmp_path, "onnx-sim", "visual", "x1000")
    manifest = Manifest.load(BundleLayout(bundle).manifest)
    manifest.forget("visual.onnx-int8")
    manifest.save()
    events = []
    conversion = convert_random("tiny-vit", bundle, events, stages=("onnx-fp32", "onnx-sim", "onnx-int8"))
    not_built = [(e.key, e.reason) for e in events if getattr(e, "state", None) == "not built"]
    assert not_built == [("visual.onnx-int8", "its parent visual.onnx-sim fails parity")]
    assert "visual.onnx-int8" not in conversion.manifest.artifacts
    assert not conversion.parity.passed


@ON_TINY_VIT
def test_parity_waits_for_no_one_it_refuses_while_a_conversion_holds_the_bundle(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    with FileLock(BundleLayout(bundle).lock):
        with pytest.raises(UserError, match="Another conversion or parity check is writing"):
            run_parity(load_config("tiny-vit"), BundleLayout(bundle), ignore)


@ON_TINY_VIT
def test_parity_with_the_cached_reference_imports_no_torch(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    code = (
        "import sys; from converters.export.config import load_config; from converters.app.layout import BundleLayout\n"
        "from converters.progress import ignore; from converters.export.bundle_parity import run_parity\n"
        f"from pathlib import Path; assert run_parity(load_config('tiny-vit'), BundleLayout(Path({str(bundle)!r})), ignore).passed\n"
        "loaded = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'cn_clip', 'pnnx'))\n"
        "assert not loaded, loaded"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr


@pytest.mark.parametrize("tiny_bundle", ["tiny-rn"], indirect=True)
def test_parity_of_another_models_bundle_names_the_mismatch(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "reference.npz").unlink()
    result = run_cli("parity", "tiny-vit", "--out", bundle)
    assert result.returncode == 2 and "converted from model 'tiny-rn', not 'tiny-vit'" in result.stderr
    assert "changed" not in result.stderr and "Traceback" not in result.stderr


@ON_TINY_VIT
def test_parity_never_writes_through_a_symlinked_golden_folder(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    outside = tmp_path / "outside"
    outside.mkdir()
    names = [p.name for p in (bundle / "golden").iterdir()]
    for name in names:
        (outside / name).write_bytes(b"someone else's file")
    shutil.rmtree(bundle / "golden")
    (bundle / "golden").symlink_to(outside, target_is_directory=True)
    assert run_parity(load_config("tiny-vit"), BundleLayout(bundle), ignore).passed
    assert all((outside / name).read_bytes() == b"someone else's file" for name in names)
    assert not (bundle / "golden").is_symlink() and sorted(p.name for p in (bundle / "golden").iterdir()) == sorted(names)


@ON_TINY_VIT
def test_parity_of_a_bundle_without_model_takes_the_model_from_its_manifest(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    result = run_cli("parity", "--out", bundle)
    assert result.returncode == 0, result.stderr
    assert "# Parity: tiny-vit — PASS" in result.stdout
    assert "Give MODEL, or --bundle" in run_cli("parity", cwd=tmp_path).stderr


def test_parity_of_a_bundle_without_artifacts_is_an_error_not_a_pass(tmp_path):
    with pytest.raises(UserError, match="--stages onnx-fp32,onnx-sim"):
        convert_random("tiny-vit", tmp_path / "bundle", stages=("onnx-sim",))
    result = run_cli("parity", "--out", tmp_path / "bundle")
    assert result.returncode == 2 and "lists no artifacts" in result.stderr
