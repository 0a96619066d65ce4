"""A converted tower on disk, described the way the manifest records it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from converters.fsutil import sha256_file
from converters.towers import TensorSpec, Tower, TowerSpec


@dataclass(frozen=True)
class Artifact:
    tower: Tower
    stage: str
    runtime: str  # "onnxruntime" or "ncnn": the engine that runs it
    precision: str
    files: tuple[Path, ...]  # the model file first, then its companions (external data, .bin)
    spec: TowerSpec
    # Settings the app must give the runtime to reproduce the parity numbers.
    runtime_options: dict = field(default_factory=dict)

    @property
    def model_file(self) -> Path:
        return self.files[0]

    @property
    def key(self) -> str:
        return f"{self.tower}.{self.stage}"

    def moved_to(self, files: list[Path]) -> "Artifact":
        return Artifact(self.tower, self.stage, self.runtime, self.precision, tuple(files), self.spec, self.runtime_options)

    def describe(self, inputs_digest: str) -> dict:
        """The manifest entry: files with bytes and sha256, tensors with roles."""
        return {
            "tower": self.tower,
            "stage": self.stage,
            "runtime": self.runtime,
            "precision": self.precision,
            "files": [
                {"path": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in self.files
            ],
            "inputs": [t.to_json() for t in self.spec.inputs],
            "outputs": [t.to_json() for t in self.spec.outputs],
            "runtime_options": self.runtime_options,
            "inputs_digest": inputs_digest,
        }

    @classmethod
    def from_entry(cls, entry: dict, root: Path) -> "Artifact":
        spec = TowerSpec(
            entry["tower"],
            tuple(TensorSpec.from_json(t) for t in entry["inputs"]),
            tuple(TensorSpec.from_json(t) for t in entry["outputs"]),
        )
        return cls(
            entry["tower"], entry["stage"], entry["runtime"], entry["precision"],
            tuple(root / f["path"] for f in entry["files"]), spec, entry.get("runtime_options", {}),
        )
