"""The recipe of rknn-toolkit2's tool environment (`make rknn-env`, or `python -m converters.export.rknn_env`).

rknn-toolkit2 2.5.0 (Rockchip's converter and x86 simulator for the RK3588 family) ships wheels for CPython
3.10-3.12 and pins numpy<=1.26.4, onnx<=1.18 and protobuf<=4.25.4, which cannot live beside this project's own
libraries; so it gets its own virtualenv (`converters.app.runtimes.rknn.env`). What a plain
`pip install rknn-toolkit2` would get wrong, and the recipe fixes (measured in the issue-24 spike):
- it declares torch<=2.4 (a CUDA build from PyPI, gigabytes) but uses it only at import time on the ONNX path
  (`import torch.nn`, `@torch.no_grad()`): the toolkit is installed with --no-deps and a stub package `torch`
  (TORCH_STUB) stands in; any real call into it raises;
- it declares opencv-python, whose GUI build needs libGL; the headless build gives the same `cv2`;
- `RKNN()` imports pkg_resources, which setuptools 81 removes.
Python 3.11, because 3.12 venvs have no setuptools and no wheel exists for 3.13. It installs in about 30 s.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from converters.app.runtimes.rknn.env import RKNN_ENV, RKNN_TOOLKIT_VERSION, SITE_PACKAGES
from converters.export.tool_env import Run, create, find_python, main, pip_install

# What the ONNX path imports (numpy, onnx, protobuf, scipy, cv2, tqdm at import; onnxruntime at build;
# fast_histogram for mmse; ruamel.yaml for hybrid quantization), at the versions the toolkit's metadata allows.
REQUIREMENTS = ("numpy==1.26.4", "onnx==1.18.0", "protobuf==4.25.4", "onnxruntime>=1.17,<1.27", "scipy>=1.9.3,<1.18",
                "opencv-python-headless>=4.5.5.64,<4.12", "tqdm>=4.64.1", "fast-histogram>=0.11",
                "ruamel.yaml>=0.17.21,<0.20", "setuptools<81",
                # Not the toolkit's: the frozen clock of canonical builds (its wheel carries libfaketime.so.1).
                "libfaketime==3.0.1")

TORCH_STUB = '''"""Stands in for torch in an ONNX-only rknn-toolkit2 environment (written by cnclip's recipe).

rknn-toolkit2 imports torch, torch.nn and calls @torch.no_grad() at import time even for ONNX models.
Every attribute is a placeholder class; calling one (other than no_grad and its kin) raises."""
import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "2.4.0"
_DECORATORS = {"no_grad", "enable_grad", "inference_mode"}


class _Passthrough:
    def __call__(self, fn):
        return fn

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _make(cls._stubname + "." + name)

    def __call__(cls, *args, **kwargs):
        if cls._stubname.rsplit(".", 1)[-1] in _DECORATORS:
            return _Passthrough()
        raise RuntimeError("torch stub: " + cls._stubname + "() called; this rknn environment has no real torch")


def _make(name):
    return _StubMeta(name.rsplit(".", 1)[-1], (), {"_stubname": name})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _make(self.__name__ + "." + name)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.startswith("torch."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Finder())
sys.modules[__name__].__class__ = _StubModule
'''

find_python311 = partial(find_python, "3.11", "CNCLIP_PYTHON311", "rknn-toolkit2 (wheels for CPython 3.10-3.12; 3.11 venvs carry setuptools)")


def _install(root: Path, run: Run) -> None:
    run([*pip_install(root), "--no-deps", f"rknn-toolkit2=={RKNN_TOOLKIT_VERSION}"], "pip install rknn-toolkit2")
    run([*pip_install(root), *REQUIREMENTS], "pip install rknn-toolkit2's dependencies (torch left out)")
    site = root / SITE_PACKAGES
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text(TORCH_STUB, encoding="utf-8")
    # Every module byte-compiled now: a build that compiles one first allocates differently, and the toolkit writes
    # heap addresses into the .rknn, so a fresh environment's first build would differ from its next ones.
    run([str(root / "bin" / "python"), "-m", "compileall", "-q", str(site)], "byte-compiling the environment")
    run([str(root / "bin" / "python"), "-c", "from rknn.api import RKNN; RKNN()"], "importing rknn.api")


def create_rknn_env() -> Path:
    return create(RKNN_ENV, find_python311, _install, "converters.export.rknn_env")


if __name__ == "__main__":
    main(create_rknn_env)
