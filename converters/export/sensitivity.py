"""`sensitivity`: the full per-layer table of a quantized stage, whether or not its all-quantized tower met the target.

The quantized stages measure sensitivity only when they need it (all-quantized missed
the target); this measures it on demand for any bundle that has the stage's
parent, to see which layers a checkpoint's quantization hurts and by how much.
"""

from __future__ import annotations

import json
from pathlib import Path

from converters.app.artifact import Artifact
from converters.app.fsutil import atomic_write_text, staging_dir
from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.app.specs import TOWERS, stage_spec
from converters.errors import UserError
from converters.export.config import ModelConfig
from converters.export.context import StageContext
from converters.export.mixed_precision import LayerSensitivity, Probe, sensitivity
from converters.export.stages import quantized_stages, registered


def measure_sensitivity(
    config: ModelConfig, layout: BundleLayout, stage: str, samples: int | None = None
) -> dict[str, list[LayerSensitivity]]:
    """Per tower, every quantizable layer of `stage` quantized alone, most harmful first; written to sensitivity.json."""
    if stage not in quantized_stages():
        raise UserError(f"{stage} offers no layers to measure one by one; choose among {', '.join(quantized_stages())}.")
    quantizer = registered()[stage].quantizer
    options = config.stage_options(stage)
    target = options.float_fallback.model_copy(update={"samples": samples or options.float_fallback.samples})
    with layout.exclusive():
        manifest = Manifest.load(layout.manifest)
        tables = {}
        for tower in TOWERS:
            parent = float_parent(manifest, tower, stage)
            with staging_dir(layout.staging) as workdir:
                context = StageContext(manifest, Path(workdir))
                offer = quantizer(parent, options, context)
                tables[tower] = sensitivity(offer.layers, Probe(parent, offer, target, context), f"{tower}.{stage}")
        atomic_write_text(layout.sensitivity_json, _to_json(manifest, stage, target.samples, tables))
    return tables


def float_parent(manifest: Manifest, tower: str, stage: str) -> Artifact:
    """The artifact the quantized `stage` quantizes, or an error that says which stage to convert first."""
    parent = stage_spec(stage).parent
    if manifest.entry(tower, parent) is None:
        raise UserError(
            f"{manifest.root} has no {parent} artifact of the {tower} tower, which {stage} quantizes; "
            f"run convert with --stages {parent} first."
        )
    return manifest.artifact(tower, parent)


def _to_json(manifest: Manifest, stage: str, samples: int, tables: dict[str, list[LayerSensitivity]]) -> str:
    data = {
        "model": manifest.model,
        "weights": manifest.checkpoint.description,
        "stage": stage,
        "samples": samples,
        "measure": "per-sample cosine and norm ratio of the tower with this layer alone quantized, against the "
        "stage's float parent, on calibration samples (not the parity set); most harmful first",
        "towers": {tower: [row.to_json() for row in rows] for tower, rows in tables.items()},
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
