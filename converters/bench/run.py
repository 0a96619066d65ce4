"""One benchmark run: every measurement on the same machine, then `bench.json` and `bench.md` beside the manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from converters.app.bundle import DEFAULT_STAGE, Bundle
from converters.app.fsutil import atomic_write_text
from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.app.specs import SIMULATED_RUNTIMES, TOWERS, runtime_of
from converters.bench import goals
from converters.bench.compare import BASELINE_STAGE, add_comparisons, fastest
from converters.bench.conversion import bench_conversion
from converters.bench.flops import best_peak, graph_gflop, measure_matmul_peak
from converters.bench.machine import load_average, versions
from converters.bench.markdown import render_markdown
from converters.bench.query_path import bench_query_paths
from converters.bench.processes import run_fresh, usable_cores
from converters.bench.report import ArtifactFidelity, BenchReport, DeviceEstimate, Machine, TowerBench
from converters.bench.search import bench_indexing, bench_topk
from converters.bench.timing import FULL, QUICK, Budget, time_calls
from converters.bench.tower_speed import (
    PYTORCH,
    TowerJob,
    image_label,
    measure_tower,
    query_label,
    query_text,
)
from converters.cpu import cpu_description
from converters.export.config import ModelConfig

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Scale:
    """What `--quick` shrinks: repetitions, search sizes, photos indexed."""

    budget: Budget
    search_sizes: tuple[int, ...]
    search_queries: int
    photo_copies: int  # copies of the 14 parity photos to index


FULL_SCALE = Scale(FULL, (10_000, 100_000, 1_000_000), 50, 5)
QUICK_SCALE = Scale(QUICK, (10_000,), 5, 1)


@dataclass(frozen=True)
class BenchRequest:
    config: ModelConfig  # the bundle's model: PyTorch's baseline and the conversion are made from it
    bundle: Path
    threads: int = 0  # 0: every usable core
    quick: bool = False


def run_bench(request: BenchRequest, progress: Progress) -> BenchReport:
    layout = BundleLayout(request.bundle)
    bundle = Bundle.open(layout.root)
    scale = QUICK_SCALE if request.quick else FULL_SCALE
    threads = request.threads or usable_cores()
    load_at_start = load_average()

    progress(f"fp32 matmul peak, {threads} threads")
    peak = run_fresh(measure_matmul_peak, threads, scale.budget, threads=threads)
    towers = _bench_towers(request, bundle, threads, scale.budget, progress)
    progress("fp32 matmul peak, again after the towers")
    peak = best_peak(peak, run_fresh(measure_matmul_peak, threads, scale.budget, threads=threads))
    image_gflop = _image_gflop(bundle.manifest)
    add_comparisons(towers, image_gflop, peak)
    passed = goals.passed_stages(layout)

    image_input = image_label(bundle.resolution)
    indexing = []
    for stage in _indexing_stages(towers, image_input, passed, bundle.stages()):
        progress(f"search: indexing photos with {stage}")
        indexing.append(bench_indexing(layout.root, stage, scale.photo_copies, threads))
    search = bench_topk(bundle.embedding_dim, scale.search_sizes, scale.search_queries, threads, progress)
    measured_here = [s for s in bundle.manifest.complete_stages() if runtime_of(s) not in SIMULATED_RUNTIMES]
    query_paths = bench_query_paths(layout.root, measured_here, scale.search_sizes, scale.budget, threads, progress)

    progress("conversion: every stage, in a scratch folder")
    conversion = bench_conversion(request.config, bundle.manifest.checkpoint.source, threads)

    tokenize = time_calls(lambda: bundle.token_ids([query_text(goals.GOAL_QUERY_CHARS)]), scale.budget)
    machine = Machine(cpu_description(), usable_cores(), threads, load_at_start, load_average(), peak, versions())
    report = BenchReport(
        model=bundle.model,
        weights=bundle.manifest.checkpoint.description,
        quick=request.quick,
        budget=scale.budget,
        machine=machine,
        image_gflop=image_gflop,
        tokenize_ms=tokenize.median_ms,
        parity_passed=passed,
        towers=towers,
        conversion=conversion,
        indexing=indexing,
        search=search,
        query_paths=query_paths,
        goals=goals.evaluate(
            towers, image_input, query_label(goals.GOAL_QUERY_CHARS), tokenize.median_ms, passed, conversion, query_paths
        ),
        notes=_notes(machine, layout),
        device_estimates=device_estimates(bundle),
        fidelity=artifact_fidelity(layout, bundle.manifest),
    )
    atomic_write_text(layout.bench_json, report.to_json())
    atomic_write_text(layout.bench_md, render_markdown(report))
    return report


def _bench_towers(request: BenchRequest, bundle: Bundle, threads: int, budget: Budget, progress: Progress) -> list[TowerBench]:
    towers = []
    # A simulator's speed says nothing about the chip's: bm1684x artifacts get the compiler's estimate instead,
    # rknn artifacts nothing (rknn-toolkit2 estimates no time without a board).
    for artifact in (PYTORCH, *(s for s in bundle.stages() if runtime_of(s) not in SIMULATED_RUNTIMES)):
        for tower in TOWERS:
            progress(f"{artifact}: {tower} tower, {threads} threads")
            job = TowerJob(request.bundle, request.config, artifact, tower, threads, budget)
            towers.append(run_fresh(measure_tower, job, threads=threads))
    return towers


def device_estimates(bundle: Bundle) -> list[DeviceEstimate]:
    rows = []
    for stage in (s for s in bundle.stages() if runtime_of(s) == "bmruntime"):
        for tower in TOWERS:
            entry = bundle.manifest.entry(tower, stage)
            sizes = {record.path: record.bytes for record in entry.files}
            for net in entry.artifact.bmodel["nets"]:
                rows.append(DeviceEstimate(stage, tower, net["batch"], round(sizes[net["file"]] / 2**20, 2),
                                           net["estimated_ms"]))
    return rows


def artifact_fidelity(layout: BundleLayout, manifest: Manifest) -> list[ArtifactFidelity]:
    """Every tower's cosine against PyTorch from parity.json, with the layers its quantized stage kept."""
    rows = []
    for stage in goals.parity_stages(layout):
        for tower in TOWERS:
            measured, entry = stage.get(tower), manifest.entry(tower, stage["stage"])
            if measured is None or entry is None:
                continue
            choice = entry.artifact.mixed_precision or {}
            rows.append(ArtifactFidelity(
                stage["stage"], tower, measured["cosine_min"], measured["cosine_mean"],
                stage["passed"] and not measured["failures"],
                len(choice["kept_layers"]) if choice else None, choice.get("quantizable_layers"), choice.get("kept_as"),
            ))
    return rows


def _image_gflop(manifest: Manifest) -> float | None:
    """GFLOP per image, counted on the simplified fp32 graph: the raw export's shapes do not all infer."""
    entry = manifest.entry("visual", BASELINE_STAGE)
    return None if entry is None else round(graph_gflop(manifest.root / entry.files[0].path, {"batch": 1}), 3)


def _indexing_stages(towers: list[TowerBench], image_input: str, passed: list[str], stages: list[str]) -> list[str]:
    """The `index` command's default stage, and the fastest image artifact that passes parity if another."""
    best = fastest(towers, "visual", image_input, "throughput", set(passed))
    chosen = [DEFAULT_STAGE, *([best[0]] if best else [])]
    return [stage for stage in dict.fromkeys(chosen) if stage in stages]


def _notes(machine: Machine, layout: BundleLayout) -> list[str]:
    notes = []
    busiest = max(machine.load_average_start[0], machine.load_average_end[0])
    if busiest > machine.cores / 2:
        notes.append(
            f"The machine was busy (1-minute load average up to {busiest:.2f} on {machine.cores} cores): absolute "
            "times are noisy; ratios measured in this run are the better guide."
        )
    if not layout.parity_json.is_file():
        notes.append("No parity.json: no artifact counts as passing, so the speed goals are not evaluated. Run `make parity`.")
    return notes
