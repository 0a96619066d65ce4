"""Stage `onnx`: one tower of the PyTorch model → an fp32 ONNX file.

The towers are exported separately, each with a dynamic batch axis (and a
dynamic sequence axis for text), through the TorchScript exporter: it keeps
`dynamic_axes` semantics for these models and writes >2 GB models at all.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from converters import onnx_io
from converters.artifact import Artifact
from converters.config import OnnxOptions
from converters.layout import BundleLayout
from converters.stages.checkpoint import TorchTower

NAME = "onnx"
PARENT = "checkpoint"
TAG = "fp32"


def run(parent: TorchTower, options: OnnxOptions, workdir: Path) -> Artifact:
    spec = parent.spec
    scratch = workdir / "export"
    scratch.mkdir()
    exported = scratch / "model.onnx"
    with warnings.catch_warnings():
        # The legacy exporter announces its own deprecation on every call.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        with torch.no_grad():
            torch.onnx.export(
                parent.module,
                (parent.example,),
                str(exported),
                dynamo=False,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_axes=spec.dynamic_axes(),
                opset_version=options.opset,
                do_constant_folding=True,
            )
    # Exporting toggles the training flag of the module tree; dropout must stay off.
    parent.module.eval()
    # Large exports scatter one file per tensor; loading and re-saving gathers them into one.
    model = onnx.load(str(exported))
    files = onnx_io.save(model, workdir / BundleLayout(workdir).onnx_model(spec.tower, TAG).name)
    return Artifact(spec.tower, NAME, "onnxruntime", "fp32", tuple(files), spec)
