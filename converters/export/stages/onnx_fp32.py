"""Stage `onnx-fp32`: one tower of the PyTorch model → an fp32 ONNX file.

The towers are exported separately, each with a dynamic batch axis (and a
dynamic sequence axis for text), through the TorchScript exporter: it keeps
`dynamic_axes` semantics for these models and writes >2 GB models at all.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from pydantic import Field

import onnx

from converters.app.artifact import Artifact
from converters.app.layout import BundleLayout
from converters.app.runtimes.onnx_runtime import RUNTIME_OPTIONS
from converters.export import onnx_io
from converters.app.specs import stage_spec
from converters.export.context import StageContext
from converters.export.stages import Stage, StageOptions

if TYPE_CHECKING:
    from converters.export.towers import ModelTower


class OnnxOptions(StageOptions):
    opset: int = Field(default=17, ge=13, le=21)


def run(parent: ModelTower, options: OnnxOptions, context: StageContext) -> Artifact:
    import torch

    spec = parent.spec("onnx")
    module = spec.module(parent.model)
    scratch = context.workdir / "export"
    scratch.mkdir()
    exported = scratch / "model.onnx"
    with warnings.catch_warnings():
        # The legacy exporter announces its own deprecation on every call.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        with torch.no_grad():
            torch.onnx.export(
                module,
                spec.example_inputs(parent.config.context_length),
                str(exported),
                dynamo=False,
                input_names=[t.name for t in spec.graph.inputs],
                output_names=[t.name for t in spec.graph.outputs],
                dynamic_axes=spec.graph.dynamic_axes(),
                opset_version=options.opset,
                do_constant_folding=True,
            )
    # Exporting toggles the training flag of the module tree; dropout must stay off.
    module.eval()
    # Large exports scatter one file per tensor; loading and re-saving gathers them into one.
    model = onnx.load(str(exported))
    (path,) = BundleLayout(context.workdir).model_files(spec.tower, "onnx-fp32")
    return Artifact(spec.tower, "onnx-fp32", tuple(onnx_io.save(model, path)), spec.graph, dict(RUNTIME_OPTIONS))


STAGES = (Stage(stage_spec("onnx-fp32"), OnnxOptions, run),)
