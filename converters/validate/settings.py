"""What parity needs from a model's config, and nothing more: its targets and the size of the bit-accurate sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from converters.app.specs import stage_spec
from converters.validate.fidelity import FidelityTarget

class CmodelSample(BaseModel):
    """The bit-accurate layer of the bm1684x stages' parity: each bmodel on tpu-mlir's cmodel simulator, on a
    sample (minutes per ViT-B-16 sample); the lowered-graph layer runs the whole parity set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    images: int = Field(default=1, ge=1, le=64)  # the first photos of the parity set
    captions: int = Field(default=2, ge=1, le=64)  # the first captions
    # The bmodels (by batch size) it runs; None: every one. A batch-8 bmodel simulates 8 samples whatever
    # the sample: about an hour for ViT-B-16's visual tower on a 2-core x86.
    batch_sizes: tuple[Annotated[int, Field(gt=0, le=256)], ...] | None = None


@dataclass(frozen=True)
class ParitySettings:
    model: str  # the config's name, which a bundle's manifest must carry
    tolerances: BaseModel  # the config's `parity:` section (`converters.validate.fidelity.ParityTolerances`)
    cmodel: CmodelSample
    source: Path | None  # the config file, for messages

    def target(self, stage: str) -> FidelityTarget:
        return getattr(self.tolerances, stage_spec(stage).config_key)
