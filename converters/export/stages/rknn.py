"""Stages `rknn-fp16` and `rknn-int8`: one simplified ONNX tower → a `.rknn` per platform for Rockchip's NPUs
(RK3588, RK3576, RK3568, RK3566), via rknn-toolkit2 in its own environment.

Shapes are fixed, as the NPU runs them: images at batch 1, token ids (int64) padded with 0 to the context
length (the tower masks the padding itself). The mean and std are not folded into the model: the app feeds the
same normalized NCHW float32 pixels as to every other stage (librknnrt converts them; its native layout for
4-D inputs is NHWC). rknn-int8's output is L2-normalized on the NPU (the toolkit's worker, `normalized_onnx`):
an int8 output clips an unnormalized embedding wherever the calibration samples' range ends.

Before anything ships, each platform's graph is compiled once with the compiler's layer table on, and a graph
with ops on the CPU is refused (`allow_cpu_ops`): rknn-toolkit2 builds such a graph without a word, and on
the board it crawls or hangs. The text tower's head (the `ids != 0` mask and the word-embedding Gather) always
runs on the CPU and is allowed by default; RK3566/RK3568 also put every attention softmax on the CPU, which is
refused unless allowed.

Every file is built canonically (`converters.app.runtimes.rknn.build`), so parity can rebuild it byte for byte
and simulate it. INT8 calibrates on the calibration set (never the parity set), shipped beside the model so the
rebuild can use it; when the all-int8 tower misses the float-fallback target on later calibration samples,
`mixed_precision` keeps the most harmful tensors in float16 by hybrid quantization, ranked in one pass by the
toolkit's accuracy_analysis (quantizing each tensor alone would cost a build and a simulation per tensor).
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from converters.app.artifact import Artifact
from converters.app.fsutil import sha256_file
from converters.app.layout import BundleLayout
from converters.app.runtimes.rknn.build import CALIBRATION_LIST, REPRODUCIBLE, RknnWorker, adopt, canonical_build, stage_inputs
from converters.app.runtimes.rknn.env import RKNN_ENV, RKNN_TOOLKIT_VERSION
from converters.app.specs import TensorSpec, TowerSpec, stage_spec
from converters.errors import ConversionError
from converters.export.context import StageContext
from converters.export.mixed_precision import FloatFallback, Quantizer, build_with_fallback
from converters.export.rknn_env import create_rknn_env
from converters.export.stages import Stage, StageOptions

Platform = Literal["rk3588", "rk3576", "rk3568", "rk3566"]
# Placement the board gives every text tower (spike §3): the id mask (Reshape, Equal, Not, and a Cast for int32
# ids) and the word-embedding Gather run on the CPU whatever the platform.
TEXT_HEAD_CPU_OPS = ("Reshape", "Equal", "Not", "Gather", "Cast")
NOT_OPS = ("InputOperator", "OutputOperator")


class RknnOptions(StageOptions):
    """float16 weights and arithmetic; one .rknn per platform."""

    platforms: tuple[Platform, ...] = Field(default=("rk3588",), min_length=1)
    # Op types (the compiler's names, e.g. exSoftmax13) a tower may run on the board's CPU.
    allow_cpu_ops: dict[Literal["visual", "text"], tuple[str, ...]] = {"visual": (), "text": TEXT_HEAD_CPU_OPS}


class RknnInt8Options(RknnOptions):
    """Asymmetric int8 weights and activations calibrated by the toolkit; the float fallback keeps tensors in
    float16 by hybrid quantization."""

    calibration_samples: int = Field(default=16, gt=0, le=1000)
    algorithm: Literal["normal", "mmse", "kl_divergence"] = "normal"
    method: Literal["channel", "layer"] = "channel"
    float_fallback: FloatFallback = FloatFallback()


def run(parent: Artifact, options: RknnOptions, context: StageContext, *, stage: str) -> Artifact:
    create_rknn_env()
    builder = _Builder(parent, options, context, stage)
    try:
        layers = builder.check()
        if not builder.int8:
            return builder.build(frozenset(), context.workdir, options.platforms)
        quantizer = Quantizer({name: "tensor" for name in layers}, builder.trial, fitted=options.calibration_samples,
                              kept_as="float16", rank=partial(builder.rank, layers))
        chosen = build_with_fallback(parent, quantizer, options.float_fallback,
                                     context.writing_into(builder.scratch / "fallback"))
        kept = frozenset(chosen.mixed_precision["kept_layers"]) if chosen.mixed_precision else frozenset()
        artifact = builder.build(kept, context.workdir, options.platforms)
        if chosen.mixed_precision and not chosen.mixed_precision["target_met"]:
            artifact = builder.keep_error_analysis(artifact)
        return dataclasses.replace(artifact, mixed_precision=chosen.mixed_precision)
    finally:
        shutil.rmtree(builder.scratch, ignore_errors=True)


class _Builder:
    def __init__(self, parent: Artifact, options: RknnOptions, context: StageContext, stage: str):
        self.parent, self.options, self.context, self.stage, self.tower = parent, options, context, stage, parent.tower
        self.int8 = isinstance(options, RknnInt8Options)
        self.scratch = context.workdir / f"{self.tower}.{stage}.rknn-toolkit2"
        self.scratch.mkdir(parents=True, exist_ok=True)
        (onnx_input,) = parent.spec.inputs
        sample = [context.context_length] if self.tower == "text" else list(onnx_input.shape[1:])
        self.input = TensorSpec(onnx_input.name, onnx_input.dtype, (1, *sample), onnx_input.role)
        self.calibration = context.calibration_inputs(self.tower, options.calibration_samples) if self.int8 else None
        self.spec = {"onnx": parent.model_file.name, "input": onnx_input.name, "shape": [1, *sample],
                     "quantize": self.int8, "algorithm": getattr(options, "algorithm", None),
                     "method": getattr(options, "method", None), "kept": [],
                     "normalize": stage_spec(stage).normalized}
        self.native: dict[str, str] = {}  # tensor → the dtype the board's runtime takes natively
        self.cpu_ops: list[str] = []

    def check(self) -> list[str]:
        """Compile every platform once with the layer table on; refuse ops on the CPU that are not allowed. For
        int8, also the tensors hybrid quantization can keep in float16."""
        folder = self.scratch / "check"
        folder.mkdir()
        stage_inputs(folder, list(self.parent.files), self.calibration)
        allowed = set(self.options.allow_cpu_ops.get(self.tower, ()))
        with RknnWorker(folder, canonical=False) as worker:
            for platform in self.options.platforms:
                spec = {**self.spec, "platform": platform, "verbose": True,
                        **({"dataset": CALIBRATION_LIST} if self.int8 else {})}
                answer = worker.build(spec)
                # The compiler says which dtypes the board's runtime takes natively only when verbose.
                self.native = self.native or answer["native_dtypes"]
                rows = [row for row in answer["layers"] if row["target"] != "NPU" and row["op"] not in NOT_OPS]
                refused = [row for row in rows if row["op"] not in allowed]
                if refused:
                    raise ConversionError(_refusal(self.tower, self.stage, platform, refused, allowed))
                self.cpu_ops += [f"{platform} {row['op']}: {row['name']}" for row in rows]
            return worker.layers({**spec, "verbose": False}) if self.int8 else []

    def rank(self, layers: list[str]) -> tuple[list[str], str]:
        """The tensors of the all-int8 model by accuracy_analysis's single-layer cosine (each layer fed the float
        model's inputs, so errors do not pile up), lowest first, on the first calibration sample: one build and
        one simulation of the first platform's model."""
        folder = self.scratch / "rank"
        folder.mkdir()
        stage_inputs(folder, list(self.parent.files), self.calibration)
        spec = {**self.spec, "platform": self.options.platforms[0], "dataset": CALIBRATION_LIST}
        with RknnWorker(folder, canonical=False) as worker:
            worker.build(spec)
            cosines = single_layer_cosines(worker.analyse(self.calibration[0][None], folder / "analysis").read_text())
        shutil.rmtree(folder)  # the analysis dumps every tensor twice: gigabytes at full size
        # A tensor the table does not name (the compiler fuses some away) ranks as harmless, after the others.
        order = sorted(layers, key=lambda name: cosines.get(name, 1.0))  # stable: model order among equals
        analysed = sum(name in cosines for name in layers)
        return order, (f"rknn-toolkit2 accuracy_analysis on {self.options.platforms[0]}: each tensor's single-layer "
                       f"cosine, float vs simulated int8, on the first calibration sample ({analysed} of "
                       f"{len(layers)} tensors in its table)")

    def trial(self, kept: frozenset[str], folder: Path) -> Artifact:
        """The first platform's model alone: what the float fallback grades."""
        return self.build(kept, folder, self.options.platforms[:1])

    def build(self, kept: frozenset[str], folder: Path, platforms: tuple[str, ...]) -> Artifact:
        layout, spec = BundleLayout(folder), {**self.spec, "kept": sorted(kept)}
        files, entries, answer = [], [], None
        for platform in platforms:
            file = layout.rknn(self.tower, self.stage, platform)
            _, answer_of = canonical_build({**spec, "platform": platform}, list(self.parent.files), self.calibration, file)
            answer = answer or answer_of
            files.append(file)
            entries.append({"platform": platform, "file": file.name, "sha256": answer_of["sha256"],
                            "reproducible": platform in REPRODUCIBLE})
        calibration = None
        if self.calibration is not None:
            calibration = layout.rknn_calibration(self.tower, self.stage)
            np.save(calibration, self.calibration)
            files.append(calibration)
        description = self._describe(answer, entries, spec, calibration)
        tensors = (TensorSpec(self.input.name, self.input.dtype, self.input.shape, self.input.role),)
        output = description["output"]
        outputs = (TensorSpec(output["name"], "float32", tuple(output["shape"]), stage_spec(self.stage).output),)
        return Artifact(self.tower, self.stage, tuple(files),
                        TowerSpec(self.tower, tensors, outputs), rknn=description)

    def _describe(self, answer: dict, entries: list[dict], spec: dict, calibration: Path | None) -> dict:
        tensors, native = answer["description"]["tensors"], self.native

        def tensor(name: str) -> dict:
            found = tensors[name]
            return {"name": name, "dtype": found["dtype"], "shape": found["shape"], "layout": found["layout"],
                    "native_dtype": native.get(name, found["dtype"])}

        (output,) = [name for name, found in tensors.items() if found.get("is_output")]
        return {
            "toolkit": f"rknn-toolkit2 {RKNN_TOOLKIT_VERSION}", "quantization": "int8" if self.int8 else "float16",
            "algorithm": spec["algorithm"], "method": spec["method"], "files": entries,
            "input": tensor(self.input.name), "output": tensor(output), "mean_std_folded": False,
            "native_input_layout": "nhwc" if len(self.input.shape) == 4 else "as built", "cpu_ops": self.cpu_ops,
            "build": {"onnx_files": [file.name for file in self.parent.files],
                      "onnx_sha256": [sha256_file(file) for file in self.parent.files],
                      "calibration": calibration.name if calibration else None, "spec": spec},
            "error_analysis": None,
        }

    def keep_error_analysis(self, artifact: Artifact) -> Artifact:
        """accuracy_analysis's per-layer table (float vs simulated) on the first calibration sample, into the
        bundle beside the model that missed its target (only the table: the per-layer dumps are gigabytes)."""
        worker = adopt(artifact.rknn["files"][0]["sha256"])
        if worker is None:
            return artifact
        with worker:
            table = worker.analyse(self.calibration[0][None], self.scratch / "analysis")
        kept = BundleLayout(artifact.model_file.parent).rknn_error_analysis(self.tower, self.stage)
        shutil.copyfile(table, kept)
        description = artifact.rknn | {"error_analysis": kept.name}
        return dataclasses.replace(artifact, files=(*artifact.files, kept), rknn=description)


# A row of accuracy_analysis's table: `[Op] tensor  entire-cos | entire-euc  single-cos | single-euc` (the toolkit
# colours the worst values with ANSI escapes).
ANALYSIS_ROW = re.compile(r"^\[[^\]]+\] (\S+)\s+\S+ \| \S+\s+(\S+) \| ")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def single_layer_cosines(table: str) -> dict[str, float]:
    """Tensor → its single-layer cosine, from accuracy_analysis's error_analysis.txt."""
    rows = (ANALYSIS_ROW.match(ANSI.sub("", line)) for line in table.splitlines())
    return {row.group(1): _cosine(row.group(2)) for row in rows if row}


def _cosine(text: str) -> float:
    """A cosine as the table prints it; anything else (nan, inf, a dash) as -1, the most harmful there is."""
    try:
        value = float(text)
    except ValueError:
        return -1.0
    return value if math.isfinite(value) else -1.0


def _refusal(tower: str, stage: str, platform: str, rows: list[dict], allowed: set[str]) -> str:
    ops = ", ".join(f"{row['op']} ({row['name']})" for row in rows[:12]) + (" …" if len(rows) > 12 else "")
    kinds = sorted({row["op"] for row in rows})
    return (f"rknn-toolkit2 would run {len(rows)} op(s) of the {tower} tower on the {platform}'s CPU instead of its "
            f"NPU: {ops}. A model like that builds without a word but crawls or hangs on the board, so {stage} is "
            f"not built. If these are acceptable, add {kinds} to `stages: {{{stage.replace('-', '_')}: "
            f"{{allow_cpu_ops: {{{tower}: [...]}}}}}}` in the model's config (allowed now: {sorted(allowed) or 'none'}).")


STAGES = (Stage(stage_spec("rknn-fp16"), RknnOptions, partial(run, stage="rknn-fp16"), tool_env=RKNN_ENV),
          Stage(stage_spec("rknn-int8"), RknnInt8Options, partial(run, stage="rknn-int8"), tool_env=RKNN_ENV))
