"""A converted tower: as a stage makes it (`Artifact`), and as the manifest records it (`ArtifactEntry`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from converters.app.fsutil import sha256_file
from converters.app.specs import TensorSpec, Tower, TowerSpec, runtime_of, stage_spec


@dataclass(frozen=True)
class FileRecord:
    path: str  # relative to the bundle folder, '/'-separated
    bytes: int
    sha256: str

    @classmethod
    def of(cls, path: Path, root: Path) -> "FileRecord":
        return cls(path.relative_to(root).as_posix(), path.stat().st_size, sha256_file(path))

    def to_json(self) -> dict:
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class Artifact:
    """Files on disk (the model file first, then its companions: external data, ncnn .bin) and what they take."""

    tower: Tower
    stage: str
    files: tuple[Path, ...]
    spec: TowerSpec
    # Settings the app must give the runtime to reproduce the parity numbers.
    runtime_options: dict = field(default_factory=dict)
    # Quantized stages: which layers were kept out of the stage's precision, and the measurements that chose them
    # (converters.export.mixed_precision.KeptLayersChoice.to_json).
    mixed_precision: dict | None = None
    # The execution providers the files are meant for, when not only the CPU (onnx-fp16: GPUs, CoreML, NNAPI).
    execution_providers: tuple[str, ...] = ()
    # bm1684x stages: chip, quantization, the lowered graph and one net per batch size (file, tensors, the
    # compiler's time estimate); see converters.export.stages.bm1684x.
    bmodel: dict | None = None
    # rknn stages: one .rknn per platform with its sha256, its tensors as the board's runtime takes them, and
    # what a canonical rebuild needs (converters.app.runtimes.rknn); see converters.export.stages.rknn.
    rknn: dict | None = None

    @property
    def runtime(self) -> str:
        return runtime_of(self.stage)

    @property
    def precision(self) -> str:
        return stage_spec(self.stage).precision

    @property
    def model_file(self) -> Path:
        return self.files[0]

    @property
    def key(self) -> str:
        return f"{self.tower}.{self.stage}"

    def moved_to(self, files: list[Path]) -> "Artifact":
        return dataclasses.replace(self, files=tuple(files))


@dataclass(frozen=True)
class ArtifactEntry:
    """One artifact of `manifest.json`: the artifact, its files with bytes and sha256, how it was made."""

    artifact: Artifact
    files: tuple[FileRecord, ...]
    inputs_digest: str  # the parent's content and the stage's options: unchanged means up to date

    @classmethod
    def of(cls, artifact: Artifact, root: Path, inputs_digest: str) -> "ArtifactEntry":
        return cls(artifact, tuple(FileRecord.of(f, root) for f in artifact.files), inputs_digest)

    def to_json(self) -> dict:
        artifact = self.artifact
        return {
            "tower": artifact.tower,
            "stage": artifact.stage,
            "runtime": artifact.runtime,
            "precision": artifact.precision,
            "files": [f.to_json() for f in self.files],
            "inputs": [t.to_json() for t in artifact.spec.inputs],
            "outputs": [t.to_json() for t in artifact.spec.outputs],
            "runtime_options": artifact.runtime_options,
            "inputs_digest": self.inputs_digest,
        } | ({} if artifact.mixed_precision is None else {"mixed_precision": artifact.mixed_precision}) | (
            {"execution_providers": list(artifact.execution_providers)} if artifact.execution_providers else {}
        ) | ({} if artifact.bmodel is None else {"bmodel": artifact.bmodel}) | (
            {} if artifact.rknn is None else {"rknn": artifact.rknn})

    @classmethod
    def from_json(cls, data: dict, root: Path) -> "ArtifactEntry":
        spec = TowerSpec(
            data["tower"],
            tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            tuple(TensorSpec.from_json(t) for t in data["outputs"]),
        )
        files = tuple(FileRecord(**f) for f in data["files"])
        artifact = Artifact(data["tower"], data["stage"], tuple(root / f.path for f in files), spec,
                            data["runtime_options"], data.get("mixed_precision"),
                            tuple(data.get("execution_providers", ())), data.get("bmodel"),
                            data.get("rknn"))
        return cls(artifact, files, data["inputs_digest"])
