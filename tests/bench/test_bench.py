"""`bench --quick` on the tiny bundles: the structure of bench.json and bench.md, never the times they hold."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from converters.app.bundle import Bundle
from converters.app.layout import BundleLayout
from converters.bench.flops import graph_gflop
from converters.bench.goals import image_throughput_goal, passed_stages, query_path_goal, text_query_goal
from converters.bench.report import Measurement, Memory, QueryPath, TowerBench
from converters.bench.search import CASES
from converters.bench.timing import Budget, Timing, time_calls
from converters.bench.tower_speed import image_label, query_label, text_lengths
from converters.errors import ArtifactError
from converters.export.config import load_config
from converters.export.pipeline import DEFAULT_STAGES

TOWERS = ("visual", "text")


# One tiny architecture is enough to keep the code working: the quick bench starts ~14 processes.
ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)


@pytest.fixture(scope="module")
def quick_bench(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle after `python -m converters bench MODEL --quick`, and its bench.json."""
    bundle = tmp_path_factory.mktemp("bench") / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    model = Bundle.open(bundle).model
    result = subprocess.run(
        [sys.executable, "-m", "converters", "bench", model, "--out", str(bundle), "--quick"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    layout = BundleLayout(bundle)
    return bundle, json.loads(layout.bench_json.read_text(encoding="utf-8")), result.stdout


def _towers(data: dict, tower: str) -> dict[str, dict]:
    return {t["artifact"]: t for t in data["towers"] if t["tower"] == tower}


@ON_TINY_VIT
def test_every_stage_and_pytorch_has_both_towers(quick_bench):
    bundle, data, _ = quick_bench
    expected = ["pytorch", *Bundle.open(bundle).stages()]
    for tower in TOWERS:
        assert sorted(_towers(data, tower)) == sorted(expected)


@ON_TINY_VIT
def test_each_tower_is_timed_at_latency_and_throughput_for_each_input(quick_bench):
    bundle, data, _ = quick_bench
    opened = Bundle.open(bundle)
    inputs = {"visual": [image_label(opened.resolution)], "text": [label for _, label in text_lengths(opened)]}
    for t in data["towers"]:
        timed = [(m["input"], m["mode"]) for m in t["measurements"]]
        assert sorted(timed) == sorted((i, mode) for i in inputs[t["tower"]] for mode in ("latency", "throughput"))
        assert all(m["batch"] == 1 for m in t["measurements"] if m["mode"] == "latency")


@ON_TINY_VIT
def test_measured_numbers_are_positive(quick_bench):
    _, data, _ = quick_bench
    assert data["machine"]["matmul_peak"]["gflops"] > 0 and data["image_gflop"] > 0 and data["tokenize_ms"] > 0
    for t in data["towers"]:
        assert t["threads"] >= 1 and t["model_mb"] > 0 and t["load_s"] > 0
        memory = t["memory"]
        assert 0 < memory["imports_mb"] <= memory["loaded_mb"] <= memory["peak_mb"]
        for m in t["measurements"]:
            timing = m["timing"]
            assert timing["runs"] >= 1 and 0 < timing["min_ms"] <= timing["p10_ms"] <= timing["median_ms"] <= timing["p90_ms"]
            assert m["per_second"] > 0 and m["vs_pytorch"] > 0 and m["vs_onnx"] > 0


@ON_TINY_VIT
def test_ratios_are_against_pytorch_and_onnx_and_images_have_a_flop_rate(quick_bench):
    _, data, _ = quick_bench
    for tower in TOWERS:
        assert all(m["vs_pytorch"] == 1.0 for m in _towers(data, tower)["pytorch"]["measurements"])
        assert all(m["vs_onnx"] == 1.0 for m in _towers(data, tower)["onnx-sim"]["measurements"])
    for t in _towers(data, "visual").values():
        assert all(m["gflops"] > 0 and m["of_matmul_peak"] > 0 for m in t["measurements"])


@ON_TINY_VIT
def test_conversion_is_measured_step_by_step(quick_bench):
    _, data, _ = quick_bench
    conversion = data["conversion"]
    assert conversion["stages"] == list(DEFAULT_STAGES)
    assert conversion["peak_mb"] > 0 and conversion["seconds"] >= sum(s["seconds"] for s in conversion["steps"]) > 0
    steps = [s["step"] for s in conversion["steps"]]
    assert all(any(f"{tower}.{stage}" in step for step in steps) for tower in TOWERS for stage in DEFAULT_STAGES)


@ON_TINY_VIT
def test_search_rows_for_each_backend(quick_bench):
    _, data, _ = quick_bench
    assert {run["artifact"] for run in data["indexing"]} >= {"onnx-sim"}
    assert all(run["images"] > 0 and run["images_per_s"] > 0 and run["decode_images_per_s"] > 0 for run in data["indexing"])
    rows = {(row["backend"], row["vectors"], row["n"]): row for row in data["search"]}
    assert set(rows) == {(backend, vectors, 10_000) for backend, vectors in CASES}
    for backend, vectors in CASES:
        measured = rows[(backend, vectors, 10_000)]["measured"]
        if backend == "faiss" and measured is None:
            assert "not installed" in rows[(backend, vectors, 10_000)]["note"]
            continue
        assert measured["median_ms"] > 0 and measured["open_seconds"] > 0 and 0 <= measured["recall"] <= 1
    assert rows[("hnsw", "clustered", 10_000)]["measured"]["recall"] >= 0.98


@ON_TINY_VIT
def test_a_text_and_an_image_query_are_timed_end_to_end_for_every_artifact(quick_bench):
    bundle, data, stdout = quick_bench
    timed = {(path["artifact"], path["query"].split(",")[0].split(" ")[0], path["photos"]) for path in data["query_paths"]}
    assert timed == {(stage, query, 10_000) for stage in Bundle.open(bundle).manifest.complete_stages()
                     for query in ("text", "image")}
    assert all(path["timing"]["median_ms"] > 0 for path in data["query_paths"])
    assert "## A query end to end" in stdout
    goal = next(g for g in data["goals"] if g["name"].startswith("text query end to end"))
    assert goal["met"] is None and "quick run" in goal["detail"]  # 100,000 photos are not indexed in a quick run


@ON_TINY_VIT
def test_goals_are_evaluated_with_the_artifacts_that_pass_parity(quick_bench):
    bundle, data, _ = quick_bench
    assert data["parity_passed"] == Bundle.open(bundle).stages()  # the fixture's parity passed
    assert len(data["goals"]) == 5
    for goal in (g for g in data["goals"] if not g["name"].startswith("text query end to end")):
        assert goal["met"] in (True, False) and goal["measured"] > 0 and goal["target"] > 0 and goal["detail"]
        assert bool(goal["limits"]) == (goal["met"] is False)
        assert goal["met"] == (goal["measured"] <= goal["target"] if goal["at_most"] else goal["measured"] >= goal["target"])


@ON_TINY_VIT
def test_markdown_has_every_section_and_artifact(quick_bench):
    bundle, data, stdout = quick_bench
    markdown = BundleLayout(bundle).bench_md.read_text(encoding="utf-8")
    assert stdout.strip() == markdown.strip()
    for heading in ("## Goals", "## Image tower", "## Text tower", "## Size and memory", "## Conversion", "## Search engine", "## Method"):
        assert heading in markdown
    for t in data["towers"]:
        assert f"| {t['artifact']} | {t['tower']} | {t['runtime']} |" in markdown


@ON_TINY_VIT
def test_size_speed_and_fidelity_are_side_by_side_from_parity_and_the_manifest(quick_bench):
    bundle, data, _ = quick_bench
    layout = BundleLayout(bundle)
    parity = {(s["stage"], tower): s[tower] for s in json.loads(layout.parity_json.read_text(encoding="utf-8"))["stages"]
              for tower in TOWERS}
    rows = {(r["artifact"], r["tower"]): r for r in data["fidelity"]}
    assert set(rows) == set(parity)
    manifest = Bundle.open(bundle).manifest
    for (stage, tower), row in rows.items():
        assert row["cosine_min"] == parity[(stage, tower)]["cosine_min"] and row["passed"]
        choice = manifest.artifact(tower, stage).mixed_precision
        assert (row["kept_layers"] is None) == (choice is None)
        if choice:
            assert (row["kept_layers"], row["quantizable_layers"]) == (len(choice["kept_layers"]), choice["quantizable_layers"])
    section = BundleLayout(bundle).bench_md.read_text(encoding="utf-8").split("## Picking an artifact")[1].split("\n## ")[0]
    sizes = {(t["artifact"], t["tower"]): t["model_mb"] for t in data["towers"]}
    for (stage, tower), row in rows.items():
        assert f"| {tower} | {stage} | {sizes[(stage, tower)]:.1f} | " in section
        assert f"| {row['cosine_min']:.5f} | {row['cosine_mean']:.5f} |" in section


def test_a_damaged_parity_report_is_an_error_that_says_how_to_redo_it(tmp_path):
    layout = BundleLayout(tmp_path)
    layout.parity_json.write_text('{"stages": [{"visual": {}}]}', encoding="utf-8")
    with pytest.raises(ArtifactError, match="parity.json is damaged.*make parity"):
        passed_stages(layout)


@ON_TINY_VIT
def test_the_fixture_bundle_is_left_alone(quick_bench, tiny_bundle):
    assert not BundleLayout(tiny_bundle).bench_json.exists()


def vit_gflop(model: str) -> float:
    """The ViT-B/16 arithmetic: patch conv, then per layer 24·T·d² (projections, MLP) + 4·T²·d (attention)."""
    config = load_config(model)
    vision = config.architecture.vision
    grid = config.image_resolution // vision.patch_size
    tokens, width = grid * grid + 1, vision.width
    patches = 2 * grid * grid * width * 3 * vision.patch_size**2
    layers = vision.layers * (24 * tokens * width**2 + 4 * tokens**2 * width)
    return (patches + layers + 2 * width * config.architecture.embed_dim) / 1e9


@ON_TINY_VIT
def test_flops_counted_from_the_graph_match_the_vit_formula(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    visual = bundle.manifest.artifact("visual", "onnx-sim")
    counted = graph_gflop(visual.model_file, {"batch": 1})
    if load_config(bundle.model).architecture.vision.family == "vit":
        assert counted == pytest.approx(vit_gflop(bundle.model), rel=1e-9)
    else:
        assert counted > 0


def test_time_calls_follows_its_budget():
    calls = []
    timing = time_calls(lambda: calls.append(1), Budget(warmup=2, min_runs=4, max_runs=4, min_seconds=0.0))
    assert len(calls) == 6 and timing.runs == 4
    assert timing.min_ms <= timing.p10_ms <= timing.median_ms <= timing.p90_ms


def _tower(artifact: str, tower: str, input: str, mode: str, per_second: float) -> TowerBench:
    milliseconds = 1000 / per_second
    timing = Timing(3, milliseconds, milliseconds, milliseconds, milliseconds)
    measurement = Measurement(input, None, mode, 1, timing, per_second)
    return TowerBench(artifact, tower, "onnxruntime", "fp32", 1, 1.0, 0.1, Memory(1, 1, 1), [measurement])


def test_a_missed_goal_says_by_how_much():
    image = image_label(224)
    towers = [_tower("onnx-sim", "visual", image, "throughput", 10.0), _tower("onnx-int8", "visual", image, "throughput", 12.0)]
    goal = image_throughput_goal(towers, image, {"onnx-sim", "onnx-int8"})
    assert goal.met is False and goal.artifact == "onnx-int8" and goal.measured == pytest.approx(1.2)
    assert "missed by 0.30×" in goal.detail and goal.limits


def test_artifacts_that_fail_parity_do_not_count():
    query = query_label(10)
    towers = [_tower("onnx-sim", "text", query, "latency", 100.0), _tower("onnx-int8", "text", query, "latency", 1000.0)]
    goal = text_query_goal(towers, query, 0.1, {"onnx-sim"})
    assert goal.artifact == "onnx-sim" and goal.measured == pytest.approx(10.1) and goal.met
    assert text_query_goal(towers, query, 0.1, set()).met is None


def test_the_end_to_end_query_goal_takes_the_fastest_passing_artifact_at_100k_photos():
    def path(artifact: str, photos: int, milliseconds: float) -> QueryPath:
        return QueryPath(artifact, "text, 10 chars", photos, "int8", Timing(3, milliseconds, milliseconds, milliseconds, milliseconds))

    paths = [path("onnx-int8", 100_000, 4.0), path("onnx-sim", 100_000, 12.0), path("onnx-int8", 10_000, 1.0)]
    assert query_path_goal(paths, {"onnx-sim", "onnx-int8"}).artifact == "onnx-int8"
    missed = query_path_goal(paths, {"onnx-sim"})  # the fast one failed parity: it does not count
    assert missed.artifact == "onnx-sim" and missed.met is False and missed.measured == 12.0
    assert query_path_goal(paths[2:], {"onnx-int8"}).met is None  # 10,000 photos only
