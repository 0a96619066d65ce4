"""Shared fixtures: tiny bundles converted once per test session, with random weights; and what a run left out."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from converters.app.specs import SIMULATED_RUNTIMES, STAGE_NAMES, runtime_of
from converters.export.config import load_config
from converters.export.pipeline import Conversion, ConvertRequest, convert
from converters.progress import Event
from converters.validate.report import render_markdown

TINY_MODELS = ("tiny-vit", "tiny-rn")
# Every stage but those of simulated accelerators (bm1684x, rknn), whose simulators add half a minute to each
# parity run of a bundle (their tests in tests/export/stages/ convert them into a copy of their own).
TINY_BUNDLE_STAGES = tuple(stage for stage in STAGE_NAMES if runtime_of(stage) not in SIMULATED_RUNTIMES)


def convert_random(model: str, out: Path, events: list[Event] | None = None, **overrides) -> Conversion:
    overrides.setdefault("stages", TINY_BUNDLE_STAGES)
    request = ConvertRequest(load_config(model), out, "random", out / "cache", **overrides)
    return convert(request, (events if events is not None else []).append)


@pytest.fixture(scope="session", params=TINY_MODELS)
def tiny_bundle(request, tmp_path_factory) -> Path:
    """A tiny bundle as `convert` leaves it, parity passed; tests must not modify it (copy it first)."""
    out = tmp_path_factory.mktemp(request.param) / "bundle"
    report = convert_random(request.param, out).parity
    assert report.passed, render_markdown(report)
    return out


def pytest_terminal_summary(terminalreporter, config) -> None:
    """Name what `-m` left out and how to run it (`make test-core`), from the markers' own lines in pyproject.toml
    (those naming the targets that run them; plugins register markers of their own)."""
    described = {name: text for name, text in (line.split(":", 1) for line in config.getini("markers")) if "run by make" in text}
    left_out = Counter(name for item in terminalreporter.stats.get("deselected", [])
                       for name in {mark.name for mark in item.iter_markers()} if name in described)
    for name, count in sorted(left_out.items()):
        terminalreporter.write_line(f"left out {count} test{'s' * (count != 1)} marked {name}: {described[name].strip()}")


# Markers of the longest test files, longest first (pytest's --durations in CI).
LONG_RUNNING = ("fullsize", "client", "sophgo", "rknn")


def pytest_collection_modifyitems(items) -> None:
    """The longest files first: `make test` gives two workers a file at a time, and a long file collected last ran
    alone at the end of a fresh CI run (the full-size conversions, five minutes on one core)."""
    def rank(item) -> int:
        return next((i for i, name in enumerate(LONG_RUNNING) if item.get_closest_marker(name)), len(LONG_RUNNING))
    items.sort(key=rank)
