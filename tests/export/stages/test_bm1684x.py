"""bm1684x-f16 and bm1684x-int8: the tiny models compiled for the BM1684X and checked in tpu-mlir's simulators
(needs `make sophgo-env`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from converters.app.bundle import Bundle
from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest, schema as manifest_schema
from converters.app.runtimes.bm1684x import BmTower
from converters.bench.run import device_estimates
from converters.data import PARITY_SET_DIR
from converters.errors import ArtifactError, ConversionError
from converters.export import tpu_mlir
from converters.export.config import load_config
from converters.export.pipeline import ConvertRequest, convert
from converters.progress import ignore
from converters.export.bundle_parity import run_parity
from converters.validate.report import render_markdown
from tests.conftest import TINY_MODELS, convert_random
from tests.search.test_commands import invoke

pytestmark = pytest.mark.sophgo
BM_STAGES = ("bm1684x-f16", "bm1684x-int8")
STAGES = ("onnx-fp32", "onnx-sim", *BM_STAGES)


@pytest.fixture(scope="module", params=TINY_MODELS)
def bm_bundle(request, tmp_path_factory) -> tuple[str, Path]:
    """A tiny model's bundle with both bmodel precisions, parity passed; tests must copy it before changing it."""
    out = tmp_path_factory.mktemp(f"{request.param}-bm") / "bundle"
    report = convert_random(request.param, out, stages=STAGES).parity
    assert report.passed, render_markdown(report)
    return request.param, out


def copied(bundle: Path, tmp_path: Path) -> tuple[Path, Manifest]:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy, Manifest.load(BundleLayout(copy).manifest)


def test_both_precisions_pass_parity_in_both_layers(bm_bundle):
    model, bundle = bm_bundle
    report = json.loads(BundleLayout(bundle).parity_json.read_text())
    config = load_config(model)
    for stage in BM_STAGES:
        (row,) = [s for s in report["stages"] if s["stage"] == stage]
        assert row["runtime"] == "bmruntime"
        assert row["visual"]["samples"] == report["parity_set"]["images"]
        assert row["text"]["samples"] == report["parity_set"]["captions"]
        options, sample = config.stage_options(stage), config.cmodel_parity
        cmodel = [(r["tower"], r["batch"], r["measured"]["samples"]) for r in report["cmodel"] if r["stage"] == stage]
        assert cmodel == [("visual", b, sample.images) for b in options.image_batch_sizes] + [
            ("text", b, sample.captions) for b in options.text_batch_sizes]
    assert "BM1684X: bit-accurate simulator" in BundleLayout(bundle).parity_md.read_text()


def test_the_manifest_describes_each_bmodel(bm_bundle):
    model, bundle = bm_bundle
    layout = BundleLayout(bundle)
    data = json.loads(layout.manifest.read_text())
    jsonschema.validate(data, manifest_schema())
    manifest = Manifest.load(layout.manifest)
    config = load_config(model)
    for stage in BM_STAGES:
        for tower, batches in (("visual", config.stage_options(stage).image_batch_sizes),
                               ("text", config.stage_options(stage).text_batch_sizes)):
            artifact = manifest.artifact(tower, stage)
            description = artifact.bmodel
            assert description["chip"] == "bm1684x" and description["compiler"] == "tpu-mlir 1.30.2"
            assert [net["batch"] for net in description["nets"]] == list(batches)
            names = [path.name for path in artifact.files]
            assert [net["file"] for net in description["nets"]] + [description["lowered_graph"]] == names[:-1]
            assert all(net["estimated_ms"] > 0 for net in description["nets"])
            (tensor,) = artifact.spec.inputs
            if tower == "text":
                # The device runs fixed shapes: ids padded to the context length, as int32.
                assert (tensor.dtype, tensor.shape) == ("int32", ("batch", config.context_length))
            else:
                assert tensor.shape == ("batch", 3, config.image_resolution, config.image_resolution)


def test_a_text_bmodel_takes_only_padded_ids_and_only_its_batch_sizes(bm_bundle):
    _, bundle = bm_bundle
    artifact = Manifest.load(BundleLayout(bundle).manifest).artifact("text", "bm1684x-f16")
    runner = BmTower(artifact, threads=1)
    try:
        with pytest.raises(ValueError, match="takes \\[N, 52\\]"):
            runner.embed(np.array([[101, 872, 102]]))
    finally:
        runner.close()
    with pytest.raises(ArtifactError, match=r"batch sizes \[1, 4\], not 8"):
        BmTower(artifact, threads=1, simulator="cmodel", batch=8)


def test_a_cmodel_filter_matching_no_bmodel_is_an_error_not_an_empty_check(bm_bundle, tmp_path):
    model, bundle = bm_bundle
    bundle, _ = copied(bundle, tmp_path)
    raw = load_config(model).model_dump()
    raw["cmodel_parity"]["batch_sizes"] = (32,)
    config = type(load_config(model)).model_validate(raw)
    with pytest.raises(ArtifactError, match="matches none of"):
        run_parity(config, BundleLayout(bundle), ignore)


def test_scaled_weights_in_the_lowered_graph_fail_parity(bm_bundle, tmp_path):
    model, bundle = bm_bundle
    bundle, manifest = copied(bundle, tmp_path)
    artifact = manifest.artifact("visual", "bm1684x-f16")
    weights = artifact.files[-1]
    with np.load(weights) as data:
        arrays = {key: data[key] for key in data.files}
    last = list(arrays)[-1]  # the output projection comes last
    arrays[last] = (arrays[last].astype(np.float32) * 1000).astype(arrays[last].dtype)
    np.savez(weights, **arrays)
    manifest.record(artifact, manifest.entry("visual", "bm1684x-f16").inputs_digest)
    manifest.save()
    report = run_parity(load_config(model), BundleLayout(bundle), ignore)
    (row,) = [s for s in report.stages if s.stage == "bm1684x-f16"]
    assert not row.visual.passed and row.text.passed
    # The bmodels were left alone: the bit-accurate rows still pass.
    assert all(r.passed for r in report.cmodel)


@pytest.mark.parametrize("bm_bundle", ["tiny-vit"], indirect=True)
def test_the_cmodel_layer_runs_the_bmodel_itself(bm_bundle, tmp_path):
    """An INT8 bmodel in place of the F16 one: the lowered graph still passes, the bit-accurate row must not."""
    model, bundle = bm_bundle
    bundle, manifest = copied(bundle, tmp_path)
    f16, int8 = (manifest.artifact("visual", stage) for stage in BM_STAGES)
    shutil.copyfile(int8.files[0], f16.files[0])
    manifest.record(f16, manifest.entry("visual", "bm1684x-f16").inputs_digest)
    manifest.save()
    report = run_parity(load_config(model), BundleLayout(bundle), ignore)
    assert all(s.passed for s in report.stages)
    failing = [(r.stage, r.tower, r.batch) for r in report.cmodel if not r.passed]
    assert failing == [("bm1684x-f16", "visual", 1)]
    assert not report.passed


def test_int8_keeps_op_types_in_f16_when_all_int8_misses_the_target(tmp_path):
    config = load_config("tiny-vit")
    raw = config.model_dump()
    # tiny-vit's all-INT8 visual tower is at 0.994 on calibration samples: a target above it makes the fallback work.
    raw["stages"]["bm1684x_int8"]["float_fallback"] |= {"cosine_min": 0.9990, "cosine_mean": 0.9993}
    strict = type(config).model_validate(raw)
    out = tmp_path / "bundle"
    request = ConvertRequest(strict, out, "random", out / "cache", stages=("onnx-fp32", "onnx-sim", "bm1684x-int8"))
    conversion = convert(request, ignore)
    choice = conversion.manifest.artifact("visual", "bm1684x-int8").mixed_precision
    assert choice["kept_as"] == "F16" and choice["kept_layers"], choice
    assert choice["chosen"]["cosine_min"] > choice["all_quantized"]["cosine_min"]
    assert all(kind.startswith("top.") for kind in choice["kept_layers"])
    lowered = conversion.manifest.artifact("visual", "bm1684x-int8").files[-2].read_text()
    kept = choice["kept_layers"][0].replace("top.", "tpu.")
    results = [line.rsplit("->", 1)[-1] for line in lowered.splitlines() if f'"{kept}"' in line]
    assert results and all("f16" in out and "i8" not in out for out in results), results[:2]


@pytest.mark.parametrize("bm_bundle", ["tiny-vit"], indirect=True)
@pytest.mark.parametrize("stage", BM_STAGES)
def test_the_search_engine_indexes_and_searches_with_a_bmodel_stage(bm_bundle, tmp_path, stage):
    _, bundle = bm_bundle
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat_chelsea.jpg", "grass.jpg", "coffee_cup.jpg"):
        shutil.copy(PARITY_SET_DIR / "images" / name, photos / name)
    made = invoke("index", photos, "--bundle", bundle, "--stage", stage, "--index", tmp_path / "index")
    assert made.exit_code == 0, made.output
    found = invoke("search", "--image", photos / "grass.jpg", "--index", tmp_path / "index", "--json")
    assert found.exit_code == 0, found.output
    data = json.loads(found.stdout)
    assert data["stage"] == stage and Path(data["hits"][0]["path"]).name == "grass.jpg"
    assert invoke("search", "海边的日落", "--index", tmp_path / "index").exit_code == 0


def test_bench_gives_each_bmodel_the_compilers_estimate_labelled_as_one(bm_bundle):
    _, bundle = bm_bundle
    rows = device_estimates(Bundle.open(bundle))
    assert {(r.artifact, r.tower) for r in rows} == {(s, t) for s in BM_STAGES for t in ("visual", "text")}
    assert all(r.estimated_ms > 0 and r.model_mb > 0 for r in rows)


def test_a_failing_tpu_mlir_tool_is_one_error_with_its_log(tmp_path):
    garbage = tmp_path / "tower.onnx"
    garbage.write_bytes(b"not an onnx file")
    with pytest.raises(ConversionError, match="model_transform failed") as raised:
        tpu_mlir.transform(garbage, "visual", [1, 3, 32, 32], tmp_path / "work", "visual bm1684x-f16 batch 1")
    name, text = raised.value.log
    assert name == "visual-bm1684x-f16-batch-1-model_transform.log" and "Traceback" in text
