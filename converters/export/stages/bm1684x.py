"""Stages `bm1684x-f16` and `bm1684x-int8`: one simplified ONNX tower → bmodels for the Sophgo BM1684X, via tpu-mlir.

The device runs fixed shapes, so the tower is compiled once per batch size
of the config, one `.bmodel` file each, as Sophgo's own CLIP example ships
them: an app loads only the batch sizes it uses (a query at batch 1 need not
carry the batch-8 net), and each file is compiled and checked on its own.
(tpu-mlir can also combine nets into one file; nothing here needs it.)
The text tower takes int32 ids padded with 0 to the context length.

Beside the bmodels the artifact keeps the lowered graph at batch 1
(`.tpu.mlir` and its weights): the graph the bmodels are compiled from, which
tpu-mlir's interpreter runs in seconds where the bit-accurate cmodel takes
minutes, so parity can check the whole parity set (see
`converters.app.runtimes.bm1684x`). model_deploy deletes that graph after
making a bmodel, so it is made by a second, lowering-only deploy.

INT8 calibrates on the calibration set (never the parity set) with
run_calibration. When the all-INT8 tower misses the float-fallback target
on later calibration samples, whole op types (LayerNorm, Softmax, Add, …)
go back to F16 through a quantize table, most harmful first, as
`converters.export.mixed_precision` chooses for the other int8 stages.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from functools import cache, partial
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from converters.app.artifact import Artifact
from converters.app.layout import BundleLayout
from converters.app.runtimes.bm1684x import ToolWorker
from converters.app.runtimes.bm1684x.env import TPU_MLIR, TPU_MLIR_VERSION
from converters.app.specs import TensorSpec, TowerSpec, stage_spec
from converters.export import tpu_mlir
from converters.export.context import StageContext
from converters.export.mixed_precision import FloatFallback, Quantizer, build_with_fallback
from converters.export.stages import Stage, StageOptions

# bmruntime's names for tensor dtypes → the manifest's.
DTYPES = {"f32": "float32", "f16": "float16", "i32": "int32", "si32": "int32", "i8": "int8", "u8": "uint8"}

BatchSizes = tuple[Annotated[int, Field(gt=0, le=256)], ...]


class Bm1684xOptions(StageOptions):
    """F16 weights and arithmetic; one bmodel per batch size, the text tower on ids padded to the context length."""

    # Sophgo's CLIP example ships images at 1, 8, 16, 32 and text at 4; a search app embeds a library in batches
    # and one query at a time.
    image_batch_sizes: BatchSizes = Field(default=(1, 8), min_length=1)
    text_batch_sizes: BatchSizes = Field(default=(1, 4), min_length=1)
    # Towers compiled with --high_precision (some ops kept in fp32). tpu-mlir 1.30.2's codegen stops on an
    # assertion for the plain F16 text tower (ViT-B-16: ArrayRef.h "Invalid index" in the attention fusion;
    # tiny-vit: a GDMA "src_H>0" check); with --high_precision both compile.
    high_precision_towers: tuple[Literal["visual", "text"], ...] = ("text",)


class Bm1684xInt8Options(Bm1684xOptions):
    """INT8 weights and activations calibrated by run_calibration; the float fallback keeps whole op types in F16
    through a quantize table. Its target sits above parity's INT8 tolerance (0.98 / 0.99) because calibration
    samples are not the parity set."""

    # Calibration samples the activation thresholds are fitted to (the first of the calibration set).
    calibration_samples: int = Field(default=16, gt=0, le=1000)
    method: Literal["kl", "mse", "max", "percentile9999"] = "kl"
    float_fallback: FloatFallback = FloatFallback(cosine_min=0.985, cosine_mean=0.993, samples=8)


def run(parent: Artifact, options: Bm1684xOptions, context: StageContext, *, stage: str) -> Artifact:
    workdir = context.workdir
    compiler = _Compiler(parent, options, context, stage)
    try:
        if not isinstance(options, Bm1684xInt8Options):
            return compiler.build(frozenset(), workdir)
        op_types = Counter(kind for _, kind in compiler.ops(1) if kind not in tpu_mlir.DATA_MOVEMENT_OPS)
        # The fallback grades lowered graphs alone (what the interpreter runs); the bmodels are made once, after.
        quantizer = Quantizer({kind: f"{count} ops" for kind, count in op_types.items()}, compiler.lowered_trial,
                              fitted=options.calibration_samples, kept_as="F16")
        chosen = build_with_fallback(parent, quantizer, options.float_fallback, context.writing_into(compiler.scratch / "fallback"))
        kept = frozenset(chosen.mixed_precision["kept_layers"]) if chosen.mixed_precision else frozenset()
        return dataclasses.replace(compiler.build(kept, workdir), mixed_precision=chosen.mixed_precision)
    finally:
        shutil.rmtree(compiler.scratch, ignore_errors=True)


class _Compiler:
    """Compiles one tower at every batch size, each from its own top-level graph (and, for INT8, its own
    calibration table: op names differ between batch sizes, tiny-rn's attention pool for one)."""

    def __init__(self, parent: Artifact, options: Bm1684xOptions, context: StageContext, stage: str):
        self.parent, self.options, self.stage, self.tower = parent, options, stage, parent.tower
        self.context = context
        self.int8 = isinstance(options, Bm1684xInt8Options)
        self.quantize = "INT8" if self.int8 else "F16"
        self.scratch = context.workdir / f"{self.tower}.{stage}.tpu-mlir"
        self.batch_sizes = options.image_batch_sizes if self.tower == "visual" else options.text_batch_sizes
        self.high_precision = self.tower in options.high_precision_towers
        self.builds = 0
        (onnx_input,) = parent.spec.inputs
        if self.tower == "text":
            self.sample_shape = [context.context_length]
        else:
            self.sample_shape = list(onnx_input.shape[1:])

    @cache
    def top_mlir(self, batch: int) -> Path:
        """The top-level graph at one batch size."""
        return tpu_mlir.transform(self.parent.model_file, self.tower, [batch, *self.sample_shape],
                                  self.scratch / f"b{batch}", self._what(batch))

    @cache
    def ops(self, batch: int) -> list[tuple[str, str]]:
        return tpu_mlir.top_ops(self.top_mlir(batch))

    @cache
    def calibration_table(self, batch: int) -> Path:
        """INT8 thresholds from the first calibration samples, fed in batches of `batch`."""
        options: Bm1684xInt8Options = self.options
        samples = self.context.calibration_inputs(self.tower, options.calibration_samples)
        return tpu_mlir.calibrate(self.top_mlir(batch), self.parent.spec.inputs[0].name, samples, batch, options.method,
                                  self._what(batch))

    def build(self, f16_types: frozenset[str], folder: Path) -> Artifact:
        """Every batch size's bmodel and the lowered graph, with the ops of `f16_types` kept in F16, into `folder`."""
        self.builds += 1
        layout = BundleLayout(folder)
        nets, bmodels = [], []
        for batch in self.batch_sizes:
            for stale in self.top_mlir(batch).parent.glob("compiler_profile_*.txt"):
                stale.unlink()
            bmodel = layout.bmodel(self.tower, self.stage, batch)
            shutil.move(self._deploy(batch, f16_types, lowered_only=False), bmodel)
            bmodels.append(bmodel)
            nets.append({"batch": batch, "file": bmodel.name,
                         "estimated_ms": tpu_mlir.estimated_ms(self.top_mlir(batch).parent)})
        lowered, weights = self._lowered(f16_types, layout)
        description = self._describe(bmodels[0], lowered.name, nets)
        return Artifact(self.tower, self.stage, (*bmodels, lowered, weights),
                        self._spec(description), bmodel=description)

    def lowered_trial(self, f16_types: frozenset[str], folder: Path) -> Artifact:
        """The lowered graph alone, as the interpreter runs it: what the float fallback grades."""
        self.builds += 1
        lowered, weights = self._lowered(f16_types, BundleLayout(folder))
        (onnx_input,) = self.parent.spec.inputs
        dtype = "int32" if self.tower == "text" else onnx_input.dtype
        spec = TowerSpec(self.tower, (TensorSpec(onnx_input.name, dtype, ("batch", *self.sample_shape), onnx_input.role),),
                         self.parent.spec.outputs)
        return Artifact(self.tower, self.stage, (lowered, weights), spec,
                        bmodel={"lowered_graph": lowered.name, "nets": []})

    def _lowered(self, f16_types: frozenset[str], layout: BundleLayout) -> tuple[Path, Path]:
        """The lowered graph at batch 1 and its weights, under their bundle names in `layout`."""
        lowered_path, weights_path = layout.lowered_graph(self.tower, self.stage)
        lowered = self._deploy(1, f16_types, lowered_only=True)
        shutil.move(tpu_mlir.weight_file_of(lowered), weights_path)
        shutil.move(lowered, lowered_path)
        tpu_mlir.rename_weight_file(lowered_path, weights_path.name)
        return lowered_path, weights_path

    def _deploy(self, batch: int, f16_types: frozenset[str], lowered_only: bool) -> Path:
        top = self.top_mlir(batch)
        table = None
        if f16_types:
            table = top.parent / f"quantize_table_{self.builds}"
            table.write_text("".join(f"{name} F16\n" for name, kind in self.ops(batch) if kind in f16_types),
                             encoding="utf-8")
        return tpu_mlir.deploy(
            top, self.quantize, f"{self.tower}_{self.builds}.bmodel", self._what(batch),
            high_precision=self.high_precision, calibration_table=self.calibration_table(batch) if self.int8 else None,
            quantize_table=table, lowered_only=lowered_only,
        )

    def _what(self, batch: int) -> str:
        return f"{self.tower} {self.stage} batch {batch}"

    def _describe(self, first: Path, lowered: str, nets: list[dict]) -> dict:
        with ToolWorker(threads=1) as worker:
            tensors, _ = worker.ask({"load": str(first), "simulator": "cmodel"})
        (tensor_in,), (tensor_out, *_) = tensors["inputs"], tensors["outputs"]
        return {
            "chip": tpu_mlir.CHIP,
            "compiler": f"tpu-mlir {TPU_MLIR_VERSION}",
            "quantization": self.quantize,
            "high_precision": self.high_precision,
            "lowered_graph": lowered,
            "input": {"name": tensor_in["name"], "dtype": DTYPES[tensor_in["dtype"]], "sample_shape": self.sample_shape},
            "output": {"name": tensor_out["name"], "dtype": DTYPES[tensor_out["dtype"]],
                       "sample_shape": tensor_out["shape"][1:]},
            "nets": nets,
        }

    def _spec(self, description: dict) -> TowerSpec:
        role = self.parent.spec.inputs[0].role
        tensor_in, tensor_out = description["input"], description["output"]
        return TowerSpec(
            self.tower,
            (TensorSpec(tensor_in["name"], tensor_in["dtype"], ("batch", *self.sample_shape), role),),
            (TensorSpec(tensor_out["name"], tensor_out["dtype"], ("batch", *tensor_out["sample_shape"]), "embedding"),),
        )


STAGES = (Stage(stage_spec("bm1684x-f16"), Bm1684xOptions, partial(run, stage="bm1684x-f16"), tool_env=TPU_MLIR),
          Stage(stage_spec("bm1684x-int8"), Bm1684xInt8Options, partial(run, stage="bm1684x-int8"), tool_env=TPU_MLIR))
