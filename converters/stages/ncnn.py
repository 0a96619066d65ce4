"""Stage `ncnn`: one tower → ncnn .param/.bin with fp16 weights, run with ncnn's default Options.

This is what an app gets with pnnx's and ncnn's defaults (half the size of
fp32); the `ncnn-fp32` stage is the same graph with fp32 weights, which
separates conversion error from fp16 rounding in the parity report.
"""

from __future__ import annotations

from pathlib import Path

from converters.artifact import Artifact
from converters.config import NcnnOptions
from converters.ncnn_convert import PRECISIONS, convert_tower
from converters.stages.checkpoint import TorchTower

NAME = "ncnn"
PARENT = "checkpoint"
PRECISION = PRECISIONS["fp16"]


def run(parent: TorchTower, options: NcnnOptions, workdir: Path) -> Artifact:
    return convert_tower(parent.model, parent.config, parent.spec.tower, PRECISION, workdir, NAME)
