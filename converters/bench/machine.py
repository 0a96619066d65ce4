"""What the numbers were measured on: the CPU, the load on it, the library versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata

PACKAGES = ("numpy", "torch", "onnxruntime", "ncnn", "onnx", "faiss-cpu", "usearch")


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found
