"""`levers`: what each int8 and int4 setting does to a bundle's towers, measured, so that defaults are chosen by numbers.

Every variant is the all-quantized tower (no layer kept in float: the levers
are compared before the float fallback repairs anything), built from the
bundle's own float parents with one setting changed from the config's:

- onnx-int8: per-tensor instead of per-channel weight scales; 8-bit instead of
  7-bit (`reduce_range`) weights; static QDQ with activation scales calibrated
  by min/max on the calibration set instead of dynamic per-call scales;
  activation smoothing (`converters.export.smoothing`, visual tower).
- ncnn-int8: the other threshold method (kl for aciq); the first layer (patch embedding
  or stem convolution) kept float; activation smoothing.
- onnx-int4: block sizes 32, 64 and 128 (the size/fidelity curve).

onnx-int8 quantizes MatMul, Gemm and Gather only, so its patch embedding
(a Conv) is float already and that lever does not apply to it.

Two numbers per variant: against the float parent on the held-out calibration
samples the float fallback grades on (what a default may be chosen by), and
against PyTorch on the parity set (the held-out check, reported, never used
to choose). Written to `levers.json` beside the manifest.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from converters.app.artifact import Artifact
from converters.app.fsutil import atomic_write_text, staging_dir
from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.app.runtimes import open_tower
from converters.app.runtimes.onnx_runtime import trim_padding
from converters.app.specs import TOWERS, stage_spec
from converters.errors import UserError
from converters.export.checkpoint import resolve
from converters.export.config import ModelConfig, Smoothing
from converters.export.context import StageContext
from converters.export.mixed_precision import PROBE_THREADS, FloatFallback, Probe, Quantizer
from converters.export.sensitivity import float_parent
from converters.export.stages import ncnn_int8, onnx_int4, onnx_int8
from converters.progress import Note, Progress
from converters.validate.fidelity import Embeddings, Fidelity, FidelityTarget, as_output_of, measure
from converters.validate.parity import batched, parity_set_for, reference_embeddings


@dataclass(frozen=True)
class Lever:
    stage: str
    name: str
    # The stage's quantizer for this variant, given the float parent, the stage's options and the stage context.
    quantizer: Callable[[Artifact, object, StageContext], Quantizer]
    smoothed: bool = False  # built from the smoothed parents
    towers: tuple[str, ...] = TOWERS


@dataclass(frozen=True)
class LeverRow:
    stage: str
    lever: str
    tower: str
    megabytes: float
    held_out: Fidelity  # against the float parent, held-out calibration samples
    parity: Fidelity  # against PyTorch, the parity set

    def to_json(self) -> dict:
        return {"stage": self.stage, "lever": self.lever, "tower": self.tower, "megabytes": self.megabytes,
                "held_out": self.held_out.compact(), "parity": self.parity.compact()}


def _with(module, **changes) -> Callable[[Artifact, object, StageContext], Quantizer]:
    return lambda parent, options, context: module.quantizer(parent, options.model_copy(update=changes), context)


def _first_layer_float(parent: Artifact, options, context: StageContext) -> Quantizer:
    offer = ncnn_int8.quantizer(parent, options, context)
    first = next(iter(offer.layers))
    return dataclasses.replace(offer, build=lambda kept, folder: offer.build(kept | {first}, folder))


LEVERS = (
    Lever("onnx-int8", "config", _with(onnx_int8)),
    Lever("onnx-int8", "per-tensor weights", _with(onnx_int8, per_channel=False)),
    Lever("onnx-int8", "8-bit weights (no reduce_range)", _with(onnx_int8, reduce_range=False)),
    Lever("onnx-int8", "static QDQ, min/max activations", lambda parent, options, context: static_quantizer(parent, options, context)),
    Lever("onnx-int8", "smoothing α 0.5", _with(onnx_int8), smoothed=True, towers=("visual",)),
    Lever("ncnn-int8", "config", _with(ncnn_int8)),
    Lever("ncnn-int8", "the other thresholds (kl ↔ aciq)", lambda parent, options, context: ncnn_int8.quantizer(
        parent, options.model_copy(update={"method": "kl" if options.method == "aciq" else "aciq"}), context)),
    Lever("ncnn-int8", "first layer float", _first_layer_float, towers=("visual",)),
    Lever("ncnn-int8", "smoothing α 0.5", _with(ncnn_int8), smoothed=True, towers=("visual",)),
    Lever("onnx-int4", "block 32", _with(onnx_int4, block_size=32)),
    Lever("onnx-int4", "block 64", _with(onnx_int4, block_size=64)),
    Lever("onnx-int4", "block 128", _with(onnx_int4, block_size=128)),
)


def static_quantizer(parent: Artifact, options, context: StageContext) -> Quantizer:
    """onnx-int8's settings with onnxruntime's static QDQ quantization: activation scales fixed from the
    calibration samples' min/max instead of measured at every call. It calibrates on the first
    `float_fallback.samples`, which the grading (after `HeldOut.skip`) never sees."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    nodes = onnx_int8.GraphNodes.of(parent, options)
    samples = context.calibration_inputs(parent.tower, options.float_fallback.samples)
    name = parent.spec.inputs[0].name

    class Samples(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(samples)

        def get_next(self):
            row = next(self.rows, None)
            # One sample per call, text without its padding columns: as the runtime feeds the tower.
            return None if row is None else {name: trim_padding(row[None]) if parent.tower == "text" else row[None]}

    def build(kept: frozenset[str], folder: Path) -> Artifact:
        return onnx_int8.quantized_artifact(parent, folder, lambda output: quantize_static(
            str(parent.model_file), str(output), Samples(), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(options.op_types), per_channel=options.per_channel,
            reduce_range=options.reduce_range, activation_type=QuantType.QUInt8,
            weight_type=onnx_int8.WEIGHT_TYPES[options.weight_type], calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=len(parent.files) > 1, nodes_to_exclude=nodes.excluded_with(kept),
        ))

    return Quantizer(nodes.quantizable, build, fitted=len(samples))


def measure_levers(config: ModelConfig, layout: BundleLayout, progress: Progress, stages: tuple[str, ...]) -> list[LeverRow]:
    with layout.exclusive():
        manifest = Manifest.load(layout.manifest)
        parity_set = parity_set_for(manifest)
        reference = reference_embeddings(manifest, parity_set, _no_reference(layout), progress)
        rows = []
        # Every variant is graded on the same samples, after all that any variant fits its scales to.
        onnx_int8_samples = config.stage_options("onnx-int8").float_fallback.samples
        held_out = HeldOut(max(config.stage_options("ncnn-int8").samples, onnx_int8_samples), onnx_int8_samples)
        with staging_dir(layout.staging) as workdir:
            workdir = Path(workdir)
            smoothed = None
            for lever in (lever for lever in LEVERS if lever.stage in stages):
                if lever.smoothed and smoothed is None:
                    smoothed = _smoothed_parents(config, manifest, stages, workdir / "smoothed", progress)
                for tower in lever.towers:
                    parent = float_parent(smoothed if lever.smoothed else manifest, tower, lever.stage)
                    progress(Note(f"levers: {tower}.{lever.stage}, {lever.name}"))
                    folder = workdir / f"{len(rows)}"
                    context = StageContext(manifest, folder)
                    offer = lever.quantizer(parent, config.stage_options(lever.stage), context)
                    inputs = parity_set.pixels if tower == "visual" else parity_set.token_ids
                    expected = reference.images if tower == "visual" else reference.texts
                    rows.append(_measure(lever, tower, offer, parent, held_out, inputs, expected,
                                         config.parity_settings().target(lever.stage), context))
        atomic_write_text(layout.levers_json, _to_json(manifest, rows, {stage: config.stage_options(stage) for stage in stages}))
    return rows


@dataclass(frozen=True)
class HeldOut:
    skip: int  # calibration samples any variant may fit its scales to
    count: int


def _measure(lever: Lever, tower: str, offer: Quantizer, parent: Artifact, held_out: HeldOut, parity_inputs: np.ndarray,
             expected: np.ndarray, parity_target: FidelityTarget, context: StageContext) -> LeverRow:
    folder = context.workdir
    probe = Probe(parent, dataclasses.replace(offer, fitted=held_out.skip), FloatFallback(samples=held_out.count),
                  context.writing_into(folder / "probe"))
    folder.mkdir(parents=True, exist_ok=True)
    candidate = offer.build(frozenset(), folder)
    graded = measure(as_output_of(candidate.spec, probe.reference), probe.embed(candidate), probe.target)
    parity = measure(as_output_of(candidate.spec, expected),
                     batched(open_tower(candidate, threads=PROBE_THREADS).embed, parity_inputs), parity_target)
    megabytes = round(sum(f.stat().st_size for f in candidate.files) / 1e6, 2)
    for file in candidate.files:
        file.unlink()
    return LeverRow(lever.stage, lever.name, tower, megabytes, graded, parity)


def _smoothed_parents(config: ModelConfig, manifest: Manifest, stages: tuple[str, ...], out: Path,
                      progress: Progress) -> Manifest:
    """The float parents the chosen stages quantize, exported again with smoothing on, from the bundle's weights."""
    from converters.export.pipeline import ConvertRequest, ancestry, convert

    smoothed = config.model_copy(update={"smoothing": Smoothing(enabled=True)})
    if resolve(smoothed, manifest.checkpoint.source, out / "cache").digest != manifest.checkpoint.sha256:
        raise UserError(
            f"The weights {manifest.checkpoint.description} of {manifest.root} are not the ones this converter makes "
            f"from {manifest.checkpoint.source!r} now (another version or config); convert the bundle again first."
        )
    parents = {stage_spec(stage).parent for stage in stages}
    needed = tuple(dict.fromkeys(name for parent in sorted(parents) for name in ancestry(parent)))
    progress(Note(f"levers: converting smoothed float parents ({', '.join(needed)})"))
    request = ConvertRequest(smoothed, out, manifest.checkpoint.source, out / "cache", needed, parity=False)
    return convert(request, lambda event: None).manifest


def _no_reference(layout: BundleLayout) -> Callable:
    def missing(parity_set) -> Embeddings:
        raise UserError(f"{layout.root} has no PyTorch reference for this parity set; run parity on it first.")
    return missing


def _to_json(manifest: Manifest, rows: list[LeverRow], options: dict[str, BaseModel]) -> str:
    data = {
        "model": manifest.model,
        "weights": manifest.checkpoint.description,
        "config": {stage: stage_options.model_dump(mode="json") for stage, stage_options in options.items()},
        "measure": "all-quantized towers (no float fallback), each lever one setting changed from `config`; "
        "held_out: against the float parent on the held-out calibration samples; parity: against PyTorch on the "
        "parity set",
        "rows": [row.to_json() for row in rows],
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render_table(rows: list[LeverRow]) -> str:
    lines = ["| stage | lever | tower | MB | held-out cos min / mean | parity cos min / mean |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.stage} | {row.lever} | {row.tower} | {row.megabytes:.1f} | "
                     f"{row.held_out.cosine_min:.5f} / {row.held_out.cosine_mean:.5f} | "
                     f"{row.parity.cosine_min:.5f} / {row.parity.cosine_mean:.5f} |")
    return "\n".join(lines)
