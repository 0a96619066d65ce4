"""`bench.md`: the benchmark report as tables, rendered from the data alone."""

from __future__ import annotations

from converters.bench.compare import measurement
from converters.bench.goals import GOAL_QUERY_CHARS, amount
from converters.bench.report import ArtifactFidelity, BenchReport, Measurement, TowerBench
from converters.bench.tower_speed import BATCH, PYTORCH, query_label
from converters.validate.report import table_head, table_section

METHOD = [
    "Every tower of every artifact is measured in its own fresh Python process: memory peaks never mix, and "
    "`after imports` is that process's floor before any model is loaded.",
    "Latency: batch 1. Throughput: batch {batch} where the graph has a batch axis (PyTorch, ONNX), 1 for ncnn, "
    "whose graphs take one sample per call. Each timing starts after {warmup} untimed calls and runs at least "
    "{min_runs} times and for {min_seconds:g} s (at most {max_runs} times); median and the 10th–90th percentile "
    "spread per call are shown.",
    "Inputs are the same arrays for every artifact: random pixels, and token ids of [CLS] + N characters + [SEP] "
    "without padding columns (the ONNX and ncnn runners drop padding themselves; PyTorch gets the same unpadded ids, "
    "so ratios compare runtimes, not padding). The last text row is the full context.",
    "× PyTorch and × ORT fp32: items per second divided by PyTorch eager fp32's (respectively the `onnx-sim` "
    "artifact's) for the same tower, input and mode.",
    "GFLOP per image: 2 × output elements × reduction length of every MatMul, Gemm and Conv in the fp32 ONNX graph "
    "at batch 1, shapes from onnx shape inference; element-wise work is left out. The same count is used for every "
    "artifact, so an int8 artifact's GFLOP/s is the fp32-equivalent rate (it can pass 100%). The peak is the "
    "fastest float32 matmul of two 2048 × 2048 matrices among numpy, PyTorch and onnxruntime, each at the same "
    "thread count and at its fastest run, measured in a fresh process before and again after the towers (the "
    "better of the two). The towers' rates are medians taken at other moments: on a busy machine the fraction is "
    "only a rough guide.",
    "Memory: peak resident set (getrusage ru_maxrss) of the measuring process after imports, after loading, and "
    "after all timed runs. PyTorch builds the whole CLIP model in each of its two processes; its model size is the "
    "tower's fp32 parameters and buffers. Load time includes the sha256 check of the files, as `Bundle.embedder` does.",
    "Conversion: one fresh process runs every stage into a scratch folder, like `convert --no-parity`; steps are the "
    "spans between the pipeline's progress events, each with the resident high-water mark (VmHWM, reset at every "
    "step). The total runs from the interpreter's start to its exit.",
    "Indexing: `IndexUpdater` over copies of the 14 parity photos (JPEGs of many sizes) into a new index, at the "
    "`index` command's default batch: listing, decoding, preprocessing, embedding and saving, model loading "
    "included. `decode only` is loading and preprocessing the same files alone, one photo at a time.",
    "Top-10 search: `converters.bench.search_scale.measure_topk` on synthetic unit vectors (random: no structure; "
    "clustered: groups in a 128-d subspace, a stand-in for photo embeddings, not real ones), single queries in a "
    "fresh process; recall@10 is against exact float32 search; open s is loading the index and preparing the "
    "backend (hnsw: building its graph).",
]


def render_markdown(report: BenchReport) -> str:
    lines = [f"# Benchmark: {report.model} ({report.weights}){' — quick run' if report.quick else ''}", ""]
    lines += _machine(report)
    lines += _goals(report)
    lines += _towers(report, "visual")
    lines += _towers(report, "text")
    lines += _memory(report)
    lines += _choice(report)
    lines += _device_estimates(report)
    lines += _conversion(report)
    lines += _search(report)
    lines += _query_paths(report)
    lines += _method(report)
    if report.notes:
        lines += ["## Notes", "", *(f"- {note}" for note in report.notes), ""]
    return "\n".join(lines)


def _machine(report: BenchReport) -> list[str]:
    m = report.machine
    peak = m.matmul_peak
    versions = ", ".join(f"{name} {version}" for name, version in m.versions.items())
    return [
        f"Measured in one run on {m.cpu}, {m.cores} usable cores; every runtime, BLAS and search backend ran with "
        f"{m.threads} threads. Load average (1, 5, 15 min): {_triple(m.load_average_start)} at the start, "
        f"{_triple(m.load_average_end)} at the end. fp32 matmul peak ({peak.size}², {peak.threads} threads): "
        f"{peak.gflops:.1f} GFLOP/s with {peak.library} ("
        + ", ".join(f"{library} {rate:.1f}" for library, rate in peak.gflops_by_library.items()) + ").",
        "",
        f"Versions: {versions}.",
        "",
    ]


def _goals(report: BenchReport) -> list[str]:
    lines = [
        "## Goals",
        "",
        f"Artifacts that pass parity (parity.json): {', '.join(report.parity_passed) or 'none'}.",
        "",
        *table_head(["goal", "target", "measured", "result", "detail", "limits"]),
    ]
    for goal in report.goals:
        result = {True: "met", False: "MISSED", None: "not evaluated"}[goal.met]
        target = f"{'≤' if goal.at_most else '≥'} {amount(goal.target, goal.unit)}"
        measured = "—" if goal.measured is None else amount(goal.measured, goal.unit)
        if goal.artifact:
            measured += f" ({goal.artifact})"
        lines.append(f"| {goal.name} | {target} | {measured} | {result} | {goal.detail} | {goal.limits or '—'} |")
    return lines + [""]


def _towers(report: BenchReport, tower: str) -> list[str]:
    if tower == "visual":
        title = f"## Image tower ({_num(report.image_gflop, '.4g')} GFLOP per image, counted from the fp32 ONNX graph)"
        header = "| artifact | precision | input | mode | batch | median ms | p10–p90 ms | runs | img/s | × PyTorch | × ORT fp32 | GFLOP/s | of matmul peak | parity |"
    else:
        title = f"## Text tower (tokenizing a 10-character query: {report.tokenize_ms:.3f} ms, not included below)"
        header = "| artifact | precision | input | mode | batch | median ms | p10–p90 ms | runs | texts/s | × PyTorch | × ORT fp32 | parity |"
    lines = [title, "", header, "|" + "---|" * header.count(" | ") + "---|"]
    rows = [(t, m) for t in report.towers if t.tower == tower for m in t.measurements]
    for t, m in sorted(rows, key=lambda row: (_input_order(report, row[1]), row[1].mode)):
        cells = [
            t.artifact, t.precision, m.input, m.mode, str(m.batch), f"{m.timing.median_ms:.2f}",
            f"{m.timing.p10_ms:.2f}–{m.timing.p90_ms:.2f}", str(m.timing.runs), f"{m.per_second:.2f}",
            _times(m.vs_pytorch), _times(m.vs_onnx),
        ]
        if tower == "visual":
            cells += [_num(m.gflops, ".1f"), _percent(m.of_matmul_peak)]
        lines.append("| " + " | ".join([*cells, _parity(report, t)]) + " |")
    return lines + [""]


def _input_order(report: BenchReport, measurement: Measurement) -> int:
    inputs = list(dict.fromkeys(m.input for t in report.towers for m in t.measurements))
    return inputs.index(measurement.input)


def _parity(report: BenchReport, tower: TowerBench) -> str:
    if tower.artifact == PYTORCH:
        return "reference"
    return "pass" if tower.artifact in report.parity_passed else "not passed"


def _memory(report: BenchReport) -> list[str]:
    lines = [
        "## Size and memory (peak resident set, MiB)",
        "",
        *table_head(["artifact", "tower", "runtime", "precision", "model MiB", "load s", "after imports",
                     "after loading", "after runs"]),
    ]
    for t in report.towers:
        mem = t.memory
        lines.append(
            f"| {t.artifact} | {t.tower} | {t.runtime} | {t.precision} | {t.model_mb:.1f} | {t.load_s:.2f} | "
            f"{mem.imports_mb:.0f} | {mem.loaded_mb:.0f} | {mem.peak_mb:.0f} |"
        )
    return lines + [""]


def _choice(report: BenchReport) -> list[str]:
    """Size, speed and fidelity side by side: what a user trades when picking an artifact."""
    if not report.fidelity:
        return []
    lines = table_section(
        "Picking an artifact: size, speed and fidelity",
        f"Latency at batch 1 from the tables above (image: the photo; text: a {GOAL_QUERY_CHARS}-character query); "
        "cosine against PyTorch on the parity set from parity.json; for the quantized stages, the layers their "
        "automatic mixed precision kept out of the stage's precision (manifest `mixed_precision`).",
        ["tower", "artifact", "model MiB", "latency ms", "× ORT fp32", "cos min", "cos mean", "kept", "parity"],
    )[1:]  # the section before ends with its blank line
    timed = {(t.artifact, t.tower): t for t in report.towers}
    # The image tower is timed on one input, the photo; the text tower on several lengths.
    photo = next((m.input for t in report.towers if t.tower == "visual" for m in t.measurements), None)
    inputs = {"visual": photo, "text": query_label(GOAL_QUERY_CHARS)}
    for row in sorted(report.fidelity, key=lambda r: (r.tower != "visual", r.artifact)):
        tower = timed.get((row.artifact, row.tower))
        if tower is None:
            continue
        latency = measurement(report.towers, row.artifact, row.tower, inputs[row.tower], "latency")
        lines.append(
            f"| {row.tower} | {row.artifact} | {tower.model_mb:.1f} | {_num(latency and latency.timing.median_ms, '.2f')} | "
            f"{_times(latency and latency.vs_onnx)} | {row.cosine_min:.5f} | {row.cosine_mean:.5f} | {_kept(row)} | "
            f"{'pass' if row.passed else 'FAIL'} |"
        )
    return [*lines, ""]


def _kept(row: ArtifactFidelity) -> str:
    if row.kept_layers is None:
        return "—"
    return f"{row.kept_layers} of {row.quantizable_layers} kept as {row.kept_as}"


def _device_estimates(report: BenchReport) -> list[str]:
    rows = []
    for row in report.device_estimates:
        per_sample = None if row.estimated_ms is None else row.estimated_ms / row.batch
        rows.append(f"| {row.artifact} | {row.tower} | {row.batch} | {row.model_mb:.1f} | "
                    f"{_num(row.estimated_ms, '.3g')} | {_num(per_sample, '.3g')} |")
    return _section(
        "Sophgo BM1684X: the compiler's estimates",
        "tpu-mlir's own estimate of one inference of each bmodel on the chip (its compiler profile), **not a "
        "measurement**: no BM1684X was at hand, and the simulators that check these files run at simulator speed.",
        ["artifact", "tower", "batch", "bmodel MiB", "estimated ms per batch", "per sample"], rows,
    )


def _conversion(report: BenchReport) -> list[str]:
    run = report.conversion
    stepped = sum(step.seconds for step in run.steps)
    lines = [
        "## Conversion (every stage, one process)",
        "",
        f"Stages: {', '.join(run.stages)}. Total {run.seconds:.1f} s, peak resident set {run.peak_mb:.0f} MiB.",
        "",
        *table_head(["step", "seconds", "peak MiB"]),
    ]
    lines += [f"| {step.step} | {step.seconds:.1f} | {_num(step.peak_mb, '.0f')} |" for step in run.steps]
    lines.append(f"| interpreter start and exit | {run.seconds - stepped:.1f} | — |")
    return lines + [""]


def _search(report: BenchReport) -> list[str]:
    lines = [
        "## Search engine",
        "",
        *table_head(["indexing artifact", "photos", "batch", "seconds", "photos/s", "decode only, photos/s"]),
    ]
    lines += [
        f"| {run.artifact} | {run.images} | {run.batch} | {run.seconds:.1f} | {run.images_per_s:.2f} | {run.decode_images_per_s:.1f} |"
        for run in report.indexing
    ]
    lines += [
        "",
        *table_head(["backend", "vectors", "n", "dim", "threads", "median ms", "p90 ms", "recall@10", "open s",
                     "index MiB", "process MiB", "note"]),
    ]
    for row in report.search:
        m = row.measured
        if m is None:
            lines.append(f"| {row.backend} | {row.vectors} | {row.n:,} | — | — | — | — | — | — | — | — | {row.note} |")
        else:
            lines.append(
                f"| {row.backend} | {row.vectors} | {row.n:,} | {m.dim} | {m.threads} | {m.median_ms:.2f} | "
                f"{m.p90_ms:.2f} | {m.recall:.4f} | {m.open_seconds:.1f} | {m.resident_mb:.0f} | {m.process_mb:.0f} | "
                f"{row.note or '—'} |"
            )
    return lines + [""]


def _query_paths(report: BenchReport) -> list[str]:
    return _section(
        "A query end to end",
        "What an app runs for one query, in one timing: tokenize (text) or decode and preprocess (image), embed "
        "with the artifact's tower, search the top 10 as `search` does, over synthetic clustered vectors.",
        ["artifact", "query", "photos", "backend", "median ms", "p90 ms"],
        [f"| {path.artifact} | {path.query} | {path.photos:,} | {path.backend} | {path.timing.median_ms:.2f} | "
         f"{path.timing.p90_ms:.2f} |" for path in report.query_paths],
    )


def _section(title: str, text: str, columns: list[str], rows: list[str]) -> list[str]:
    """A section with a table of `rows`, or nothing when there are none."""
    if not rows:
        return []
    return [*table_section(title, text, columns)[1:], *rows, ""]  # the section before ends with its blank line


def _method(report: BenchReport) -> list[str]:
    budget = report.budget
    facts = dict(
        batch=BATCH, warmup=budget.warmup, min_runs=budget.min_runs, min_seconds=budget.min_seconds, max_runs=budget.max_runs,
    )
    return ["## Method", "", *(f"- {line.format(**facts)}" for line in METHOD), ""]


def _num(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _times(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.3g}×"


def _percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction:.1%}"


def _triple(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)
