"""Which artifact made an index's embeddings: embeddings from different artifacts are never mixed or compared."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converters.app.bundle import Bundle
from converters.errors import ArtifactError, UserError


class ArtifactMismatchError(UserError):
    """Embeddings from two different artifacts would be mixed or compared."""


@dataclass(frozen=True)
class ArtifactStamp:
    """Which artifact made an index's embeddings; embeddings from different ids never mix."""

    id: str
    model: str
    stage: str
    dim: int
    bundle: str

    @classmethod
    def of(cls, bundle: Bundle, stage: str) -> "ArtifactStamp":
        root = str(Path(bundle.manifest.root).resolve())
        return cls(bundle.artifact_id(stage), bundle.model, stage, bundle.embedding_dim, root)

    def describe(self) -> str:
        return f"{self.model} / {self.stage} (artifact {self.id[:12]}, bundle {self.bundle})"

    def require_same(self, other: "ArtifactStamp", index_file: Path) -> None:
        if other.id != self.id:
            raise ArtifactMismatchError(
                f"The index {index_file} was made with {self.describe()}, but this run uses {other.describe()}. "
                "Embeddings from different artifacts cannot be compared: use the same bundle and --stage, "
                "or index into another directory with --index."
            )

    def open_bundle(self, artifacts: Path | None, index_file: Path) -> Bundle:
        """The bundle at `artifacts` (default: where this stamp's bundle was), refused unless it is this artifact."""
        if artifacts is None and not Path(self.bundle).is_dir():
            raise ArtifactError(
                f"The index {index_file} was made with the bundle at {self.bundle}, which is no longer there; "
                f"pass --bundle with the directory of that {self.model} bundle."
            )
        bundle = Bundle.open(artifacts or self.bundle)
        self.require_same(ArtifactStamp.of(bundle, self.stage), index_file)
        return bundle


def weights_warning(bundle: Bundle) -> str | None:
    """A sentence for people when the bundle's weights were never trained (test bundles), else None.

    Such a bundle ranks photos at random: searching "猫" put a coffee cup first, with no hint why.
    """
    source = bundle.manifest.checkpoint.source if bundle.manifest.checkpoint else None
    kinds = {"random": "random weights", "stress": "stress weights (random, made to test quantization)"}
    if source not in kinds:
        return None
    return (f"the bundle {bundle.manifest.root} has {kinds[source]}, not a trained model: results are meaningless. "
            "Convert a real checkpoint (python -m converters convert MODEL) and index with it.")
