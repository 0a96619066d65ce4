"""Shared fixtures: tiny bundles converted once per test session, with random weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from converters.export.config import load_config
from converters.export.pipeline import Conversion, ConvertRequest, convert
from converters.progress import Event
from converters.validate.report import render_markdown

TINY_MODELS = ("tiny-vit", "tiny-rn")


def convert_random(model: str, out: Path, events: list[Event] | None = None, **overrides) -> Conversion:
    request = ConvertRequest(load_config(model), out, "random", out / "cache", **overrides)
    return convert(request, (events if events is not None else []).append)


@pytest.fixture(scope="session", params=TINY_MODELS)
def tiny_bundle(request, tmp_path_factory) -> Path:
    """A tiny bundle as `convert` leaves it, parity passed; tests must not modify it (copy it first)."""
    out = tmp_path_factory.mktemp(request.param) / "bundle"
    report = convert_random(request.param, out).parity
    assert report.passed, render_markdown(report)
    return out
