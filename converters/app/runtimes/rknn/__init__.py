"""The RKNN runtime on a machine without the chip: rknn-toolkit2's simulator, behind the runner interface.
Torch-free.

A `rknn-*` artifact is one `.rknn` per platform (what librknnrt loads on the board). The simulator cannot run a
saved `.rknn` (`load_rknn` then `init_runtime()` refuses without a board), only a model built in the same
process. So the runner rebuilds each shipped file canonically (`build.py`) from what the manifest records (the
bundle's onnx-sim file, the options, the calibration inputs shipped beside an int8 model, the layers kept in
float16), requires the rebuilt bytes to equal the shipped ones (sha256), and simulates the rebuilt model: the
simulation is then of the very file that ships. rk3576 builds are not reproducible (`build.REPRODUCIBLE`): its
file is recorded as not proven and the simulation is of a rk3588 build of the same inputs, which the simulator
runs bit-identically (it runs the quantized graph, not the per-chip command stream).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from converters.app.artifact import Artifact
from converters.app.fsutil import sha256_file
from converters.app.runtimes.rknn.build import REPRODUCIBLE, RknnWorker, adopt, canonical_build
from converters.errors import ArtifactError

# The platform whose build stands in for files that cannot be rebuilt byte for byte.
STAND_IN = "rk3588"
# Full-size rebuilds differed before canonical builds ran on a stopped clock (build.py); none has since, and the
# attempts stay as a margin: a match on any of them proves the file all the same.
REBUILD_ATTEMPTS = 3


class RknnTower:
    """Runs a rknn artifact in the toolkit's simulator, after proving the shipped files are what its recorded
    inputs build."""

    def __init__(self, artifact: Artifact, threads: int = 0):
        description = artifact.rknn
        if description is None:
            raise ArtifactError(f"{artifact.key}: the manifest does not describe its .rknn files; convert again.")
        self.artifact, self.input = artifact, artifact.spec.inputs[0]
        self.root, self.build_record = artifact.model_file.parent, description["build"]
        self.worker: RknnWorker | None = None
        for entry in description["files"]:
            if entry["platform"] in REPRODUCIBLE:
                self._prove(entry)
        if self.worker is None:
            self.worker = self._rebuild(STAND_IN)[0]

    def _prove(self, entry: dict) -> None:
        shipped = sha256_file(self.root / entry["file"])
        # Built by this process a moment ago (the float fallback's trial, parity right after convert): its worker.
        worker = adopt(shipped) or self._proven_rebuild(entry, shipped)
        if self.worker is None:
            self.worker = worker
        else:
            worker.close()

    def _proven_rebuild(self, entry: dict, shipped: str) -> RknnWorker:
        """The worker of a rebuild whose bytes are the shipped file's, or an ArtifactError."""
        for _ in range(REBUILD_ATTEMPTS):
            worker, rebuilt = self._rebuild(entry["platform"])
            if rebuilt == shipped:
                return worker
            worker.close()
        raise ArtifactError(
            f"{self.artifact.key}: {entry['file']} is not what its recorded inputs build (sha256 {shipped[:12]}…; "
            f"{REBUILD_ATTEMPTS} canonical rebuilds gave others, the last {rebuilt[:12]}…). The simulator cannot run a "
            "saved .rknn, so the simulation would not be of the file that ships: the file was changed or swapped, "
            "the toolkit environment differs from the one that built it, or the rebuild is not reproducible on this "
            "machine. Convert again.")

    def _rebuild(self, platform: str) -> tuple[RknnWorker, str]:
        """A canonical build of the recorded inputs for `platform`: its worker and the sha256 of its file."""
        onnx = [self.root / name for name in self.build_record["onnx_files"]]
        for file, sha256 in zip(onnx, self.build_record["onnx_sha256"]):
            if not file.is_file() or sha256_file(file) != sha256:
                raise ArtifactError(f"{self.artifact.key} is rebuilt from {file.name} to be simulated, and that file "
                                    "is missing or not the one it was built from: convert again.")
        calibration = self.build_record["calibration"]
        calibration = np.load(self.root / calibration) if calibration else None
        with tempfile.TemporaryDirectory() as folder:
            worker, answer = canonical_build({**self.build_record["spec"], "platform": platform}, onnx, calibration,
                                             Path(folder) / "rebuilt.rknn")
        return worker, answer["sha256"]

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        """[N, 3, R, R] pixels, or [N, L] token ids padded with 0 to the context length (the fixed shape the
        model was built for) → [N, D], one sample at a time (the model takes batch 1)."""
        fixed = tuple(self.input.shape[1:])
        if tuple(inputs.shape[1:]) != fixed:
            raise ValueError(f"{self.artifact.key} takes [N, {', '.join(map(str, fixed))}], got {list(inputs.shape)}")
        rows = [self.worker.run(np.ascontiguousarray(sample[None], dtype=self.input.dtype)) for sample in inputs]
        return np.concatenate([row.reshape(1, -1) for row in rows]).astype(np.float32)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
