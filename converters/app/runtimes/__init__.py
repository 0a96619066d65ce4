"""Runtimes behind one small interface.

An `Embedder` turns preprocessed pixels and padded token ids into
embeddings: unnormalized, but where the tower's output role says
`normalized_embedding`. The parity checker, the search engine and the
benchmark use this interface and nothing else. bm1684x artifacts run in
tpu-mlir's simulators (`bm1684x/`), rknn artifacts in rknn-toolkit2's (`rknn/`), each in a worker of its own
environment. Torch-free: the PyTorch
reference lives in `converters.export.torch_reference` and is imported only by the converter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from converters.app.artifact import Artifact
from converters.errors import UserError


class TowerRunner(Protocol):
    def embed(self, inputs: np.ndarray) -> np.ndarray:
        """[N, ...] model inputs (pixels, or token ids padded with 0) → [N, D] float32."""


class Embedder(Protocol):
    def embed_images(self, pixels: np.ndarray) -> np.ndarray: ...

    def embed_texts(self, token_ids: np.ndarray) -> np.ndarray: ...


@dataclass
class TowerPair:
    """An Embedder made of one runner per tower."""

    visual: TowerRunner
    text: TowerRunner

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        return self.visual.embed(pixels)

    def embed_texts(self, token_ids: np.ndarray) -> np.ndarray:
        return self.text.embed(token_ids)


def open_tower(artifact: Artifact, threads: int = 0, gpu: bool = False) -> TowerRunner:
    """A runner for `artifact` in its own runtime; `threads=0` lets the runtime use all cores. `gpu`: onnxruntime's
    CUDA provider (the other runtimes have their own devices, or none)."""
    if artifact.runtime == "onnxruntime":
        from converters.app.runtimes.onnx_runtime import OnnxTower

        return OnnxTower(artifact, threads, gpu)
    if gpu:
        raise UserError(f"{artifact.key} runs in {artifact.runtime}: only onnx-* stages run on a GPU here.")
    if artifact.runtime == "ncnn":
        from converters.app.runtimes.ncnn_runtime import NcnnTower

        return NcnnTower(artifact, threads)
    if artifact.runtime == "bmruntime":
        from converters.app.runtimes.bm1684x import BmTower

        return BmTower(artifact, threads)
    if artifact.runtime == "rknnrt":
        from converters.app.runtimes.rknn import RknnTower

        return RknnTower(artifact, threads)
    raise ValueError(f"unknown runtime {artifact.runtime!r} for {artifact.key}")
