"""Parity as Immich runs it: an Immich model folder, loaded and fed by `converters.validate.immich_loader` (Immich's
own steps), against PyTorch fed the same ids and the same crop; and what Immich's crop costs against the squash
Chinese-CLIP was trained with. Judged with the stage's usual target (`converters.validate.fidelity.measure`),
against the L2-normalized PyTorch embeddings, so an output left unnormalized fails on its norm.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from converters.app.immich import ImmichFolder
from converters.app.manifest import Manifest
from converters.cpu import cpu_description
from converters.export.config import ModelConfig
from converters.progress import Note, Progress
from converters.validate.fidelity import Embeddings, Fidelity, judge_top1, measure, normalized, top1_agreement
from converters.validate.immich_loader import ImmichLoadError, ImmichTextual, ImmichVisual, decode
from converters.validate.parity import parity_set_for, reference_embeddings

# Beyond the parity captions: texts whose ids exercise Immich's whitespace cleaning, truncation and padding.
TOKEN_SAMPLES = (
    "海边的日落 sunset 2025年12月31日, iPhone15拍摄",
    "ＡＢＣ１２３，！？ｈｅｌｌｏ　世界",
    "  一只猫\t在\n沙发上   睡觉  ",
    "café naïve Ångström CRÈME brûlée",
    "一只猫在沙发上睡觉，" * 20,
    "a photo of a cat sleeping on the sofa " * 20,
    "",
)


@dataclass
class ImmichCheck:
    model: str
    checkpoint: str
    stage: str
    name: str
    cpu: str
    target: dict
    photos: int
    captions: int
    token_texts: int = 0
    token_ids_differing: list[str] = field(default_factory=list)
    text: dict | None = None  # Fidelity as a dict
    visual: dict[str, dict] = field(default_factory=dict)  # by resize mode
    top1: dict[str, float] = field(default_factory=dict)  # by resize mode
    crop_cost: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict:
        return asdict(self) | {"passed": self.passed}


def check_folder(folder: ImmichFolder, manifest: Manifest, config: ModelConfig, stage: str, name: str,
                 model: Callable[[], object], progress: Progress) -> ImmichCheck:
    """`model()` gives the loaded checkpoint (`converters.export.checkpoint.load_recorded`)."""
    from converters.export.torch_reference import TorchEmbedder

    target = config.parity_settings().target(stage)
    parity_set = parity_set_for(manifest)
    reference = reference_embeddings(
        manifest, parity_set, lambda ps: model().reference(ps, config.context_length), progress)
    check = ImmichCheck(manifest.model, manifest.checkpoint.description, stage, name, cpu_description(),
                        target.model_dump(exclude_none=True), len(parity_set.image_files), len(parity_set.captions))
    texts = _check_text(check, folder, manifest, list(parity_set.captions), reference.texts, target)
    progress(Note("immich: PyTorch on Immich's crop of the parity photos"))
    photos = [decode(path) for path in parity_set.image_files]
    torch = TorchEmbedder(model().model)
    try:
        visual = ImmichVisual(folder)
    except ImmichLoadError as error:
        check.failures.append(f"visual: {error}")
        return check
    for mode in visual.modes():
        pixels = np.concatenate([visual.pixels(photo, mode) for photo in photos])
        expected = torch.embed_images(pixels)
        if mode == "shortest":
            check.crop_cost = crop_cost(reference, expected)
        try:
            images = np.stack([visual.run(pixels[i : i + 1]) for i in range(len(pixels))])
        except ImmichLoadError as error:
            check.failures.append(f"visual ({mode}): {error}")
            continue
        measured = measure(normalized(expected), images, target)
        check.visual[mode] = _fidelity(measured)
        check.failures += [f"visual ({mode}): {failure}" for failure in measured.failures]
        if texts is not None and measured.is_embedding:
            agreement = top1_agreement(Embeddings(expected, reference.texts), Embeddings(images, texts))
            check.top1[mode] = agreement
            check.failures += [f"{mode}: {failure}" for failure in judge_top1(agreement, target)]
    return check


def _check_text(check: ImmichCheck, folder: ImmichFolder, manifest: Manifest, captions: list[str],
                expected: np.ndarray, target) -> np.ndarray | None:
    """Token ids on the captions and samples, then the text tower on the captions; the embeddings if it ran."""
    try:
        textual = ImmichTextual(folder)
    except ImmichLoadError as error:
        check.failures.append(f"text: {error}")
        return None
    corpus = [*captions, *TOKEN_SAMPLES]
    wanted = manifest.text_tokenizer().encode(corpus)
    check.token_texts = len(corpus)
    for text, ids in zip(corpus, wanted):
        got = textual.token_ids(text)[0]
        if got.shape != ids.shape or not np.array_equal(got, ids):
            check.token_ids_differing.append(text)
    if check.token_ids_differing:
        check.failures.append(f"text: Immich's token ids differ from cn_clip's for {len(check.token_ids_differing)} "
                              f"of {len(corpus)} texts, e.g. {check.token_ids_differing[0][:40]!r}")
    try:
        texts = np.stack([textual.embed(caption) for caption in captions])
    except ImmichLoadError as error:
        check.failures.append(f"text: {error}")
        return None
    measured = measure(normalized(expected), texts, target)
    check.text = _fidelity(measured)
    check.failures += [f"text: {failure}" for failure in measured.failures]
    return texts if measured.is_embedding else None


def crop_cost(squash: Embeddings, cropped_images: np.ndarray) -> dict:
    """PyTorch on Immich's crop against PyTorch on Chinese-CLIP's squash: per-photo cosine, and how often a
    caption's best photo stays the same."""
    cosine = np.sum(normalized(squash.images) * normalized(cropped_images), axis=1)
    agreement = top1_agreement(squash, Embeddings(cropped_images, squash.texts))
    return {"cosine_min": round(float(cosine.min()), 6), "cosine_mean": round(float(cosine.mean()), 6),
            "top1_agreement": round(agreement, 4)}


def _fidelity(measured: Fidelity) -> dict:
    return {key: value for key, value in asdict(measured).items() if key != "failures"}


def write_report(check: ImmichCheck, folder: ImmichFolder) -> None:
    folder.check_json.write_text(json.dumps(check.to_json(), indent=2, ensure_ascii=False) + "\n", "utf-8")
    folder.check_md.write_text(render_markdown(check), "utf-8")


def render_markdown(check: ImmichCheck) -> str:
    def row(what: str, numbers: dict | None) -> str:
        if not numbers:
            return f"| {what} | not measured | | |"
        return (f"| {what} | {numbers['cosine_min']:.6f} | {numbers['cosine_mean']:.6f} | "
                f"{numbers['norm_ratio_max']:.2e} |")

    lines = [
        f"# {check.model} as Immich's {check.name}: {'PASSED' if check.passed else 'FAILED'}",
        "",
        f"Stage {check.stage}, weights: {check.checkpoint}; CPU: {check.cpu}.",
        f"Loaded as Immich's machine-learning service loads it (tokenizers, pad token, int32 `text`, its resize and "
        f"crop, output 0) and compared with PyTorch fed the same ids and pixels, L2-normalized; target "
        f"{json.dumps(check.target)}. Parity set: {check.photos} photos, {check.captions} captions.",
        "",
        "| tower | cosine min | cosine mean | norm off by |",
        "|---|---|---|---|",
        row("text", check.text),
        *(row(f"visual ({mode})", numbers) for mode, numbers in check.visual.items()),
        "",
        f"Token ids through Immich's path: {check.token_texts - len(check.token_ids_differing)} of "
        f"{check.token_texts} texts identical to cn_clip's.",
        *(f"Top-1 agreement ({mode}): {value:.3f}" for mode, value in check.top1.items()),
    ]
    if check.crop_cost:
        cost = check.crop_cost
        lines += ["", f"What Immich's centre crop costs against Chinese-CLIP's squash (PyTorch, both): cosine min "
                  f"{cost['cosine_min']:.4f}, mean {cost['cosine_mean']:.4f}; top-1 agreement {cost['top1_agreement']:.3f}."]
    if check.failures:
        lines += ["", "## Failures", "", *(f"- {failure}" for failure in check.failures)]
    return "\n".join(lines) + "\n"
