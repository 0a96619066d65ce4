"""The stages, one module each (`ncnn_float` makes two: the same graph with fp32 or fp16 weights).

Every stage has the same entry shape: `run(parent, options, workdir) -> Artifact`,
where the parent is the previous stage's verified `Artifact`, or, for the
stages that export from PyTorch, a `ModelTower`; `options` is the stage's
section of the config, and the files are written into `workdir`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from converters.app.artifact import Artifact


@dataclass(frozen=True)
class Stage:
    name: str  # what it makes, and the name an app asks the bundle for
    parent: str | None  # the stage whose artifact it consumes; None: the loaded PyTorch model
    run: Callable[[object, object, Path], Artifact]
