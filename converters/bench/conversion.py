"""Wall time and peak memory of a whole conversion, with each step's share.

One fresh process converts the bundle's weights again, every stage, into a
scratch folder, as one `convert --no-parity` run does: a single process
keeps the loaded PyTorch model from the first stage to the last, so its
peak is what a user meets, which separate processes per stage would hide.
The steps are the spans between the pipeline's progress events (its only
hook; the pipeline is not changed for the benchmark). Each step's peak
comes from resetting the kernel's resident high-water mark (VmHWM) as the
step opens and reading it as the step closes.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from converters.bench.processes import peak_rss_mb, run_fresh, take_high_water_mb
from converters.bench.report import ConversionRun, ConversionStep
from converters.export.config import ModelConfig

START_UP = "start-up: importing the converter, reading the config"


def bench_conversion(config: ModelConfig, checkpoint: str, threads: int) -> ConversionRun:
    """Convert `config`'s model from `checkpoint` (a path or "random") into a scratch folder, timed from process start."""
    with tempfile.TemporaryDirectory(prefix="cnclip-bench-convert-") as scratch:
        started = time.perf_counter()
        run = run_fresh(convert_measured, config, checkpoint, Path(scratch), threads=threads)
        seconds = time.perf_counter() - started
    return dataclasses.replace(run, seconds=round(seconds, 3))


def convert_measured(config: ModelConfig, checkpoint: str, out: Path) -> ConversionRun:
    steps = _StepClock()
    steps.open(START_UP)
    from converters.export.pipeline import DEFAULT_STAGES, ConvertRequest, convert
    from converters.progress import Event, render

    def progress(event: Event) -> None:
        print(f"[cnclip] bench convert: {render(event)}", file=sys.stderr)
        steps.open(render(event))

    convert(ConvertRequest(config, out, checkpoint, out / "cache", DEFAULT_STAGES, parity=False), progress)
    steps.close()
    # Resetting VmHWM resets getrusage's peak too, so the steps' peaks are the record where there are any.
    peaks = [step.peak_mb for step in steps.steps if step.peak_mb is not None]
    peak = max(peaks) if peaks else round(peak_rss_mb(), 1)
    # `seconds` is replaced by the parent's measurement, which includes the interpreter's start.
    return ConversionRun(list(DEFAULT_STAGES), 0.0, peak, steps.steps)


class _StepClock:
    """Closes the open step whenever a new one opens: its wall time and its resident peak."""

    def __init__(self) -> None:
        self.steps: list[ConversionStep] = []
        self._current: tuple[str, float] | None = None

    def open(self, label: str) -> None:
        self._record(take_high_water_mb())  # the peak since the last reset belongs to the step that ends here
        self._current = (label, time.perf_counter())

    def close(self) -> None:
        self._record(take_high_water_mb())
        self._current = None

    def _record(self, peak: float | None) -> None:
        if self._current is not None:
            label, since = self._current
            seconds = round(time.perf_counter() - since, 3)
            self.steps.append(ConversionStep(label, seconds, None if peak is None else round(peak, 1)))
