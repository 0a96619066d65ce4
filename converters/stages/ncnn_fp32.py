"""Stage `ncnn-fp32`: one tower → ncnn .param/.bin with fp32 weights, fp16 Options off."""

from __future__ import annotations

from pathlib import Path

from converters.artifact import Artifact
from converters.config import NcnnOptions
from converters.ncnn_convert import PRECISIONS, convert_tower
from converters.stages.checkpoint import TorchTower

NAME = "ncnn-fp32"
PARENT = "checkpoint"
PRECISION = PRECISIONS["fp32"]


def run(parent: TorchTower, options: NcnnOptions, workdir: Path) -> Artifact:
    return convert_tower(parent.model, parent.config, parent.spec.tower, PRECISION, workdir, NAME)
