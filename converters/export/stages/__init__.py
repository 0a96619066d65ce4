"""The stages, one module each, each registered against its row of the stage table (`converters.app.specs.STAGES`).

Every stage has the same entry shape: `run(parent, options, context) -> Artifact`,
where the parent is the previous stage's verified `Artifact` or, for the stages
that export from PyTorch, a `ModelTower`; `options` is the stage's section of
the config (an instance of the stage's own options class); the context holds
what else it may read (the bundle's facts, calibration inputs) and the folder
it writes into. A module declares `STAGES`, one `Stage` per row it runs
(`ncnn_float` runs two: the same graph with fp32 or fp16 weights).

Adding a stage: a row in the table, a module here, a runtime adapter in
`converters.app.runtimes` if its runtime is new, and its tests. The config's
options and tolerances, the CLI's choices and the file names follow from the row.
torch, pnnx and onnxsim are imported where a stage runs, not at module level:
loading a config reads every stage's options class, and `parity` with a cached
reference must not load torch (onnx, onnxruntime and ncnn, core dependencies,
are imported at module level).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType, ModuleType

from pydantic import BaseModel, ConfigDict

from converters.app.artifact import Artifact
from converters.app.specs import STAGES, StageSpec
from converters.app.tool_env import ToolEnv
from converters.export.context import StageContext


class StageOptions(BaseModel):
    """A stage's section of the config: unknown keys are errors, values are fixed once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Stage:
    spec: StageSpec
    options: type[StageOptions]
    run: Callable[[object, StageOptions, StageContext], Artifact]
    # A quantized stage's layers and how to quantize all but some of them (`mixed_precision.Quantizer`), given its
    # parent, options and context: what `sensitivity` and `levers` measure. None: the stage offers none.
    quantizer: Callable[[Artifact, StageOptions, StageContext], object] | None = None
    # The vendor tool environment it builds in: its version and revision are part of what an artifact is made from,
    # so a new revision rebuilds what an older one made (the runtime that checks the files builds with the new one).
    tool_env: ToolEnv | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def parent(self) -> str | None:
        return self.spec.parent


@cache
def registered() -> Mapping[str, Stage]:
    """Every stage of the table with the module that runs it, in the table's order."""
    return _register(importlib.import_module(f"{__name__}.{module.name}") for module in pkgutil.iter_modules(__path__))


def _register(modules: Iterable[ModuleType]) -> Mapping[str, Stage]:
    found: dict[str, Stage] = {}
    for module in modules:
        for stage in getattr(module, "STAGES", ()):
            if stage.name in found:
                raise RuntimeError(f"Stage {stage.name} is registered twice (again in {module.__name__}): "
                                   "each row of the stage table is run by one module.")
            found[stage.name] = stage
    missing = [spec.name for spec in STAGES if spec.name not in found]
    unknown = [name for name in found if name not in {spec.name for spec in STAGES}]
    if missing or unknown:
        raise RuntimeError(
            f"The stage table (converters/app/specs.py) and the modules in converters/export/stages disagree: no "
            f"module runs {missing}, no row for {unknown}. Add the row, or the module's STAGES entry, or rename one."
        )
    return MappingProxyType({spec.name: found[spec.name] for spec in STAGES})


def quantized_stages() -> list[str]:
    """The stages that offer a quantizer, in table order."""
    return [name for name, stage in registered().items() if stage.quantizer]
