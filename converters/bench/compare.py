"""Ratios between artifacts, and the image tower's FLOP rate against the machine's matmul peak."""

from __future__ import annotations

from converters.bench.flops import MatmulPeak
from converters.bench.report import Measurement, TowerBench
from converters.bench.tower_speed import PYTORCH

# onnxruntime fp32 on the simplified graphs: what every "× ORT fp32" ratio is taken against.
BASELINE_STAGE = "onnx-sim"


def add_comparisons(towers: list[TowerBench], image_gflop: float | None, peak: MatmulPeak) -> None:
    """Fill each measurement's ratios (same tower, input and mode) and, for images, its GFLOP/s."""
    rates = {(t.artifact, t.tower, m.input, m.mode): m.per_second for t in towers for m in t.measurements}
    for tower in towers:
        for m in tower.measurements:
            m.vs_pytorch = _ratio(m, rates.get((PYTORCH, tower.tower, m.input, m.mode)))
            m.vs_onnx = _ratio(m, rates.get((BASELINE_STAGE, tower.tower, m.input, m.mode)))
            if tower.tower == "visual" and image_gflop is not None:
                m.gflops = _significant(m.per_second * image_gflop)
                m.of_matmul_peak = _significant(m.gflops / peak.gflops)


def _ratio(measurement: Measurement, baseline: float | None) -> float | None:
    return _significant(measurement.per_second / baseline) if baseline else None


def _significant(value: float) -> float:
    # Significant digits, not decimals: PyTorch on a tiny model is a thousand times slower than ONNX.
    return float(f"{value:.4g}")


def fastest(towers: list[TowerBench], tower: str, input: str, mode: str, artifacts: set[str]) -> tuple[str, Measurement] | None:
    """The artifact among `artifacts` with the most items per second for this tower, input and mode."""
    candidates = [
        (t.artifact, m) for t in towers if t.tower == tower and t.artifact in artifacts
        for m in t.measurements if m.input == input and m.mode == mode
    ]
    return max(candidates, key=lambda pair: pair[1].per_second, default=None)


def measurement(towers: list[TowerBench], artifact: str, tower: str, input: str, mode: str) -> Measurement | None:
    found = fastest(towers, tower, input, mode, {artifact})
    return found[1] if found else None
