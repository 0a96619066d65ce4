"""The BM1684X runtime on a machine without the chip: tpu-mlir's simulators, behind the runner interface. Torch-free.

A `bm1684x-*` artifact is one `.bmodel` per batch size (what the device
loads with bmruntime or sail) and the lowered graph it was compiled from
(`.tpu.mlir` and its weights). Two layers check it:
- `simulator="interpreter"` (the default, what parity runs on the whole parity set
  and the search engine uses): tpu-mlir's interpreter of the lowered graph, the
  compiler's numeric model of the chip, seconds per ViT-B-16 sample;
- `simulator="cmodel"`: the `.bmodel` itself on bmruntime over the cmodel,
  tpu-mlir's bit-accurate simulator of the chip, minutes per ViT-B-16 sample;
  parity runs it on a sample.
Both run in a worker process of the tpu-mlir tool environment (`env.py`,
`worker.py`), which speaks numpy arrays over a pipe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.app.artifact import Artifact
from converters.app.runtimes.bm1684x.env import TPU_MLIR
from converters.app.runtimes.tool_worker import PipeWorker
from converters.errors import ArtifactError

WORKER = Path(__file__).resolve().parent / "worker.py"
# The lowered graph is compiled for one sample at a time; the bmodels for the batch sizes the manifest lists.
LOWERED_BATCH = 1


class ToolWorker(PipeWorker):
    """One worker process of the tpu-mlir environment; requests and answers as in worker.py."""

    def __init__(self, threads: int = 0):
        env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
        super().__init__(TPU_MLIR, [str(TPU_MLIR.python()), str(WORKER)], {**TPU_MLIR.process_env(), **env}, _describe)


def _describe(request: dict) -> str:
    if "load" in request:
        return f"loading {request['load']} into the {request['simulator']}"
    if "ops" in request:
        return f"reading the ops of {request['ops']}"
    if "run" in request:
        return "running a model"
    return f"answering {request}"


class BmTower:
    """Runs a bm1684x artifact in one of tpu-mlir's two simulators: the interpreter of the lowered graph, or the
    bit-accurate cmodel running the .bmodel of batch size `batch`."""

    def __init__(self, artifact: Artifact, threads: int = 0, simulator: str = "interpreter", batch: int = 1):
        description = artifact.bmodel
        if description is None:
            raise ArtifactError(f"{artifact.key}: the manifest does not describe its bmodels; convert again.")
        self.artifact = artifact
        if simulator == "interpreter":
            path, self.batch = _file_named(artifact, description["lowered_graph"]), LOWERED_BATCH
        else:
            nets = {net["batch"]: net for net in description["nets"]}
            if batch not in nets:
                raise ArtifactError(f"{artifact.key} has bmodels for batch sizes {sorted(nets)}, not {batch}.")
            path, self.batch = _file_named(artifact, nets[batch]["file"]), batch
        self.input = artifact.spec.inputs[0]
        self.worker = ToolWorker(threads)
        self.worker.ask({"load": str(path), "simulator": simulator})

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        """[N, 3, R, R] pixels, or [N, L] token ids padded with 0 (to the context length, the fixed shape the
        device runs) → [N, D]. Batches of the bmodel's size; a short last batch is filled with its last sample."""
        fixed = tuple(self.input.shape[1:])
        if tuple(inputs.shape[1:]) != fixed:
            raise ValueError(f"{self.artifact.key} takes [N, {', '.join(map(str, fixed))}], got {list(inputs.shape)}")
        rows = []
        for start in range(0, len(inputs), self.batch):
            chunk = inputs[start : start + self.batch]
            filler = np.repeat(chunk[-1:], self.batch - len(chunk), axis=0)
            batch = np.ascontiguousarray(np.concatenate([chunk, filler]), dtype=self.input.dtype)
            _, arrays = self.worker.ask({"run": True}, input=batch)
            rows.append(arrays["output"].reshape(self.batch, -1)[: len(chunk)])
        return np.concatenate(rows)

    def close(self) -> None:
        self.worker.close()


def _file_named(artifact: Artifact, name: str) -> Path:
    for path in artifact.files:
        if path.name == name:
            return path
    raise ArtifactError(f"{artifact.key}: the manifest's bmodel description names {name}, which is not one of its files.")
