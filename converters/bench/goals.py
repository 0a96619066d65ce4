"""The speed and cost goals (set for ViT-B-16), checked against one run's measurements.

Only artifacts whose parity tolerance is met count for the speed goals:
a fast artifact that computes something else is no answer.
"""

from __future__ import annotations

import dataclasses
import json

from converters.app.layout import BundleLayout
from converters.errors import ArtifactError
from converters.bench.compare import BASELINE_STAGE, fastest, measurement
from converters.bench.report import ConversionRun, Goal, QueryPath, TowerBench

GOAL_QUERY_CHARS = 10
TEXT_QUERY_MS = 30.0
# A query as an app runs it (tokenize, embed, search the top 10) over a household's library.
QUERY_PATH_MS = 10.0
QUERY_PATH_PHOTOS = 100_000
IMAGE_SPEEDUP = 1.5
CONVERSION_SECONDS = 300.0
CONVERSION_PEAK_MB = 8 * 1024.0  # 8 GiB

NOT_PROFILED = "not profiled yet"


def parity_stages(layout: BundleLayout) -> list[dict]:
    """The stage rows of parity.json (none without it), or an error that says how to make it again."""
    if not layout.parity_json.is_file():
        return []
    try:
        stages = json.loads(layout.parity_json.read_text(encoding="utf-8"))["stages"]
        if all(isinstance(stage["stage"], str) and isinstance(stage["passed"], bool) for stage in stages):
            return stages
    except (ValueError, KeyError, TypeError):
        pass
    raise ArtifactError(f"{layout.parity_json} is damaged; run `make parity OUT={layout.root}` to write it again.")


def passed_stages(layout: BundleLayout) -> list[str]:
    """Stages that parity.json records as passed; a stage it does not list counts as unchecked."""
    return [stage["stage"] for stage in parity_stages(layout) if stage["passed"]]


def evaluate(
    towers: list[TowerBench], image_input: str, query_input: str, tokenize_ms: float, passed: list[str],
    conversion: ConversionRun, query_paths: list[QueryPath],
) -> list[Goal]:
    return [
        text_query_goal(towers, query_input, tokenize_ms, set(passed)),
        query_path_goal(query_paths, set(passed)),
        image_throughput_goal(towers, image_input, set(passed)),
        checked("conversion, all stages: wall time", CONVERSION_SECONDS, "s", True, conversion.seconds),
        checked("conversion, all stages: peak memory", CONVERSION_PEAK_MB, "MiB", True, conversion.peak_mb),
    ]


def text_query_goal(towers: list[TowerBench], query_input: str, tokenize_ms: float, passed: set[str]) -> Goal:
    name = f"text query embedding, {GOAL_QUERY_CHARS} characters, batch 1, tokenizing included, fastest artifact that passes parity"
    best = fastest(towers, "text", query_input, "latency", passed)
    if best is None:
        return Goal(name, TEXT_QUERY_MS, "ms", True, None, None, None, "no artifact has passed parity (see parity.json)")
    artifact, row = best
    return checked(name, TEXT_QUERY_MS, "ms", True, row.timing.median_ms + tokenize_ms, artifact)


def query_path_goal(paths: list[QueryPath], passed: set[str]) -> Goal:
    name = (f"text query end to end ({GOAL_QUERY_CHARS} characters: tokenize, embed, top 10 of "
            f"{QUERY_PATH_PHOTOS:,} photos), fastest artifact that passes parity")
    timed = [p for p in paths if p.photos == QUERY_PATH_PHOTOS and p.query.startswith("text") and p.artifact in passed]
    if not timed:
        return Goal(name, QUERY_PATH_MS, "ms", True, None, None, None,
                    f"not measured at {QUERY_PATH_PHOTOS:,} photos (a quick run stops at 10,000) or nothing passed parity")
    best = min(timed, key=lambda p: p.timing.median_ms)
    return checked(name, QUERY_PATH_MS, "ms", True, best.timing.median_ms, best.artifact)


def image_throughput_goal(towers: list[TowerBench], image_input: str, passed: set[str]) -> Goal:
    name = "image tower throughput, fastest artifact that passes parity, against onnxruntime fp32"
    best = fastest(towers, "visual", image_input, "throughput", passed)
    baseline = measurement(towers, BASELINE_STAGE, "visual", image_input, "throughput")
    if best is None or baseline is None:
        return Goal(name, IMAGE_SPEEDUP, "×", False, None, None, None, "needs the onnx-sim artifact and another that passed parity")
    artifact, row = best
    goal = checked(name, IMAGE_SPEEDUP, "×", False, row.per_second / baseline.per_second, artifact)
    return dataclasses.replace(goal, detail=f"{goal.detail}; {row.per_second:.2f} against {baseline.per_second:.2f} img/s")


def checked(name: str, target: float, unit: str, at_most: bool, value: float, artifact: str | None = None) -> Goal:
    """A goal with its verdict and, where it is missed, by how much."""
    margin = target - value if at_most else value - target
    if margin >= 0:
        return Goal(name, target, unit, at_most, value, artifact, True, f"{amount(margin, unit)} to spare")
    return Goal(
        name, target, unit, at_most, value, artifact, False,
        f"missed by {amount(-margin, unit)} ({-margin / target:.0%} of the target)", NOT_PROFILED,
    )


def amount(value: float, unit: str) -> str:
    return f"{value:.2f}{unit}" if unit == "×" else f"{value:,.1f} {unit}"
