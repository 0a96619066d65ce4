"""The measurement loop: warm up, then time calls until both a run count and a time budget are reached."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Budget:
    warmup: int  # untimed calls first: thread pools start and memory is first touched there
    min_runs: int
    max_runs: int
    min_seconds: float  # keep timing fast calls this long, so one noisy moment moves the median less


FULL = Budget(warmup=2, min_runs=5, max_runs=50, min_seconds=3.0)
QUICK = Budget(warmup=1, min_runs=3, max_runs=3, min_seconds=0.0)


@dataclass
class Timing:
    runs: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float  # the least disturbed run: what a peak is made of


def time_calls(call: Callable[[], object], budget: Budget) -> Timing:
    for _ in range(budget.warmup):
        call()
    seconds: list[float] = []
    started = time.perf_counter()
    while len(seconds) < budget.max_runs and (
        len(seconds) < budget.min_runs or time.perf_counter() - started < budget.min_seconds
    ):
        before = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - before)
    return summarize(seconds)


def summarize(seconds: list[float]) -> Timing:
    milliseconds = np.array(seconds) * 1000
    p10, median, p90 = (round(float(value), 3) for value in np.percentile(milliseconds, [10, 50, 90]))
    return Timing(len(seconds), median, p10, p90, round(float(milliseconds.min()), 3))
