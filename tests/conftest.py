"""Shared fixtures: tiny bundles converted once per test session, with random weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from converters.config import load_config
from converters.layout import BundleLayout
from converters.parity import render_markdown
from converters.pipeline import ConvertRequest, convert
from converters.verify import run_parity

TINY_MODELS = ("tiny-vit", "tiny-rn")


def convert_random(model: str, out: Path, messages: list[str] | None = None, **overrides):
    request = ConvertRequest(load_config(model), out, "random", out / "cache", **overrides)
    return convert(request, (messages if messages is not None else []).append)


@pytest.fixture(scope="session", params=TINY_MODELS)
def tiny_bundle(request, tmp_path_factory) -> Path:
    """A tiny bundle as `convert` leaves it, parity passed; tests must not modify it (copy it first)."""
    out = tmp_path_factory.mktemp(request.param) / "bundle"
    convert_random(request.param, out)
    report = run_parity(load_config(request.param), BundleLayout(out), lambda _: None)
    assert report.passed, render_markdown(report)
    return out
