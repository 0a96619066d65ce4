"""`manifest.json`: the contract an app build relies on.

The manifest lists only artifacts whose files are complete: an entry is
written after its files have been moved into place, and the manifest itself
is replaced atomically. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from converters import __version__
from converters.artifact import Artifact
from converters.errors import ArtifactError
from converters.fsutil import atomic_write_text, sha256_file

SCHEMA_VERSION = 1


@dataclass
class Manifest:
    path: Path
    data: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtifactError(f"No manifest at {path}: run `make convert` (or `python -m converters convert`) first.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path} is not valid JSON ({exc}); delete it and convert again.") from None
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            raise ArtifactError(
                f"{path} has schema version {data.get('schema_version') if isinstance(data, dict) else None!r}, "
                f"this tool reads version {SCHEMA_VERSION}; convert again."
            )
        return cls(path, data)

    @classmethod
    def new(cls, path: Path, model: str) -> "Manifest":
        return cls(path, {"schema_version": SCHEMA_VERSION, "model": model, "artifacts": {}})

    @classmethod
    def load_or_new(cls, path: Path, model: str, checkpoint_sha256: str) -> "Manifest":
        """The manifest at `path` if it describes the same model and weights, else an empty one."""
        if path.is_file():
            manifest = cls.load(path)
            same = manifest.data.get("model") == model and manifest.data.get("checkpoint", {}).get("sha256") == checkpoint_sha256
            if same:
                return manifest
        return cls.new(path, model)

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def artifacts(self) -> dict[str, dict]:
        return self.data["artifacts"]

    def set(self, key: str, value) -> None:
        self.data[key] = value

    def record(self, artifact: Artifact, inputs_digest: str) -> None:
        self.artifacts[artifact.key] = artifact.describe(inputs_digest)

    def record_file(self, role: str, path: Path) -> None:
        """List a non-model file of the bundle (vocabulary, specs, golden vectors) with its sha256."""
        relative = path.relative_to(self.root).as_posix()
        self.data.setdefault("files", {})[role] = {"path": relative, "bytes": path.stat().st_size, "sha256": sha256_file(path)}

    def forget(self, key: str) -> None:
        self.artifacts.pop(key, None)

    def entry(self, tower: str, stage: str) -> dict | None:
        return self.artifacts.get(f"{tower}.{stage}")

    def artifact(self, tower: str, stage: str) -> Artifact:
        entry = self.entry(tower, stage)
        if entry is None:
            raise ArtifactError(
                f"{self.path} lists no {tower} artifact for stage '{stage}'. Stages present: "
                f"{', '.join(sorted(self.stages())) or 'none'}. Run convert with that stage."
            )
        self.verify(entry)
        return Artifact.from_entry(entry, self.root)

    def stages(self) -> set[str]:
        return {entry["stage"] for entry in self.artifacts.values()}

    def verify(self, entry: dict) -> None:
        """Check that the files are the ones converted: present, same size, same sha256."""
        for file in entry["files"]:
            path = self.root / file["path"]
            if not path.is_file():
                raise ArtifactError(f"{path} is listed in {self.path} but missing; run convert again to rebuild it.")
            if path.stat().st_size != file["bytes"] or sha256_file(path) != file["sha256"]:
                raise ArtifactError(
                    f"{path} changed after conversion (its sha256 no longer matches {self.path}); "
                    "run convert again to rebuild it."
                )

    def is_current(self, tower: str, stage: str, inputs_digest: str) -> bool:
        entry = self.entry(tower, stage)
        if entry is None or entry.get("inputs_digest") != inputs_digest:
            return False
        try:
            self.verify(entry)
        except ArtifactError:
            return False
        return True

    def save(self) -> None:
        self.data["created_by"] = f"cnclip-converters {__version__}"
        atomic_write_text(self.path, json.dumps(self.data, indent=2, ensure_ascii=False) + "\n")
