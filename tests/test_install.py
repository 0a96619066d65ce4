"""The package as a user installs it: a wheel in a fresh virtual environment, used from any folder.

The core install (no extra) is resolved from the package index like any `pip install`, and must
index, search and serve a bundle without torch; a wheel with the test environment's packages
borrowed must convert and pass parity.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import urllib.parse
import urllib.request
import venv
from pathlib import Path

import pytest

from converters.cli import COMMANDS
from converters.data import PARITY_SET_DIR
from converters.search.loadtest import serving
from tests.conftest import convert_random

REPO = Path(__file__).resolve().parents[1]
CORE_STAGES = ("onnx-fp32", "onnx-sim", "onnx-int8")
PHOTOS = ("cat_chelsea.jpg", "coffee_cup.jpg", "grass.jpg", "astronaut.jpg")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources: setuptools' build/ folder in the clone may hold modules
    since removed, which a wheel built there would still carry."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO / "converters", source / "converters", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip(sys.executable, "wheel", "--no-deps", "--no-build-isolation", "-w", root / "wheels", source, cwd=root)
    (built,) = (root / "wheels").glob("cnclip_converters-*.whl")
    return built


def pip(python, *arguments, cwd: Path) -> None:
    """The test environment's pip, acting on `python`'s environment (which has no pip of its own)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "--quiet", *arguments], capture_output=True, text=True, cwd=cwd
    )
    assert result.returncode == 0, result.stderr[-3000:]


def fresh_venv(where: Path) -> tuple[Path, Path]:
    venv.create(where, with_pip=False)
    python = where / "bin" / "python"
    site = subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True)
    return python, Path(site.strip())


def run(python: Path, *arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, *arguments], capture_output=True, text=True, cwd=cwd)


def test_every_extra_the_commands_need_is_declared():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {extra for _, extra in COMMANDS.values() if extra} <= set(extras)


def test_a_wheel_installed_elsewhere_converts_and_passes_parity(wheel, tmp_path):
    python, site = fresh_venv(tmp_path / "venv")
    # The dependencies come from the test's own environment, added as a plain path: its .pth files
    # (among them the editable install of this repository) are not run, so `converters` is the wheel's.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip(python, "install", "--no-deps", wheel, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(python, "-c", "import converters; print(converters.__file__)", cwd=elsewhere).stdout
    assert where.startswith(str(site)), where

    result = run(python, "-m", "converters", "convert", "tiny-vit", "--checkpoint", "random",
                 "--stages", ",".join(CORE_STAGES), cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((elsewhere / "artifacts" / "tiny-vit" / "parity.json").read_text())
    assert report["passed"] and report["parity_set"]["images"] == 15


def test_the_core_install_indexes_searches_and_serves_a_bundle_without_torch(wheel, tmp_path):
    bundle = tmp_path / "bundle"
    assert convert_random("tiny-vit", bundle, stages=CORE_STAGES).parity.passed
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in PHOTOS:
        shutil.copy(PARITY_SET_DIR / "images" / name, photos / name)

    python, site = fresh_venv(tmp_path / "core")
    # No --no-deps: pip resolves the core's dependencies from the package index, as a user's install does.
    pip(python, "install", wheel, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(python, "-c", "import converters; print(converters.__file__)", cwd=elsewhere).stdout
    assert where.startswith(str(site)), where
    no_torch = run(python, "-c", "import torch", cwd=elsewhere)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    runtimes = run(python, "-c", "import converters.app.runtimes.ncnn_runtime, converters.app.runtimes.onnx_runtime",
                   cwd=elsewhere)
    assert runtimes.returncode == 0, runtimes.stderr[-3000:]

    index = tmp_path / "index"
    cli = (python, "-m", "converters")
    indexed = run(*cli, "index", str(photos), "--bundle", str(bundle), "--index", str(index), cwd=elsewhere)
    assert indexed.returncode == 0, indexed.stderr[-3000:]
    found = run(*cli, "search", "一只猫", "--index", str(index), "--top", "3", "--json", cwd=elsewhere)
    assert found.returncode == 0, found.stderr[-3000:]
    answer = json.loads(found.stdout)
    assert answer["indexed"] == len(PHOTOS) and len(answer["hits"]) == 3
    assert {Path(hit["path"]).name for hit in answer["hits"]} <= set(PHOTOS)

    served = serve_and_ask(python, index, "草地", elsewhere, tmp_path / "serve.log")
    assert served["indexed"] == len(PHOTOS) and served["hits"] and served["query"] == "草地"

    convert = run(*cli, "convert", "tiny-vit", "--checkpoint", "random", cwd=elsewhere)
    assert convert.returncode == 2 and "Traceback" not in convert.stderr, convert.stderr[-3000:]
    assert "convert needs the [convert] extra: pip install 'cnclip-converters[convert]'" in convert.stderr
    assert "torch" in convert.stderr.split("not installed:")[1]


def serve_and_ask(python: Path, index: Path, query: str, cwd: Path, log: Path) -> dict:
    """Start `python`'s `serve` in `cwd` on a free loopback port, ask it one text search over HTTP, and stop it."""
    with serving(index, log, python=python, cwd=cwd) as (base, _):
        url = f"{base}/api/search?" + urllib.parse.urlencode({"q": query, "top": 2})
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, whatever *_proxy says
        with direct.open(url, timeout=10) as response:
            return json.loads(response.read())
