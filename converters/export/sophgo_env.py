"""The recipe that makes tpu-mlir's tool environment (`make sophgo-env`, or `python -m converters.export.sophgo_env`).

tpu-mlir (Sophgo's compiler and simulator for the BM1684X) requires Python
3.10 exactly and pins numpy 1.24, protobuf 3.20 and onnx 1.14, none of which
can live beside this project's own libraries; so it gets its own virtualenv
(found by `converters.app.runtimes.bm1684x.env`). The recipe also applies what
a plain `pip install` leaves broken:
- the wheel bundles glibc 2.35's libc/libm/libpthread in `lib/third_party`,
  which shadow Debian's newer glibc for every library loaded after them
  (`GLIBC_2.36 not found`): they are moved aside;
- its ONNX front end imports torch (only to turn arrays into arrays) and its
  `[onnx]` extra does not name it: torch is installed (PyPI's build, most of the 6.4 GB);
- psutil is used but not declared.
A mark written last says the environment is complete, so an interrupted build
never looks finished (and is redone), and a lock keeps two builds apart.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

from converters.app.fsutil import exclusive
from converters.app.runtimes.bm1684x.env import COMPLETE_MARK, REBUILD_HINT, TPU_MLIR_VERSION, env_dir
from converters.errors import UserError

# What tpu-mlir's own metadata pins for its [onnx] and [torch] extras; torchvision is not needed.
REQUIREMENTS = (f"tpu_mlir[onnx]=={TPU_MLIR_VERSION}", "torch==2.11.0", "psutil")
GLIBC_SHADOWS = ("libc.so.6", "libm.so.6", "libpthread.so.0")
# Written first: a folder with it and without the complete mark is an interrupted build of ours.
STARTED_MARK = ".cnclip-recipe"


def find_python310() -> Path:
    candidates = [os.environ.get("CNCLIP_PYTHON310"), shutil.which("python3.10"),
                  *sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / "3.10*" / "bin" / "python3.10")))]
    for candidate in filter(None, candidates):
        try:
            # ensurepip too: without it (a distribution's python3.10 lacking its venv package) `-m venv` fails later.
            probe = subprocess.run([candidate, "-c", "import sys, ensurepip; print(sys.version_info[:2] == (3, 10))"],
                                   capture_output=True, text=True)
        except OSError:
            continue
        if probe.stdout.strip() == "True":
            return Path(candidate)
    raise UserError(
        "tpu-mlir needs Python 3.10 exactly (its wheel says Requires-Python >=3.10,<3.11) with its venv module, and "
        "none was found: not CNCLIP_PYTHON310, python3.10 on PATH, nor ~/.pyenv/versions/3.10.*. Install one "
        "(pyenv install 3.10, or a distribution's python3.10 with its venv package) or point CNCLIP_PYTHON310 at it."
    )


def create() -> Path:
    """Build the environment unless it is there; returns its folder."""
    root = env_dir()
    root.parent.mkdir(parents=True, exist_ok=True)
    busy = f"Another `make sophgo-env` is building {root} right now; wait for it to finish."
    with exclusive(root.with_name(root.name + ".lock"), busy):
        if (root / COMPLETE_MARK).is_file():
            return root
        if root.exists():
            if not (root / STARTED_MARK).is_file():
                raise UserError(f"{root} exists but was not made by `make sophgo-env`, so it is left alone. "
                                "Point CNCLIP_TPU_MLIR_ENV at an empty or missing folder.")
            shutil.rmtree(root)  # an interrupted build of ours
        python = find_python310()
        root.mkdir()
        (root / STARTED_MARK).write_text(f"tpu-mlir {TPU_MLIR_VERSION}, made by converters.export.sophgo_env\n")
        _run([str(python), "-m", "venv", str(root)], "creating the virtualenv")
        pip = [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        _run([*pip, *REQUIREMENTS], "pip install (about 6.4 GB: check the network and the free disk)")
        (site,) = glob.glob(str(root / "lib" / "python3.10" / "site-packages" / "tpu_mlir"))
        aside = root / "glibc-moved-aside"
        aside.mkdir()
        for name in GLIBC_SHADOWS:
            shadow = Path(site) / "lib" / "third_party" / name
            if shadow.exists():
                shadow.rename(aside / name)
        # The first import marks tpu-mlir's tools executable (and says so on stdout, which must not happen later
        # inside a worker speaking on its stdout); it also proves the environment imports.
        _run([str(root / "bin" / "python"), "-c", "import tpu_mlir"], "importing tpu_mlir")
        (root / COMPLETE_MARK).write_text(" ".join(REQUIREMENTS) + "\n")
    return root


def _run(command: list[str], what: str) -> None:
    try:
        subprocess.run(command, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise UserError(f"Making the tpu-mlir environment failed at {what}: {error}. {REBUILD_HINT.format(root=env_dir())}"
                        ) from None


if __name__ == "__main__":
    try:
        print(create())
    except UserError as error:
        sys.exit(f"error: {error}")
