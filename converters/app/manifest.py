"""`manifest.json`: the contract an app build relies on, typed, and checked against its JSON Schema on load.

The manifest lists only artifacts whose files are complete: an entry is
written after its files have been moved into place, and the manifest itself
is replaced atomically. Every file it names lies inside the bundle folder
and is checked against its sha256 before use.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import get_args

import jsonschema

from converters import __version__
from converters.app.artifact import Artifact, ArtifactEntry, FileRecord
from converters.app.fsutil import atomic_write_text, sha256_file
from converters.app.preprocess import Transform
from converters.app.specs import STAGE_NAMES, TOWER_INPUT_ROLES, TOWERS, OutputRole, stage_spec
from converters.app.tokenizer import Tokenizer
from converters.errors import ArtifactError

SCHEMA_VERSION = 2
CONVERT_AGAIN = "run `python -m converters convert` (or `make convert`) for it again"


@cache
def schema() -> dict:
    return json.loads(resources.files("converters.app").joinpath("schemas/manifest.schema.json").read_text("utf-8"))


def _inconsistency(data: dict) -> str | None:
    """What the schema cannot say: facts that must agree with each other, numbers that must be finite."""
    for key, entry in data["artifacts"].items():
        spec = stage_spec(entry["stage"])
        if key != f"{entry['tower']}.{entry['stage']}" or (entry["runtime"], entry["precision"]) != (spec.runtime, spec.precision):
            return (f"at artifacts/{key}: tower {entry['tower']!r}, stage {entry['stage']!r}, runtime "
                    f"{entry['runtime']!r} and precision {entry['precision']!r} do not belong together")
        roles = {tensor["role"] for tensor in entry["inputs"]}
        outputs = [t["role"] for t in entry["outputs"]]
        if TOWER_INPUT_ROLES[entry["tower"]] not in roles or outputs not in ([role] for role in get_args(OutputRole)):
            return f"at artifacts/{key}: the inputs {sorted(roles)} and outputs are not those of a {entry['tower']} tower"
    numbers = [*data["preprocess"]["mean"], *data["preprocess"]["std"], data["embedding"]["logit_scale"]]
    if not all(math.isfinite(x) for x in numbers) or not all(x > 0 for x in data["preprocess"]["std"]):
        return "at preprocess or embedding: mean, std and logit_scale must be finite numbers, std above 0"
    return None


@dataclass(frozen=True)
class CheckpointRecord:
    source: str  # "random", or the absolute path of the checkpoint file
    description: str
    sha256: str


@dataclass(frozen=True)
class EmbeddingFacts:
    dim: int
    logit_scale: float
    normalized: bool = False
    note: str = (
        "Outputs are unnormalized, as cn_clip's encode_image/encode_text return them, except those whose role is "
        "normalized_embedding (rknn-int8's), L2-normalized already; L2-normalize before comparing (a no-op for "
        "those), and multiply cosine similarities by logit_scale for CLIP logits."
    )


@dataclass
class Manifest:
    path: Path
    model: str
    checkpoint: CheckpointRecord | None = None
    embedding: EmbeddingFacts | None = None
    preprocess: dict = field(default_factory=dict)  # the preprocessing spec (converters.app.preprocess.spec)
    tokenizer: dict = field(default_factory=dict)  # the tokenizer spec (converters.app.tokenizer.Tokenizer.spec)
    files: dict[str, FileRecord] = field(default_factory=dict)  # non-model files by role
    # The versions of the libraries that made and checked the files: an Android app picks its ncnn by them.
    tools: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, ArtifactEntry] = field(default_factory=dict)  # by "<tower>.<stage>"

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtifactError(f"No manifest at {path}: run `make convert` (or `python -m converters convert`) first.") from None
        except IsADirectoryError:
            raise ArtifactError(f"{path} is a folder, not the bundle's manifest file; move it away and {CONVERT_AGAIN}.") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path} is not valid JSON ({exc}); {CONVERT_AGAIN}.") from None
        if not isinstance(data, dict):
            raise ArtifactError(f"{path} is not a manifest (it holds a JSON {type(data).__name__}, not an object); {CONVERT_AGAIN}.")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{path} has schema version {version!r}, and this tool reads version {SCHEMA_VERSION} "
                f"(stage names and the manifest's layout changed); {CONVERT_AGAIN}."
            )
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema()).iter_errors(data))
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
            # A pattern error would print the regular expression; say what it stands for.
            what = error.message
            if error.validator == "pattern":
                kind = "a path inside the bundle" if where.endswith("/path") else "of the expected form"
                what = f"{error.instance!r} is not {kind}"
            raise ArtifactError(f"{path} is not a valid manifest: at {where}: {what}. {CONVERT_AGAIN.capitalize()}.")
        problem = _inconsistency(data)
        if problem:
            raise ArtifactError(f"{path} is not a valid manifest: {problem}. {CONVERT_AGAIN.capitalize()}.")
        return cls(
            path,
            data["model"],
            checkpoint=CheckpointRecord(**data["checkpoint"]),
            embedding=EmbeddingFacts(**data["embedding"]),
            preprocess=data["preprocess"],
            tokenizer=data["tokenizer"],
            files={role: FileRecord(**record) for role, record in data["files"].items()},
            artifacts={key: ArtifactEntry.from_json(entry, path.parent) for key, entry in data["artifacts"].items()},
            tools=data.get("tools", {}),
        )

    @classmethod
    def load_or_new(cls, path: Path, model: str, checkpoint_sha256: str) -> "Manifest":
        """The manifest at `path` if it describes the same model and weights, else an empty one."""
        if path.is_file():
            manifest = cls.load(path)
            if manifest.model == model and manifest.checkpoint.sha256 == checkpoint_sha256:
                return manifest
        return cls(path, model)

    @property
    def root(self) -> Path:
        return self.path.parent

    def require_model(self, model: str) -> None:
        if self.model != model:
            raise ArtifactError(
                f"The bundle at {self.root} was converted from model '{self.model}', not '{model}': "
                f"use MODEL={self.model} with it, or convert '{model}' into another folder."
            )

    def record(self, artifact: Artifact, inputs_digest: str) -> None:
        self.artifacts[artifact.key] = ArtifactEntry.of(artifact, self.root, inputs_digest)

    def record_file(self, role: str, path: Path) -> None:
        """List a non-model file of the bundle (vocabulary, specs, golden vectors) with its sha256."""
        self.files[role] = FileRecord.of(path, self.root)

    def forget(self, key: str) -> None:
        self.artifacts.pop(key, None)

    def entry(self, tower: str, stage: str) -> ArtifactEntry | None:
        return self.artifacts.get(f"{tower}.{stage}")

    def artifact(self, tower: str, stage: str) -> Artifact:
        """The artifact with its files verified: present, inside the bundle, same size and sha256."""
        entry = self.entry(tower, stage)
        if entry is None:
            raise ArtifactError(
                f"{self.path} lists no {tower} artifact for stage '{stage}'. Stages present: "
                f"{', '.join(self.stages()) or 'none'}. Run convert with that stage."
            )
        self.verify(entry.files)
        return entry.artifact

    def file(self, role: str) -> Path:
        """A non-model file by role (vocab, tokenizer_spec, …), verified."""
        record = self.files.get(role)
        if record is None:
            raise ArtifactError(f"{self.path} lists no '{role}' file; {CONVERT_AGAIN}.")
        self.verify([record])
        return self.root / record.path

    def text_tokenizer(self) -> Tokenizer:
        """The tokenizer the bundle's text tower was converted and checked with (its vocabulary verified)."""
        return Tokenizer.from_vocab(self.file("vocab"), self.tokenizer["context_length"])

    def image_transform(self) -> Transform:
        """The preprocessing the bundle's visual tower was converted and checked with."""
        return Transform.from_spec(self.preprocess)

    def stages(self) -> list[str]:
        """Stages with at least one tower listed, in pipeline order."""
        present = {entry.artifact.stage for entry in self.artifacts.values()}
        return [stage for stage in STAGE_NAMES if stage in present]

    def complete_stages(self) -> list[str]:
        """Stages with both towers listed: what an app can run."""
        return [stage for stage in self.stages() if all(self.entry(tower, stage) for tower in TOWERS)]

    def verify(self, records) -> None:
        for record in records:
            path = self.root / record.path
            if not path.resolve().is_relative_to(self.root.resolve()):
                raise ArtifactError(f"{self.path} names {record.path}, which lies outside the bundle; refusing to use it.")
            if not path.is_file():
                raise ArtifactError(f"{path} is listed in {self.path} but missing; {CONVERT_AGAIN} to rebuild it.")
            if path.stat().st_size != record.bytes or sha256_file(path) != record.sha256:
                raise ArtifactError(
                    f"{path} changed after conversion (its sha256 no longer matches {self.path}); "
                    f"{CONVERT_AGAIN} to rebuild it."
                )

    def is_current(self, tower: str, stage: str, inputs_digest: str) -> bool:
        entry = self.entry(tower, stage)
        if entry is None or entry.inputs_digest != inputs_digest:
            return False
        try:
            self.verify(entry.files)
        except ArtifactError:
            return False
        return True

    def to_json(self) -> dict:
        embedding = self.embedding
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "created_by": f"cnclip-converters {__version__}",
            "checkpoint": vars(self.checkpoint),
            "embedding": {"dim": embedding.dim, "normalized": embedding.normalized, "note": embedding.note,
                          "logit_scale": embedding.logit_scale},
            "preprocess": self.preprocess,
            "tokenizer": self.tokenizer,
            "artifacts": {key: entry.to_json() for key, entry in self.artifacts.items()},
            "files": {role: record.to_json() for role, record in self.files.items()},
            "tools": self.tools,
        }

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")
