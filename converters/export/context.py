"""What a stage may read besides its parent artifact and its options, built in one place (the pipeline)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.app.manifest import Manifest
from converters.app.specs import Tower
from converters.data.calibration_set import calibration_pixels, calibration_token_ids


@dataclass(frozen=True)
class StageContext:
    manifest: Manifest  # the bundle being built: its preprocessing, tokenizer and context length
    workdir: Path  # where the stage writes its files (a staging folder; the pipeline publishes them)

    @property
    def context_length(self) -> int:
        return self.manifest.tokenizer["context_length"]

    def calibration_inputs(self, tower: Tower, count: int) -> np.ndarray:
        """The first `count` calibration inputs for a tower, made as the bundle's app makes them (pixels or token ids);
        never the parity set."""
        if tower == "visual":
            return calibration_pixels(count, self.manifest.image_transform())
        return calibration_token_ids(count, self.manifest.text_tokenizer())

    def writing_into(self, folder: Path) -> "StageContext":
        return dataclasses.replace(self, workdir=folder)
