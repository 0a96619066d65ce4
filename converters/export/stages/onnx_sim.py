"""Stage `onnx-sim`: onnx-simplifier on one fp32 ONNX tower (constant folding, fusions)."""

from __future__ import annotations

from pathlib import Path

import onnxsim

from converters.app.artifact import Artifact
from converters.app.layout import BundleLayout
from converters.errors import ConversionError
from converters.export import onnx_io
from converters.export.config import SimplifyOptions
from converters.export.stages import Stage


def run(parent: Artifact, options: SimplifyOptions, workdir: Path) -> Artifact:
    try:
        # certify=False: the Z3 proof is optional and slow; parity checks the result instead.
        model, ok = onnxsim.simplify(str(parent.model_file), skip_fuse_bn=options.skip_fuse_bn, certify=False)
    except Exception as exc:  # onnxsim raises bare RuntimeErrors from its C++ core
        raise ConversionError(f"onnx-simplifier failed on {parent.model_file}: {exc}") from None
    if not ok:
        raise ConversionError(f"onnx-simplifier could not validate its result for {parent.model_file}.")
    (path,) = BundleLayout(workdir).model_files(parent.tower, STAGE.name)
    return Artifact(parent.tower, STAGE.name, "fp32", tuple(onnx_io.save(model, path)), parent.spec)


STAGE = Stage("onnx-sim", "onnx-fp32", run)
