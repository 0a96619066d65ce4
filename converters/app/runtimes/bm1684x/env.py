"""The tpu-mlir tool environment: a Python 3.10 virtualenv of its own, created once, used through subprocesses.

tpu-mlir (Sophgo's compiler and simulator for the BM1684X) requires Python
3.10 exactly and pins numpy 1.24, protobuf 3.20 and onnx 1.14, none of which
can live beside this project's own libraries; so it gets its own virtualenv
and nothing of it is imported here. The recipe (`create`, run by
`make sophgo-env`) also applies what a plain `pip install` leaves broken:
- the wheel bundles glibc 2.35's libc/libm/libpthread in `lib/third_party`,
  which shadow Debian's newer glibc for every library loaded after them
  (`GLIBC_2.36 not found`): they are moved aside;
- its ONNX front end imports torch (only to turn arrays into arrays) and its
  `[onnx]` extra does not name it: torch is installed (PyPI's build, several GB);
- psutil is used but not declared.
The environment is built in a temporary folder and renamed into place, so an
interrupted build never looks finished. It lives outside any clone, keyed by
the tpu-mlir version: `~/.cache/cnclip/tpu-mlir/<version>`, or
`$CNCLIP_TPU_MLIR_ENV`.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

from converters.errors import UserError

TPU_MLIR_VERSION = "1.30.2"
# What tpu-mlir's own metadata pins for its [onnx] and [torch] extras; torchvision is not needed.
REQUIREMENTS = (f"tpu_mlir[onnx]=={TPU_MLIR_VERSION}", "torch==2.11.0", "psutil")
GLIBC_SHADOWS = ("libc.so.6", "libm.so.6", "libpthread.so.0")
COMPLETE_MARK = ".complete"


def env_dir() -> Path:
    override = os.environ.get("CNCLIP_TPU_MLIR_ENV")
    return Path(override) if override else Path.home() / ".cache" / "cnclip" / "tpu-mlir" / TPU_MLIR_VERSION


def tool_python() -> Path:
    """The environment's Python, or a UserError saying how to make it."""
    root = env_dir()
    if not (root / COMPLETE_MARK).is_file():
        raise UserError(
            f"The tpu-mlir {TPU_MLIR_VERSION} tool environment the bm1684x stages need is not installed at {root}. "
            "Run `make sophgo-env` (about 7 GB of downloads and disk; needs Python 3.10), "
            "or set CNCLIP_TPU_MLIR_ENV to where one is."
        )
    return root / "bin" / "python"


def find_python310() -> Path:
    candidates = [os.environ.get("CNCLIP_PYTHON310"), shutil.which("python3.10"),
                  *sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / "3.10*" / "bin" / "python3.10")))]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys, venv; print(sys.version_info[:2] == (3, 10))"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == "True":
            return Path(candidate)
    raise UserError(
        "tpu-mlir needs Python 3.10 exactly (its wheel says Requires-Python >=3.10,<3.11), and none was found: "
        "not python3.10 on PATH, nor ~/.pyenv/versions/3.10.*. Install one (pyenv install 3.10, or Debian/Ubuntu's "
        "python3.10 with python3.10-venv) or point CNCLIP_PYTHON310 at it."
    )


def create() -> Path:
    """Build the environment unless it is there; returns its folder."""
    root = env_dir()
    if (root / COMPLETE_MARK).is_file():
        return root
    python = find_python310()
    building = root.with_name(root.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(python), "-m", "venv", str(building)], check=True)
    pip = [str(building / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *REQUIREMENTS], check=True)
    (site,) = glob.glob(str(building / "lib" / "python3.10" / "site-packages" / "tpu_mlir"))
    aside = building / "glibc-moved-aside"
    aside.mkdir()
    for name in GLIBC_SHADOWS:
        shadow = Path(site) / "lib" / "third_party" / name
        if shadow.exists():
            shadow.rename(aside / name)
    # A venv's scripts name its folder: they must be made where they will live, so rename before the mark.
    shutil.rmtree(root, ignore_errors=True)
    building.rename(root)
    _repoint_scripts(building, root)
    (root / COMPLETE_MARK).write_text(" ".join(REQUIREMENTS) + "\n")
    return root


def _repoint_scripts(old: Path, new: Path) -> None:
    """pip writes the venv's absolute path into every script's #! line and `activate`: make them name the new place."""
    for script in (new / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            data = script.read_bytes()
            if str(old).encode() in data[:4096]:
                script.write_bytes(data.replace(str(old).encode(), str(new).encode()))
    config = new / "pyvenv.cfg"
    config.write_text(config.read_text().replace(str(old), str(new)))


if __name__ == "__main__":
    try:
        print(create())
    except UserError as error:
        sys.exit(f"error: {error}")
