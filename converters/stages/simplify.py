"""Stage `simplify`: onnx-simplifier on one fp32 ONNX tower (constant folding, fusions)."""

from __future__ import annotations

from pathlib import Path

import onnxsim

from converters import onnx_io
from converters.artifact import Artifact
from converters.config import SimplifyOptions
from converters.errors import ConversionError
from converters.layout import BundleLayout

NAME = "simplify"
PARENT = "onnx"
TAG = "sim"


def run(parent: Artifact, options: SimplifyOptions, workdir: Path) -> Artifact:
    try:
        # certify=False: the Z3 proof is optional and slow; parity checks the result instead.
        model, ok = onnxsim.simplify(str(parent.model_file), skip_fuse_bn=options.skip_fuse_bn, certify=False)
    except Exception as exc:  # onnxsim raises bare RuntimeErrors from its C++ core
        raise ConversionError(f"onnx-simplifier failed on {parent.model_file}: {exc}") from None
    if not ok:
        raise ConversionError(f"onnx-simplifier could not validate its result for {parent.model_file}.")
    files = onnx_io.save(model, workdir / BundleLayout(workdir).onnx_model(parent.tower, TAG).name)
    return Artifact(parent.tower, NAME, "onnxruntime", "fp32", tuple(files), parent.spec)
