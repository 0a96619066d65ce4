"""A wheel of the package, installed (not editable) into a fresh virtual environment, works from any folder."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_wheel_installed_elsewhere_converts_and_passes_parity(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", wheels, REPO],
        check=True, capture_output=True, cwd=tmp_path,
    )
    (wheel,) = wheels.glob("cnclip_converters-*.whl")
    env = tmp_path / "venv"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True).strip())
    # The dependencies come from the test's own environment, added as a plain path: its .pth files
    # (among them the editable install of this repository) are not run, so `converters` is the wheel's.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel],
        check=True, capture_output=True, cwd=tmp_path,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.check_output([python, "-c", "import converters; print(converters.__file__)"], text=True, cwd=elsewhere)
    assert where.startswith(str(site)), where

    result = subprocess.run(
        [python, "-m", "converters", "convert", "tiny-vit", "--checkpoint", "random",
         "--stages", "onnx-fp32,onnx-sim,onnx-int8"],
        capture_output=True, text=True, cwd=elsewhere,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((elsewhere / "artifacts" / "tiny-vit" / "parity.json").read_text())
    assert report["passed"] and report["parity_set"]["images"] == 15
