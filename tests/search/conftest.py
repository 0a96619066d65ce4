"""Fixtures of the serve tests: an index of the shipped photos, served in-process or on a loopback port."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner
from starlette.testclient import TestClient

from converters.cli import cli
from converters.data import PARITY_SET_DIR
from converters.search.network import free_port
from converters.search.serve import Library, create_app

PHOTOS = PARITY_SET_DIR / "images"


def index(photos: Path, index_dir: Path, bundle: Path | None = None) -> None:
    args = ["index", str(photos), "--index", str(index_dir), *(["--bundle", str(bundle)] if bundle else [])]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output


@pytest.fixture(autouse=True)
def reloads_finish_before_answering(monkeypatch):
    """The request that notices a commit answers after its reload, so that a test sees the commit at once; a server
    waits Library.RELOAD_WAIT at most (test_reload.py shows it)."""
    monkeypatch.setattr(Library, "RELOAD_WAIT", None)


@pytest.fixture
def library(tiny_bundle, tmp_path) -> tuple[Path, Path, Path]:
    """(photos, index dir, bundle): the shipped photos indexed with a copy of the tiny bundle, which tests may change."""
    photos, bundle = tmp_path / "photos", tmp_path / "bundle"
    shutil.copytree(PHOTOS, photos)
    shutil.copytree(tiny_bundle, bundle)
    os.utime(photos / "grass.jpg", (1_600_000_000, 1_600_000_000))  # 2020-09-13: the only photo before 2021
    (tmp_path / "secret.txt").write_text("not for the web")
    index(photos, tmp_path / "index", bundle)
    return photos, tmp_path / "index", bundle


@pytest.fixture
def served(library) -> tuple[TestClient, Path]:
    photos, index_dir, _ = library
    return TestClient(create_app(Library.open(index_dir, None, 1)), base_url="http://localhost"), photos


@contextlib.contextmanager
def live(app) -> Iterator[str]:
    """`app` served by uvicorn on a free loopback port in a thread, as `serve` runs it; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)

