"""Where the tpu-mlir tool environment is, and how its processes are started: a Python 3.10 virtualenv of its own,
used through subprocesses, nothing of it imported here.

It lives outside any clone, keyed by the tpu-mlir version: `~/.cache/cnclip/tpu-mlir/<version>`, or
`$CNCLIP_TPU_MLIR_ENV`. It is made by the recipe in `converters.export.sophgo_env` (`make sophgo-env`), which
says what it fixes; this side only finds it.
"""

from __future__ import annotations

import os
from pathlib import Path

from converters.errors import UserError

TPU_MLIR_VERSION = "1.30.2"
# Written last by the recipe (converters.export.sophgo_env): a folder without it is not a usable environment.
COMPLETE_MARK = ".complete"
REBUILD_HINT = "Remove it (rm -rf {root}) and run `make sophgo-env` again."


def env_dir() -> Path:
    override = os.environ.get("CNCLIP_TPU_MLIR_ENV")
    root = Path(override) if override else Path.home() / ".cache" / "cnclip" / "tpu-mlir" / TPU_MLIR_VERSION
    # tpu-mlir builds shell commands from its own install path without quoting them.
    if " " in str(root.absolute()):
        raise UserError(f"tpu-mlir cannot run from a path with spaces ({root}); set CNCLIP_TPU_MLIR_ENV to another.")
    return root


def tool_python() -> Path:
    """The environment's Python, or a UserError saying how to make it."""
    root = env_dir()
    if not (root / COMPLETE_MARK).is_file():
        raise UserError(
            f"The tpu-mlir {TPU_MLIR_VERSION} tool environment the bm1684x stages need is not installed at {root}. "
            "Run `make sophgo-env` to make it there (about 6.4 GB of downloads and disk; needs Python 3.10), "
            "or set CNCLIP_TPU_MLIR_ENV to the folder it should be made in or was made in."
        )
    return root / "bin" / "python"


def tool_env() -> dict[str, str]:
    """The environment tpu-mlir's processes run in: ours, without anything that points Python at this project."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
