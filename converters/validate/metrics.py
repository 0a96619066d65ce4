"""Numbers that compare an artifact's embeddings with PyTorch's, and the guards numbers alone would miss.

Cosine similarity cannot see an embedding scaled by 1000, and a comparison
with NaN is always False, so a NaN output would slip past `cosine < limit`.
Every check here is written so that NaN fails it, and the structural checks
(shape, finite, not all zeros) run before any number is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from converters.export.config import Tolerance


@dataclass(frozen=True)
class Embeddings:
    """One artifact's (or PyTorch's) embeddings of the parity set."""

    images: np.ndarray
    texts: np.ndarray


@dataclass
class TowerParity:
    samples: int
    cosine_min: float
    cosine_mean: float
    max_abs_diff: float
    norm_ratio_max: float  # max over samples of |norm(artifact) / norm(PyTorch) - 1|
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


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


def per_sample(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's cosine and |norm / the reference's norm - 1| (check `structural_problems` first)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cosine = np.sum(normalized(reference) * normalized(candidate), axis=1)
        ratio = np.abs(_norms(candidate) / _norms(reference) - 1)
    return cosine, ratio


def tower_parity(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance) -> TowerParity:
    """Per-sample numbers and every way they miss `tolerance`."""
    problems = structural_problems(reference, candidate)
    if problems:
        nan = float("nan")
        return TowerParity(len(reference), nan, nan, nan, nan, problems)
    cosine, ratio = per_sample(reference, candidate)
    measured = TowerParity(
        samples=len(cosine),
        cosine_min=float(cosine.min()),
        cosine_mean=float(cosine.mean()),
        max_abs_diff=float(np.abs(reference.astype(np.float64) - candidate).max()),
        norm_ratio_max=float(ratio.max()),
    )
    # Written as `not (measured meets limit)` so that a NaN fails.
    if not measured.cosine_min >= tolerance.cosine_min:
        measured.failures.append(f"cosine min {measured.cosine_min:.6f} < {tolerance.cosine_min}")
    if tolerance.cosine_mean is not None and not measured.cosine_mean >= tolerance.cosine_mean:
        measured.failures.append(f"cosine mean {measured.cosine_mean:.6f} < {tolerance.cosine_mean}")
    if not measured.norm_ratio_max <= tolerance.norm_ratio_max:
        measured.failures.append(
            f"embedding norm off by up to {measured.norm_ratio_max:.2e} of PyTorch's > {tolerance.norm_ratio_max}"
        )
    return measured


def top1_agreement(reference: Embeddings, candidate: Embeddings) -> float:
    """Fraction of captions whose best-matching image is the same as with PyTorch."""

    def top1(e: Embeddings) -> np.ndarray:
        return np.argmax(normalized(e.texts) @ normalized(e.images).T, axis=1)

    return float(np.mean(top1(reference) == top1(candidate)))
