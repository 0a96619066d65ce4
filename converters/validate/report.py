"""The parity report as data (`parity.json`) and as Markdown (`parity.md`).

Each row carries the verdicts `converters.validate.fidelity` gave it; this module gathers and renders them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from converters.app.fsutil import atomic_write_text
from converters.app.specs import TOWERS
from converters.validate.fidelity import RESIZED_RGB_TOLERANCE, Fidelity


@dataclass
class StageParity:
    stage: str
    runtime: str
    visual: Fidelity | None  # None: the bundle lists no such artifact (a conversion stopped half-way)
    text: Fidelity | None
    top1_agreement: float | None  # None unless both towers produced embeddings
    tolerance: dict
    failures: list[str]  # each tower's, a missing tower, and top-1 agreement

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ClientParity:
    """One ncnn stage run by the C++ reference client (tokenizer, decoder, resize and ncnn of its own),
    on every caption and the golden photos, against PyTorch. Each tower's failures include its inputs':
    token ids that differ from cn_clip's, a resize beyond Pillow's by more than the tolerance."""

    stage: str
    platform: str  # the CPU it ran on, "emulated" when under qemu
    visual: Fidelity
    text: Fidelity
    token_ids_identical: int  # captions whose ids equal cn_clip's
    # Per golden photo: the largest difference between the client's resized image and Pillow's, per channel value.
    resized_rgb_max_differences: list[int]
    # Every output value a float16 number: ncnn ran its fp16 kernels (ARM with fp16 Options; never on x86).
    outputs_in_fp16: bool
    seconds: float
    tolerance: dict

    @property
    def failures(self) -> list[str]:
        return [f"{tower}: {failure}" for tower in TOWERS for failure in getattr(self, tower).failures]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class CmodelParity:
    """One bmodel of a bm1684x artifact run by bmruntime on tpu-mlir's bit-accurate cmodel simulator, on a sample
    of the parity set (the stage's own row runs the whole set through the lowered-graph interpreter)."""

    stage: str
    tower: str
    batch: int  # the bmodel's batch size; a sample smaller than it is padded with its last input
    measured: Fidelity
    seconds: float
    tolerance: dict

    @property
    def failures(self) -> list[str]:
        return [f"{self.tower}, batch {self.batch}: {failure}" for failure in self.measured.failures]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ParityReport:
    model: str
    weights: str
    parity_set: dict
    stages: list[StageParity]
    cpu: str  # converters.cpu.cpu_description() of the machine that ran the runtimes
    # Per int8 artifact ("visual.ncnn-int8"): the manifest's mixed_precision, how its float layers were chosen.
    mixed_precision: dict[str, dict] = field(default_factory=dict)
    # The C++ client's rows (`parity --client ARCH`), after the Python runtimes' own.
    clients: list[ClientParity] = field(default_factory=list)
    # bm1684x artifacts: each bmodel on the bit-accurate simulator, on a sample.
    cmodel: list[CmodelParity] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in [*self.stages, *self.clients, *self.cmodel])

    def to_json(self) -> str:
        data = asdict(self) | {"passed": self.passed}
        rows = [*zip(self.stages, data["stages"]), *zip(self.clients, data["clients"]), *zip(self.cmodel, data["cmodel"])]
        for row, raw in rows:
            raw["passed"], raw["failures"] = row.passed, row.failures
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render_markdown(report: ParityReport) -> str:
    verdict = "PASS" if report.passed else "FAIL"
    lines = [
        f"# Parity: {report.model} — {verdict}",
        "",
        f"Weights: {report.weights}. Parity set: {report.parity_set['images']} images, "
        f"{report.parity_set['captions']} captions. Reference: PyTorch fp32. Cosine is per sample; "
        f"norm ratio is max |norm / PyTorch's norm - 1|. Runtimes ran on {report.cpu}, one thread.",
        "",
        "| stage | runtime | tower | cos min | cos mean | max abs diff | norm ratio | top-1 agree | tolerance | result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for stage in report.stages:
        tolerance = ", ".join(f"{k} {v}" for k, v in stage.tolerance.items())
        top1 = "—" if stage.top1_agreement is None else f"{stage.top1_agreement:.3f}"
        for tower in TOWERS:
            m: Fidelity | None = getattr(stage, tower)
            numbers = (
                "missing | — | — | —" if m is None
                else f"{m.cosine_min:.6f} | {m.cosine_mean:.6f} | {m.max_abs_diff:.2e} | {m.norm_ratio_max:.2e}"
            )
            result = "pass" if m is not None and m.passed else "FAIL"
            lines.append(f"| {stage.stage} | {stage.runtime} | {tower} | {numbers} | {top1} | {tolerance} | {result} |")
    if report.cmodel:
        lines += _cmodel(report.cmodel)
    if report.clients:
        lines += _clients(report.clients)
    failures = [f"- {stage.stage}: {failure}" for stage in report.stages for failure in stage.failures]
    failures += [f"- {row.stage} (bit-accurate cmodel): {failure}" for row in report.cmodel for failure in row.failures]
    failures += [f"- {row.stage} (C++ client, {row.platform}): {failure}" for row in report.clients for failure in row.failures]
    if failures:
        lines += ["", "## Failures", "", *failures]
    if report.mixed_precision:
        lines += _mixed_precision(report.mixed_precision)
    return "\n".join(lines) + "\n"


def table_section(title: str, text: str, columns: list[str]) -> list[str]:
    """A section's heading, its explanation and the head of its table."""
    return ["", f"## {title}", "", text, "", *table_head(columns)]


def table_head(columns: list[str]) -> list[str]:
    return [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]


def _cmodel(rows: list[CmodelParity]) -> list[str]:
    lines = table_section(
        "BM1684X: bit-accurate simulator",
        "The bm1684x rows above run the lowered graph in tpu-mlir's interpreter (the compiler's numeric model of the "
        "chip, not bit-accurate) on the whole parity set. Here each .bmodel itself runs on bmruntime over tpu-mlir's "
        "cmodel, the bit-accurate simulator of the chip, on a sample (the first photos and captions of the parity set; "
        "a batch larger than the sample is filled with its last input), under the stage's tolerance.",
        ["stage", "tower", "bmodel batch", "samples", "cos min", "cos mean", "norm ratio", "seconds", "result"],
    )
    for row in rows:
        m = row.measured
        lines.append(f"| {row.stage} | {row.tower} | {row.batch} | {m.samples} | {m.cosine_min:.6f} | {m.cosine_mean:.6f} | "
                     f"{m.norm_ratio_max:.2e} | {row.seconds:g} | {'pass' if row.passed else 'FAIL'} |")
    return lines


def _clients(rows: list[ClientParity]) -> list[str]:
    lines = table_section(
        "C++ reference client",
        "`clients/cpp` (its own tokenizer, JPEG decoder, Pillow-exact resize and ncnn build) on every caption and the "
        "golden photos, against PyTorch, under each stage's tolerance; its token ids must equal cn_clip's and its "
        f"resized images Pillow's within ±{RESIZED_RGB_TOLERANCE}. \"fp16 outputs\": every output value is a float16 "
        "number, the sign that ncnn ran its fp16 kernels (ARM with the fp16 Options; x86 never does).",
        ["stage", "platform", "tower", "samples", "cos min", "cos mean", "norm ratio", "identical inputs",
         "fp16 outputs", "seconds", "result"],
    )
    for row in rows:
        for tower in TOWERS:
            m: Fidelity = getattr(row, tower)
            if tower == "text":
                inputs = f"token ids {row.token_ids_identical}/{m.samples} identical"
            else:
                identical = sum(d == 0 for d in row.resized_rgb_max_differences)
                inputs = (f"resized RGB {identical}/{m.samples} identical, "
                          f"max diff {max(row.resized_rgb_max_differences, default=0)}")
            result = "pass" if m.passed else "FAIL"
            lines.append(
                f"| {row.stage} | {row.platform} | {tower} | {m.samples} | {m.cosine_min:.6f} | {m.cosine_mean:.6f} | "
                f"{m.norm_ratio_max:.2e} | {inputs} | {'yes' if row.outputs_in_fp16 else 'no'} | "
                f"{row.seconds:g} | {result} |"
            )
    return lines


def _mixed_precision(choices: dict[str, dict]) -> list[str]:
    lines = table_section(
        "Quantized layers kept in float",
        "Measured against each stage's float parent on calibration samples (not the parity set): the all-quantized "
        "tower, and the tower with the most harmful layers back in float (cosine min / mean, norm ratio). "
        "bm1684x-int8 keeps whole op types, in F16.",
        ["artifact", "samples", "all quantized", "target", "float layers", "with them", "most harmful (cos mean alone)"],
    )
    for key, choice in choices.items():
        harmful = ", ".join(f"{row['layer']} ({row['cosine_mean']:.5f})" for row in choice["sensitivity"][:3]) or "—"
        met = "met" if choice["target_met"] else "**missed**"
        lines.append(
            f"| {key} | {choice['samples']} | {_fidelity(choice['all_quantized'])} | {_fidelity(choice['target'])} | "
            f"{len(choice['kept_layers'])} of {choice['quantizable_layers']} | {_fidelity(choice['chosen'])}, {met} | {harmful} |"
        )
    return lines


def _fidelity(numbers: dict) -> str:
    return f"{numbers['cosine_min']:.5f} / {numbers['cosine_mean']:.5f}, {numbers['norm_ratio']:.3g}"


def write(report: ParityReport, json_path: Path, markdown_path: Path) -> None:
    atomic_write_text(json_path, report.to_json())
    atomic_write_text(markdown_path, render_markdown(report))
