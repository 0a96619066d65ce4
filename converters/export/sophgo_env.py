"""The recipe of tpu-mlir's tool environment (`make sophgo-env`, or `python -m converters.export.sophgo_env`).

tpu-mlir (Sophgo's compiler and simulator for the BM1684X) requires Python 3.10 exactly and pins numpy 1.24,
protobuf 3.20 and onnx 1.14, none of which can live beside this project's own libraries; so it gets its own
virtualenv (`converters.app.runtimes.bm1684x.env`). The recipe also applies what a plain `pip install` leaves
broken:
- the wheel bundles glibc 2.35's libc/libm/libpthread in `lib/third_party`, which shadow Debian's newer glibc
  for every library loaded after them (`GLIBC_2.36 not found`): they are moved aside;
- its ONNX front end imports torch (only to turn arrays into arrays) and its `[onnx]` extra does not name it:
  torch is installed (PyPI's build, most of the 6.4 GB);
- psutil is used but not declared.
"""

from __future__ import annotations

import glob
from functools import partial
from pathlib import Path

from converters.app.runtimes.bm1684x.env import TPU_MLIR, TPU_MLIR_VERSION
from converters.export.tool_env import Run, create, find_python, main, pip_install

# What tpu-mlir's own metadata pins for its [onnx] and [torch] extras; torchvision is not needed.
REQUIREMENTS = (f"tpu_mlir[onnx]=={TPU_MLIR_VERSION}", "torch==2.11.0", "psutil")
GLIBC_SHADOWS = ("libc.so.6", "libm.so.6", "libpthread.so.0")

find_python310 = partial(find_python, "3.10", "CNCLIP_PYTHON310", "tpu-mlir (its wheel says Requires-Python >=3.10,<3.11)")


def _install(root: Path, run: Run) -> None:
    run([*pip_install(root), *REQUIREMENTS], "pip install (about 6.4 GB: check the network and the free disk)")
    (site,) = glob.glob(str(root / "lib" / "python3.10" / "site-packages" / "tpu_mlir"))
    aside = root / "glibc-moved-aside"
    aside.mkdir()
    for name in GLIBC_SHADOWS:
        shadow = Path(site) / "lib" / "third_party" / name
        if shadow.exists():
            shadow.rename(aside / name)
    # The first import marks tpu-mlir's tools executable (and says so on stdout, which must not happen later
    # inside a worker speaking on its stdout); it also proves the environment imports.
    run([str(root / "bin" / "python"), "-c", "import tpu_mlir"], "importing tpu_mlir")


def create_sophgo_env() -> Path:
    return create(TPU_MLIR, find_python310, _install, "converters.export.sophgo_env")


if __name__ == "__main__":
    main(create_sophgo_env)
