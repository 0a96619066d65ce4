"""Automatic mixed precision for the quantized stages (int8, int4): measure what each layer's quantization
costs the embedding, and return the most harmful layers to float until the tower meets its target.

Fidelity is the per-sample cosine between the quantized tower and its float
parent (the artifact the stage quantizes, itself checked against PyTorch) on
calibration inputs, never the parity set, which stays the held-out check.

- `sensitivity`: each quantizable layer quantized alone, everything else in
  float; the layers whose quantization alone lowers the cosine most come first.
- `choose_kept_layers`: quantize everything; when that misses the target, rank
  the layers by sensitivity (or by the stage's own one-pass ranking, where a
  layer quantized alone costs a whole build) and keep the shortest prefix of
  that ranking in float that meets it. The prefix is found by bisection (each
  probe is one quantization and one pass over the samples), which gives the
  answer of returning one layer at a time while more float never lowers the
  cosine; the chosen set is always measured, never assumed. When only all-float would meet
  the target, the best mix measured is kept and recorded as missing it: parity,
  with its own tolerance, then decides whether the artifact ships.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field
from tqdm import tqdm

from converters.app.artifact import Artifact
from converters.app.runtimes import open_tower
from converters.export.context import StageContext
from converters.validate.fidelity import DEFAULT_TARGETS, EmbeddingTarget, Fidelity, as_output_of, measure
from converters.validate.parity import batched

# Quantizes the parent with these layers kept out of the stage's precision (in float, or int8 for
# onnx-int4: Quantizer.kept_as), into the given folder.
Build = Callable[[frozenset[str], Path], Artifact]
# The layers most harmful first, and how that was measured, in one pass: for a stage where quantizing each layer
# alone costs a whole build (rknn-int8: a canonical build and a simulation per tensor, about 105 s each for the
# 213 of ViT-B-16's visual tower on 2 cores, six hours).
Rank = Callable[[], tuple[list[str], str]]
MEASURED_ALONE = "the tower's fidelity with each layer alone quantized"


@dataclass(frozen=True)
class Quantizer:
    """What a quantized stage offers for mixed precision."""

    layers: dict[str, str]  # the layers it can quantize, name → op or layer type, in model order
    build: Build
    fitted: int = 0  # calibration samples its scales were fitted to (first of the set), not used to grade it
    kept_as: str = "float"  # what the kept layers are stored as
    rank: Rank | None = None  # None: rank by `sensitivity`


class FloatFallback(EmbeddingTarget):
    """A quantized stage's fallback: the target its tower must meet against its float parent on calibration
    samples (never the parity set), and how many samples it is graded on."""

    enabled: bool = True
    cosine_min: float = Field(default=0.99, gt=0.0, le=1.0)
    cosine_mean: float = Field(default=0.995, gt=0.0, le=1.0)
    # Half parity's int8 limit: the calibration samples are not the parity set.
    norm_ratio_max: float = Field(default=DEFAULT_TARGETS["int8"].norm_ratio_max / 2, gt=0.0)
    # Calibration samples the fidelity is measured on: photos and crops of them, or captions.
    samples: int = Field(default=16, gt=0, le=1000)


# As the ncnn calibration: on this busy 2-core machine two OpenMP threads ran a ViT-B-16 caption
# in 4.1 s against 0.11 s with one.
PROBE_THREADS = 1


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str
    kind: str  # the op or layer type
    fidelity: Fidelity  # the tower's, with this layer alone quantized

    def to_json(self) -> dict:
        return {"layer": self.layer, "kind": self.kind, **self.fidelity.compact()}


@dataclass(frozen=True)
class KeptLayersChoice:
    target: FloatFallback
    all_quantized: Fidelity
    sensitivity: tuple[LayerSensitivity, ...]  # most harmful first; empty when the all-quantized tower met the target
    kept_layers: tuple[str, ...]
    chosen: Fidelity
    quantizable_layers: int
    ranked_by: str | None = None  # None: nothing was ranked (the all-quantized tower met the target)

    @property
    def target_met(self) -> bool:
        return self.chosen.passed

    def to_json(self) -> dict:
        target = {"cosine_min": self.target.cosine_min, "cosine_mean": self.target.cosine_mean,
                  "norm_ratio": self.target.norm_ratio_max}
        return {
            "target": target,
            "samples": self.target.samples,
            "all_quantized": self.all_quantized.compact(),
            "chosen": self.chosen.compact(),
            "target_met": self.target_met,
            "kept_layers": list(self.kept_layers),
            "quantizable_layers": self.quantizable_layers,
            "sensitivity": [row.to_json() for row in self.sensitivity],
        } | ({"ranked_by": self.ranked_by} if self.ranked_by else {})


class Probe:
    """The parent's embeddings of the calibration inputs, and a way to measure a quantized variant against them."""

    def __init__(self, parent: Artifact, quantizer: Quantizer, target: FloatFallback, context: StageContext):
        # After the samples that set the stage's scales (ncnn-int8's), so that the choice is not graded
        # on the data the scales were fitted to.
        fitted = quantizer.fitted
        self.inputs = context.calibration_inputs(parent.tower, fitted + target.samples)[fitted:]
        self.reference = self.embed(parent)
        self.build, self.target, self.workdir = quantizer.build, target, context.workdir
        self.trials = 0

    def embed(self, artifact: Artifact) -> np.ndarray:
        """The artifact's embeddings of the inputs, one sample per call as parity runs it: dynamic int8 scales
        activations over the whole call, so a batch of 16 would grade another computation than the one shipped."""
        return batched(open_tower(artifact, threads=PROBE_THREADS).embed, self.inputs)

    def fidelity(self, kept_layers: frozenset[str]) -> Fidelity:
        self.trials += 1
        folder = self.workdir / f"trial-{self.trials}"
        folder.mkdir(parents=True)
        candidate = self.build(kept_layers, folder)
        embeddings = self.embed(candidate)
        for file in candidate.files:
            file.unlink()  # a full-size tower per trial: do not keep them
        return measure(as_output_of(candidate.spec, self.reference), embeddings, self.target)


def sensitivity(layers: dict[str, str], probe: Probe, what: str = "") -> list[LayerSensitivity]:
    """Every layer (name → kind) quantized alone, most harmful first."""
    names = frozenset(layers)
    rows = [
        LayerSensitivity(name, kind, probe.fidelity(names - {name}))
        for name, kind in tqdm(layers.items(), desc=f"{what} sensitivity".strip(), unit="layer", leave=False)
    ]
    return sorted(rows, key=lambda row: row.fidelity.rank())


def choose_kept_layers(layers: dict[str, str], probe: Probe, what: str, rank: Rank | None = None) -> KeptLayersChoice:
    """The layers to keep out of the stage's precision so that the tower meets `target` (see the module's description)."""
    target = probe.target
    all_quantized = probe.fidelity(frozenset())
    if all_quantized.passed:
        return KeptLayersChoice(target, all_quantized, (), (), all_quantized, len(layers))
    if rank is None:
        ranked, ranked_by = tuple(sensitivity(layers, probe, what)), MEASURED_ALONE
        order = [row.layer for row in ranked]
    else:
        ranked, (proposed, ranked_by) = (), rank()
        # Every layer once: the ranking's in its order, any it left out after them in model order.
        order = list(dict.fromkeys([name for name in proposed if name in layers] + list(layers)))
    measured: dict[int, Fidelity] = {0: all_quantized}
    failing, passing = 0, len(order)  # prefix lengths: known to miss, assumed (then measured) to meet
    with tqdm(total=math.ceil(math.log2(max(len(order), 1))), desc=f"{what} kept layers".strip(), unit="trial",
              leave=False) as bar:
        while passing - failing > 1:
            middle = (failing + passing) // 2
            measured[middle] = probe.fidelity(frozenset(order[:middle]))
            if measured[middle].passed:
                passing = middle
            else:
                failing = middle
            bar.update()
    if passing == len(order):
        # Only all-float meets it, which is no quantized artifact at all: keep the best mix measured, say the
        # target was missed, and let parity judge it by its own (lower) tolerance.
        passing = max(measured, key=lambda k: measured[k].rank())
    return KeptLayersChoice(target, all_quantized, ranked, tuple(order[:passing]), measured[passing], len(layers), ranked_by)


def build_with_fallback(parent: Artifact, quantizer: Quantizer, fallback: FloatFallback, context: StageContext) -> Artifact:
    """The artifact a quantized stage makes: all layers quantized, or the mix `choose_kept_layers` picks."""
    choice = None
    if fallback.enabled:
        probe = Probe(parent, quantizer, fallback, context.writing_into(context.workdir / "trials"))
        choice = choose_kept_layers(quantizer.layers, probe, f"{parent.tower} tower", quantizer.rank)
    artifact = quantizer.build(frozenset(choice.kept_layers if choice else ()), context.workdir)
    return dataclasses.replace(artifact, mixed_precision=choice.to_json() | {"kept_as": quantizer.kept_as} if choice else None)
