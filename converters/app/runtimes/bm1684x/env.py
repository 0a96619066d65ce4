"""tpu-mlir's tool environment (Sophgo's compiler and simulators for the BM1684X): a Python 3.10 virtualenv of its
own, made by `make sophgo-env` (`converters.export.sophgo_env` says what its recipe fixes)."""

from __future__ import annotations

from converters.app.tool_env import ToolEnv

TPU_MLIR_VERSION = "1.30.2"
TPU_MLIR = ToolEnv("tpu-mlir", TPU_MLIR_VERSION, "CNCLIP_TPU_MLIR_ENV", "make sophgo-env",
                   "about 6.4 GB of downloads and disk; needs Python 3.10", refuses_spaces=True)
