"""Parity: every artifact, run in its real runtime, against the PyTorch fp32 model.

Results are data (dataclasses written as `parity.json`); `render_markdown`
turns them into the readable `parity.md`. Torch-free: the PyTorch reference
embeddings arrive as arrays.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from converters.config import Tolerance
from converters.fsutil import atomic_write_text
from converters.parity_set import ParitySet
from converters.runtimes import Embedder

# One sample per call: dynamic int8 quantizes activations over the whole call,
# so a sample's embedding would depend on its batch mates. Batch 1 is what an
# app runs for a query, and it makes the golden vectors reproducible.
BATCH = 1


@dataclass(frozen=True)
class Embeddings:
    images: np.ndarray
    texts: np.ndarray


@dataclass
class TowerParity:
    samples: int
    cosine_min: float
    cosine_mean: float
    max_abs_diff: float


@dataclass
class StageParity:
    stage: str
    runtime: str
    visual: TowerParity
    text: TowerParity
    top1_agreement: float
    tolerance: dict
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ParityReport:
    model: str
    weights: str
    parity_set: dict
    stages: list[StageParity]

    @property
    def passed(self) -> bool:
        return all(stage.passed for stage in self.stages)

    def to_json(self) -> str:
        data = asdict(self) | {"passed": self.passed}
        for stage, raw in zip(self.stages, data["stages"]):
            raw["passed"] = stage.passed
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def embed(embedder: Embedder, parity_set: ParitySet) -> Embeddings:
    def batched(fn, inputs):
        return np.concatenate([fn(inputs[i : i + BATCH]) for i in range(0, len(inputs), BATCH)])

    return Embeddings(
        batched(embedder.embed_images, parity_set.pixels), batched(embedder.embed_texts, parity_set.token_ids)
    )


def _normalized(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def tower_parity(reference: np.ndarray, candidate: np.ndarray) -> TowerParity:
    cosine = np.sum(_normalized(reference) * _normalized(candidate), axis=1)
    return TowerParity(
        samples=len(cosine),
        cosine_min=float(cosine.min()),
        cosine_mean=float(cosine.mean()),
        max_abs_diff=float(np.abs(reference - candidate).max()),
    )


def top1_agreement(reference: Embeddings, candidate: Embeddings) -> float:
    """Fraction of captions whose best-matching image is the same as with PyTorch."""

    def top1(e: Embeddings) -> np.ndarray:
        return np.argmax(_normalized(e.texts) @ _normalized(e.images).T, axis=1)

    return float(np.mean(top1(reference) == top1(candidate)))


def compare(stage: str, runtime: str, reference: Embeddings, candidate: Embeddings, tolerance: Tolerance) -> StageParity:
    result = StageParity(
        stage=stage,
        runtime=runtime,
        visual=tower_parity(reference.images, candidate.images),
        text=tower_parity(reference.texts, candidate.texts),
        top1_agreement=top1_agreement(reference, candidate),
        tolerance=tolerance.model_dump(exclude_none=True),
    )
    for tower in ("visual", "text"):
        measured: TowerParity = getattr(result, tower)
        if measured.cosine_min < tolerance.cosine_min:
            result.failures.append(f"{tower} cosine min {measured.cosine_min:.6f} < {tolerance.cosine_min}")
        if tolerance.cosine_mean is not None and measured.cosine_mean < tolerance.cosine_mean:
            result.failures.append(f"{tower} cosine mean {measured.cosine_mean:.6f} < {tolerance.cosine_mean}")
    if tolerance.top1_agreement_min is not None and result.top1_agreement < tolerance.top1_agreement_min:
        result.failures.append(f"top-1 agreement {result.top1_agreement:.3f} < {tolerance.top1_agreement_min}")
    return result


def render_markdown(report: ParityReport) -> str:
    verdict = "PASS" if report.passed else "FAIL"
    lines = [
        f"# Parity: {report.model} — {verdict}",
        "",
        f"Weights: {report.weights}. Parity set: {report.parity_set['images']} images, "
        f"{report.parity_set['captions']} captions. Reference: PyTorch fp32. Cosine is per sample.",
        "",
        "| stage | runtime | tower | cos min | cos mean | max abs diff | top-1 agree | tolerance | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for stage in report.stages:
        tolerance = ", ".join(f"{k} {v}" for k, v in stage.tolerance.items())
        for tower in ("visual", "text"):
            m: TowerParity = getattr(stage, tower)
            lines.append(
                f"| {stage.stage} | {stage.runtime} | {tower} | {m.cosine_min:.6f} | {m.cosine_mean:.6f} | "
                f"{m.max_abs_diff:.2e} | {stage.top1_agreement:.3f} | {tolerance} | {'pass' if stage.passed else 'FAIL'} |"
            )
    failures = [f"- {stage.stage}: {failure}" for stage in report.stages for failure in stage.failures]
    if failures:
        lines += ["", "## Failures", "", *failures]
    return "\n".join(lines) + "\n"


def write(report: ParityReport, json_path: Path, markdown_path: Path) -> None:
    atomic_write_text(json_path, report.to_json())
    atomic_write_text(markdown_path, render_markdown(report))
