"""rknn-toolkit2's tool environment (Rockchip's compiler and simulator for the RK3588 family): a Python 3.11
virtualenv of its own, made by `make rknn-env` (`converters.export.rknn_env` says what its recipe fixes)."""

from __future__ import annotations

from converters.app.tool_env import ToolEnv

RKNN_TOOLKIT_VERSION = "2.5.0"
# Revision 2 adds libfaketime, whose stopped clock canonical builds run on (converters.app.runtimes.rknn.build).
RKNN_ENV = ToolEnv("rknn-toolkit2", RKNN_TOOLKIT_VERSION, "CNCLIP_RKNN_ENV", "make rknn-env",
                   "about 630 MB of disk, 30 s on a 2-core machine; needs Python 3.11", revision=2)
SITE_PACKAGES = "lib/python3.11/site-packages"  # inside the environment
# The library that stops the clock, as the environment's pip installs it.
FAKETIME_LIBRARY = f"{SITE_PACKAGES}/libfaketime/vendor/libfaketime/src/libfaketime.so.1"
