"""Stage `onnx-sim`: onnx-simplifier on one fp32 ONNX tower (constant folding, fusions)."""

from __future__ import annotations

from converters.app.artifact import Artifact
from converters.app.layout import BundleLayout
from converters.app.runtimes.onnx_runtime import RUNTIME_OPTIONS
from converters.errors import ConversionError
from converters.export import onnx_io
from converters.app.specs import stage_spec
from converters.export.context import StageContext
from converters.export.stages import Stage, StageOptions


class SimplifyOptions(StageOptions):
    # Shape-fixing input overrides would drop the dynamic batch axis, so the
    # simplifier only folds constants and fuses; it is checked for that by parity.
    skip_fuse_bn: bool = False


def run(parent: Artifact, options: SimplifyOptions, context: StageContext) -> Artifact:
    import onnxsim  # here, not at the top: it imports torch, and loading a config reads this module

    try:
        # certify=False: the Z3 proof is optional and slow; parity checks the result instead.
        model, ok = onnxsim.simplify(str(parent.model_file), skip_fuse_bn=options.skip_fuse_bn, certify=False)
    except Exception as exc:  # onnxsim raises bare RuntimeErrors from its C++ core
        raise ConversionError(f"onnx-simplifier failed on {parent.model_file}: {exc}") from None
    if not ok:
        raise ConversionError(f"onnx-simplifier could not validate its result for {parent.model_file}.")
    (path,) = BundleLayout(context.workdir).model_files(parent.tower, "onnx-sim")
    return Artifact(parent.tower, "onnx-sim", tuple(onnx_io.save(model, path)), parent.spec, dict(RUNTIME_OPTIONS))


STAGES = (Stage(stage_spec("onnx-sim"), SimplifyOptions, run),)
