"""Speed, size and memory of one tower of one artifact; `measure_tower` runs in a fresh process per tower.

Every artifact gets the same arrays: random pixels (speed does not depend on
content) and token ids of exactly [CLS] + N characters + [SEP], with no
padding columns. The ONNX and ncnn runners drop padding themselves; giving
PyTorch the unpadded ids too makes it compute the same positions, so the
ratios compare the engines, not the padding.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from converters.app.bundle import Bundle
from converters.app.specs import runtime_of
from converters.bench.processes import peak_rss_mb
from converters.bench.report import Measurement, Memory, TowerBench
from converters.bench.timing import Budget, Timing, time_calls
from converters.export.config import ModelConfig

PYTORCH = "pytorch"
# Items per call where the graph has a batch axis; ncnn graphs take one sample per call.
BATCH = 8
QUERY_CHARS = (4, 10, 20)
# Each character below is one word piece, so N characters are N + 2 tokens with [CLS] and [SEP].
QUERY_SOURCE = "一只橘色的小猫在阳光下的沙发上睡觉窗外是海边的日落远处有几艘白色的帆船和连绵的青山"

Embed = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TowerJob:
    bundle: Path
    config: ModelConfig  # the PyTorch baseline is built from it
    artifact: str  # "pytorch", or a stage of the bundle
    tower: str
    threads: int
    budget: Budget


@dataclass(frozen=True)
class OpenedTower:
    embed: Embed
    runtime: str
    precision: str
    batched: bool
    model_mb: float


def measure_tower(job: TowerJob) -> TowerBench:
    bundle = Bundle.open(job.bundle)
    imports_mb = _import_runtime(bundle, job.artifact)
    started = time.perf_counter()
    tower = _open_pytorch(bundle, job) if job.artifact == PYTORCH else _open_artifact(bundle, job)
    load_s = time.perf_counter() - started
    loaded_mb = peak_rss_mb()
    batch = BATCH if tower.batched else 1
    if job.tower == "visual":
        label = image_label(bundle.resolution)
        measurements = _measure(tower.embed, image_inputs(bundle.resolution), label, None, batch, job.budget)
    else:
        measurements = [
            row
            for chars, label in text_lengths(bundle)
            for row in _measure(tower.embed, text_inputs(bundle, chars), label, chars + 2, batch, job.budget)
        ]
    memory = Memory(round(imports_mb, 1), round(loaded_mb, 1), round(peak_rss_mb(), 1))
    return TowerBench(
        job.artifact, job.tower, tower.runtime, tower.precision, job.threads, round(tower.model_mb, 2),
        round(load_s, 3), memory, measurements,
    )


def text_lengths(bundle: Bundle) -> list[tuple[int, str]]:
    """(characters, label): typical query lengths, then the longest text the context holds."""
    full = bundle.tokenizer.max_pieces
    return [(chars, query_label(chars)) for chars in QUERY_CHARS if chars < full] + [
        (full, f"{full + 2} tokens (full context)")
    ]


def image_label(resolution: int) -> str:
    return f"image {resolution} px"


def query_label(chars: int) -> str:
    return f"{chars} chars"


def query_text(chars: int) -> str:
    return (QUERY_SOURCE * (chars // len(QUERY_SOURCE) + 1))[:chars]


def text_inputs(bundle: Bundle, chars: int) -> Callable[[int], np.ndarray]:
    text = query_text(chars)
    if bundle.tokenizer.piece_counts([text])[0] != chars:
        raise ValueError(f"the benchmark query {text!r} is not {chars} word pieces with this vocabulary")
    return lambda batch: bundle.token_ids([text] * batch)[:, : chars + 2]


def image_inputs(resolution: int) -> Callable[[int], np.ndarray]:
    return lambda batch: np.random.default_rng(0).standard_normal((batch, 3, resolution, resolution), dtype=np.float32)


def _measure(
    embed: Embed, inputs: Callable[[int], np.ndarray], label: str, tokens: int | None, batch: int, budget: Budget
) -> list[Measurement]:
    def timed(size: int) -> Timing:
        array = inputs(size)
        return time_calls(lambda: embed(array), budget)

    latency = timed(1)
    throughput = timed(batch) if batch > 1 else latency
    return [
        Measurement(label, tokens, "latency", 1, latency, _per_second(1, latency)),
        Measurement(label, tokens, "throughput", batch, throughput, _per_second(batch, throughput)),
    ]


def _per_second(batch: int, timing: Timing) -> float:
    return round(batch * 1000 / timing.median_ms, 3)


def _import_runtime(bundle: Bundle, artifact: str) -> float:
    """Import the runtime's library before any model, so that `imports_mb` is the floor to compare peaks with."""
    if artifact == PYTORCH:
        importlib.import_module("cn_clip.clip.model")  # imports torch
    else:
        importlib.import_module(runtime_of(artifact))  # the runtime names its module: "onnxruntime" or "ncnn"
    return peak_rss_mb()


def _open_artifact(bundle: Bundle, job: TowerJob) -> OpenedTower:
    from converters.app.runtimes import open_tower

    # Loading includes the sha256 check of the files, as `Bundle.embedder` does it for an app.
    artifact = bundle.manifest.artifact(job.tower, job.artifact)
    runner = open_tower(artifact, job.threads)
    # Specs name their batch axis "batch" (converters.app.specs); ncnn graphs have none and take one sample per call.
    batched = artifact.spec.inputs[0].shape[0] == "batch"
    size_mb = sum(path.stat().st_size for path in artifact.files) / 2**20
    return OpenedTower(runner.embed, artifact.runtime, artifact.precision, batched, size_mb)


def _open_pytorch(bundle: Bundle, job: TowerJob) -> OpenedTower:
    import torch

    from converters.export import checkpoint
    from converters.export.torch_reference import TorchEmbedder

    torch.set_num_threads(job.threads)
    model = checkpoint.load_recorded(job.config, bundle.manifest).model
    embedder = TorchEmbedder(model)
    visual_bytes = _tensor_bytes(model.visual)
    size = visual_bytes if job.tower == "visual" else _tensor_bytes(model) - visual_bytes
    embed = embedder.embed_images if job.tower == "visual" else embedder.embed_texts
    return OpenedTower(embed, PYTORCH, "fp32", True, size / 2**20)


def _tensor_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())
