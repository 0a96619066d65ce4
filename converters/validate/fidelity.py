"""One fidelity target and one judge: how far a tower's embeddings may be from a reference, and the verdict.

Parity (an artifact against PyTorch on the parity set), the float fallback (a
quantized tower against its float parent on calibration samples), the lever
study and the C++ client's rows all measure with `measure` and judge with
`judge`; the reports only render what these return.

Cosine similarity cannot see an embedding scaled by 1000, and a comparison
with NaN is always False, so a NaN output would slip past `cosine < limit`.
Every check here is written so that NaN fails it, and the structural checks
(shape, finite, not all zeros) run before any number is computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from converters.app.specs import STAGES, ToleranceFamily, TowerSpec


class EmbeddingTarget(BaseModel):
    """What a tower's embeddings must meet against their reference, per sample.

    Whatever the target, an output that is not finite, is all zeros or has the wrong shape fails.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cosine_min: float = Field(gt=0.0, le=1.0)
    cosine_mean: float | None = Field(default=None, gt=0.0, le=1.0)
    # max |norm(candidate) / norm(reference) - 1|: cosine cannot see an embedding scaled by 1000.
    norm_ratio_max: float = Field(gt=0.0, le=1.0)


class FidelityTarget(EmbeddingTarget):
    """A stage's parity target: its towers' embeddings against PyTorch's, and the two towers together."""

    # Of the captions, the fraction whose best-matching photo is the reference's (both towers of a stage).
    top1_agreement_min: float | None = Field(default=None, ge=0.0, le=1.0)


# norm_ratio_max as measured on tiny-vit and tiny-rn with random weights (parity set, a 2-core x86 machine):
# fp32 stages ≤ 2.1e-7, fp16 storage ≤ 8.1e-5, int8 stages ≤ 1.1e-2. The limits leave 100x or more for the
# float stages and 10x for int8; a scale error of 1000x fails all of them.
DEFAULT_TARGETS: dict[ToleranceFamily, FidelityTarget] = {
    "fp32": FidelityTarget(cosine_min=0.99999, norm_ratio_max=1e-4, top1_agreement_min=1.0),
    "fp16": FidelityTarget(cosine_min=0.9995, norm_ratio_max=1e-2),
    "int8": FidelityTarget(cosine_min=0.98, cosine_mean=0.99, norm_ratio_max=0.1),
}

# The config's `parity:` section: one target per stage of the table, under its config key, defaulting to its family's.
ParityTolerances = create_model(
    "ParityTolerances",
    __config__=ConfigDict(extra="forbid", frozen=True),
    **{spec.config_key: (FidelityTarget, DEFAULT_TARGETS[spec.tolerance]) for spec in STAGES},
)

# How far an app's resize may be from Pillow's, per uint8 channel value (golden.json states it too): another
# antialiased bicubic's rounding (fixed point or float) lands within ±1 of it; ±2 leaves room. The other pass
# order does not (up to 7 at 224 where Pillow 13 resizes columns first), and the tall golden photo shows it.
RESIZED_RGB_TOLERANCE = 2


@dataclass(frozen=True)
class Embeddings:
    """One artifact's (or PyTorch's) embeddings of the parity set."""

    images: np.ndarray
    texts: np.ndarray


@dataclass
class Fidelity:
    """A tower's embeddings against a reference's, and every way they miss the target they were judged by."""

    samples: int
    cosine_min: float
    cosine_mean: float
    max_abs_diff: float
    norm_ratio_max: float  # max over samples of |norm / the reference's norm - 1|
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def is_embedding(self) -> bool:
        """False when the output was no embedding at all (NaN, zeros, wrong shape): no number was measured."""
        return math.isfinite(self.cosine_min)

    def rank(self) -> tuple[float, float, float]:
        """Sorts worst first: lower mean, then lower minimum, then a larger norm error; no embedding first of all."""
        if not self.is_embedding:
            return (-math.inf, -math.inf, -math.inf)
        return (self.cosine_mean, self.cosine_min, -self.norm_ratio_max)

    def compact(self) -> dict:
        """The three numbers a choice is made on, to 6 decimals (-1, -1, inf: no embedding)."""
        if not self.is_embedding:
            return {"cosine_min": -1.0, "cosine_mean": -1.0, "norm_ratio": math.inf}
        return {"cosine_min": round(self.cosine_min, 6), "cosine_mean": round(self.cosine_mean, 6),
                "norm_ratio": round(self.norm_ratio_max, 6)}

    def __str__(self) -> str:
        return f"cosine min {self.cosine_min:.5f} / mean {self.cosine_mean:.5f}, norm ratio {self.norm_ratio_max:.3g}"


def structural_problems(reference: np.ndarray, candidate: np.ndarray) -> list[str]:
    """What makes `candidate` no embedding at all: wrong shape, non-finite values, all-zero rows."""
    if candidate.shape != reference.shape:
        return [f"output shape {list(candidate.shape)}, expected {list(reference.shape)}"]
    problems = []
    bad = ~np.isfinite(candidate).all(axis=1)
    if bad.any():
        problems.append(f"{int(bad.sum())} of {len(candidate)} outputs are not finite (NaN or inf)")
    zero = ~np.any(candidate != 0, axis=1)
    if zero.any():
        problems.append(f"{int(zero.sum())} of {len(candidate)} outputs are all zeros")
    return problems


def _norms(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x.astype(np.float64), axis=1)


def normalized(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / _norms(x)[:, None]


def as_output_of(spec: TowerSpec, reference: np.ndarray) -> np.ndarray:
    """PyTorch's embeddings as a tower of `spec` gives them: L2-normalized when its output is (rknn-int8), so its
    norm is still judged, against 1."""
    return normalized(reference) if spec.normalized else reference


def measure(reference: np.ndarray, candidate: np.ndarray, target: EmbeddingTarget) -> Fidelity:
    """Per-sample numbers of `candidate` against `reference`, judged by `target`."""
    problems = structural_problems(reference, candidate)
    if problems:
        nan = float("nan")
        return Fidelity(len(reference), nan, nan, nan, nan, problems)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cosine = np.sum(normalized(reference) * normalized(candidate), axis=1)
        ratio = np.abs(_norms(candidate) / _norms(reference) - 1)
    measured = Fidelity(
        samples=len(cosine),
        cosine_min=float(cosine.min()),
        cosine_mean=float(cosine.mean()),
        max_abs_diff=float(np.abs(reference.astype(np.float64) - candidate).max()),
        norm_ratio_max=float(ratio.max()),
    )
    measured.failures = judge(measured, target)
    return measured


def judge(measured: Fidelity, target: EmbeddingTarget) -> list[str]:
    """Every way the numbers miss `target`, written as `not (measured meets limit)` so that a NaN fails."""
    failures = []
    if not measured.cosine_min >= target.cosine_min:
        failures.append(f"cosine min {measured.cosine_min:.6f} < {target.cosine_min}")
    if target.cosine_mean is not None and not measured.cosine_mean >= target.cosine_mean:
        failures.append(f"cosine mean {measured.cosine_mean:.6f} < {target.cosine_mean}")
    if not measured.norm_ratio_max <= target.norm_ratio_max:
        failures.append(f"embedding norm off by up to {measured.norm_ratio_max:.2e} of the reference's > {target.norm_ratio_max}")
    return failures


def judge_top1(agreement: float | None, target: FidelityTarget) -> list[str]:
    """A stage's top-1 agreement against the target's minimum (None: not measured, as when a tower is missing)."""
    minimum = target.top1_agreement_min
    if minimum is None or agreement is None or agreement >= minimum:
        return []
    return [f"top-1 agreement {agreement:.3f} < {minimum}"]


def top1_agreement(reference: Embeddings, candidate: Embeddings) -> float:
    """Fraction of captions whose best-matching image is the same as with PyTorch."""

    def top1(e: Embeddings) -> np.ndarray:
        return np.argmax(normalized(e.texts) @ normalized(e.images).T, axis=1)

    return float(np.mean(top1(reference) == top1(candidate)))


def judge_client_inputs(token_ids_identical: int, captions: int, resized_rgb_max_differences: list[int]) -> dict[str, list[str]]:
    """Per tower, how an app's own input pipeline (the C++ client's) misses cn_clip's ids and Pillow's resize."""
    failures: dict[str, list[str]] = {"visual": [], "text": []}
    if token_ids_identical != captions:
        failures["text"].append(f"token ids differ from cn_clip's for {captions - token_ids_identical} captions")
    worst = max(resized_rgb_max_differences, default=0)
    if worst > RESIZED_RGB_TOLERANCE:
        failures["visual"].append(f"resized RGB differs from Pillow's by up to {worst} (tolerance {RESIZED_RGB_TOLERANCE})")
    return failures
