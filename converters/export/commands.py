"""`models`, `convert`, `parity`, `sensitivity`, `levers` and `immich`: the commands that need a model's config."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from converters.app.layout import default_bundle_dir
from converters.app.specs import DEFAULT_STAGES, STAGE_NAMES, STAGE_SPECS
from converters.console import bundle_option, optional_model_argument, say
from converters.errors import ParityError
from converters.progress import render
from converters.validate.client import ARCHES

DEFAULT_CACHE = Path(os.environ.get("CNCLIP_CACHE", Path.home() / ".cache" / "clip"))
BUNDLE_HELP = "Bundle directory (default: artifacts/MODEL below the working directory)"
# `immich --precision`: the bundle's ONNX stage each precision is taken from.
IMMICH_PRECISIONS = {"fp32": "onnx-sim", "fp16": "onnx-fp16", "int8": "onnx-int8"}


@click.command("models")
def models_command() -> None:
    """List the known model names (one config file each)."""
    from converters.export.config import known_models

    for name in known_models():
        click.echo(name)


@click.command("convert")
@optional_model_argument
@click.option(
    "--checkpoint", "checkpoint", default=None, metavar="PATH|hf:OWNER/NAME|random|stress",
    help="A cn_clip .pt checkpoint, a Hugging Face ChineseCLIPModel folder (save_pretrained), hf:OWNER/NAME "
    "from the hub's cache, 'random' for seeded random weights, or 'stress' for seeded weights with the "
    "outliers of trained towers (the config's `stress:`). Default: the official release, downloaded once "
    "into --cache-dir.",
)
@bundle_option(BUNDLE_HELP)
@click.option(
    "--stages", default=None, metavar="LIST",
    help=f"Comma-separated stages to run, from: {','.join(STAGE_NAMES)}. Default: {','.join(DEFAULT_STAGES)} "
    f"(the others are asked for by name: {', '.join(s for s in STAGE_NAMES if not STAGE_SPECS[s].by_default)}).",
)
@click.option(
    "--parity/--no-parity", default=True, show_default=True,
    help="Check every artifact against PyTorch as it is made; a stage is not built on a parent that fails.",
)
@click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_CACHE, show_default=True,
    help="Where official checkpoints are downloaded (env CNCLIP_CACHE).",
)
def convert_command(model: str | None, checkpoint: str | None, bundle: Path | None, stages: str | None, parity: bool, cache_dir: Path) -> None:
    """Run the conversion stages for MODEL, checking parity as they go.

    MODEL may be left out when --checkpoint is a Hugging Face folder: its
    config.json names the architecture. Stages whose inputs have not changed
    since the last run are skipped, so a re-run after an interruption finishes
    the job. Writes parity.json and parity.md beside the manifest and exits
    with status 3 when a parity tolerance is not met.
    """
    from converters.export.pipeline import ConvertRequest, convert, parse_stages

    config, checkpoint = _config_for(model, checkpoint)
    out = (bundle or default_bundle_dir(config.name)).absolute()
    selected = parse_stages(stages) if stages else DEFAULT_STAGES
    conversion = convert(ConvertRequest(config, out, checkpoint, cache_dir, selected, parity), lambda e: say(render(e)))
    say(f"artifacts in {out}")
    if conversion.parity is not None:
        report_parity(conversion.parity, out)


@click.command("parity")
@optional_model_argument
@bundle_option(BUNDLE_HELP)
@click.option(
    "--client", "arches", multiple=True, type=click.Choice(ARCHES),
    help="Also run the ncnn stages through the C++ reference client built for ARCH (`make client ARCH=...`, "
    "binary in build/client/ARCH/): every caption and the golden photos. aarch64 runs under qemu-aarch64 "
    "-cpu max (emulated ARMv8.2, fp16 arithmetic on). Repeatable.",
)
def parity_command(model: str | None, bundle: Path | None, arches: tuple[str, ...]) -> None:
    """Compare every artifact of MODEL's bundle (or the bundle at --bundle) with PyTorch fp32 on the parity set.

    Writes parity.json and parity.md beside the manifest and exits with status 3
    when a tolerance from the config is not met. Needs no PyTorch when the
    reference embeddings are cached in the bundle.
    """
    from converters.app.layout import BundleLayout
    from converters.export.bundle_parity import run_parity
    from converters.validate.client import CppClient, default_binary

    config, out = bundle_config(model, bundle)
    clients = [CppClient(default_binary(arch), arch) for arch in arches]
    report_parity(run_parity(config, BundleLayout(out), lambda e: say(render(e)), clients), out)


@click.command("sensitivity")
@optional_model_argument
@bundle_option(BUNDLE_HELP)
@click.option("--stage", required=True, help="The quantized stage to measure, e.g. onnx-int8 (any stage with a float fallback).")
@click.option(
    "--samples", type=click.IntRange(1, 1000), default=None,
    help="Calibration samples per tower (default: the config's float_fallback.samples).",
)
def sensitivity_command(model: str | None, bundle: Path | None, stage: str, samples: int | None) -> None:
    """Rank every layer of a quantized stage by what its quantization alone costs the embedding.

    Each quantizable layer is quantized alone, the rest left float, and the
    tower is compared with the stage's float parent on calibration samples
    (never the parity set). Writes sensitivity.json beside the manifest and
    prints the most harmful layers. One quantization and one pass over the
    samples per layer: minutes on a full-size tower.
    """
    from converters.app.layout import BundleLayout
    from converters.export.sensitivity import measure_sensitivity

    config, out = bundle_config(model, bundle)
    layout = BundleLayout(out)
    tables = measure_sensitivity(config, layout, stage, samples)
    for tower, rows in tables.items():
        click.echo(f"{tower}.{stage}: {len(rows)} layers, most harmful first (the tower with that layer alone quantized)")
        for row in rows[:10]:
            click.echo(f"  {row.fidelity}  {row.kind:<18} {row.layer}")
    say(f"wrote {layout.sensitivity_json}")


@click.command("levers")
@optional_model_argument
@bundle_option(BUNDLE_HELP)
@click.option(
    "--stages", "stages", default=None,
    help="The quantized stages whose settings to compare, comma-separated (default: every stage that has levers).",
)
def levers_command(model: str | None, bundle: Path | None, stages: str | None) -> None:
    """Measure what each quantization setting does to the bundle's all-quantized towers.

    For onnx-int8: per-tensor weights, 8-bit weights, static QDQ, activation
    smoothing; for ncnn-int8: the other threshold method, the first layer in float,
    smoothing; for onnx-int4: block sizes 32, 64, 128. Each variant is compared
    with its float parent on held-out calibration samples and with PyTorch on
    the parity set. Needs the bundle's float parents (onnx-sim, ncnn-fp32) and
    its parity reference; writes levers.json and prints the table. Minutes on
    full-size towers.
    """
    from converters.app.layout import BundleLayout
    from converters.export.levers import LEVERS, measure_levers, render_table

    known = list(dict.fromkeys(lever.stage for lever in LEVERS))
    chosen = tuple(s.strip() for s in stages.split(",") if s.strip()) if stages else tuple(known)
    if not chosen or set(chosen) - set(known):
        raise click.BadParameter(f"choose among {', '.join(known)}", param_hint="--stages")
    config, out = bundle_config(model, bundle)
    layout = BundleLayout(out)
    rows = measure_levers(config, layout, lambda event: say(render(event)), chosen)
    click.echo(render_table(rows))
    say(f"wrote {layout.levers_json}")


@click.command("immich")
@optional_model_argument
@bundle_option(BUNDLE_HELP, old_name=None)
@click.option("--precision", type=click.Choice(sorted(IMMICH_PRECISIONS)), default="fp32", show_default=True,
              help="Which of the bundle's ONNX towers: fp32 (onnx-sim), fp16 (onnx-fp16) or int8 (onnx-int8).")
@click.option("--name", default=None, help="The allow-listed Immich model name to serve it under (default: by "
              "embedding size: 512 ViT-B-16__openai, 768 ViT-L-14__openai or ViT-L-14-336__openai, 1024 RN50__openai).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The folder to write (replaced only if this tool wrote it).")
@click.option("--install", "cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Then copy it into this Immich model cache (MACHINE_LEARNING_CACHE_FOLDER; /cache in Docker) as "
              "clip/NAME: refused if a folder there was not written by this tool; ours is kept as NAME.cnclip-previous.")
def immich_command(model: str | None, bundle: Path | None, precision: str, name: str | None, out: Path,
                   cache: Path | None) -> None:
    """Write a model folder for Immich's machine-learning service from a bundle's ONNX towers, and check it.

    The folder is loaded as Immich loads it (its tokenizer files, int32 text ids, its resize and crop) and compared
    with PyTorch on the parity set; the report (immich-check.md) goes into the folder. A folder that fails is left
    at OUT.failed and the command exits with status 3. See docs/immich.md.
    """
    import functools
    import tempfile

    from converters.app.immich import ImmichFolder, dim_mismatch, immich_name
    from converters.app.layout import BundleLayout
    from converters.app.manifest import Manifest
    from converters.export import immich
    from converters.export.checkpoint import load_recorded
    from converters.export.immich_check import check_folder, render_markdown, write_report

    config, root = bundle_config(model, bundle)
    stage = IMMICH_PRECISIONS[precision]
    manifest = Manifest.load(BundleLayout(root).manifest)
    manifest.require_model(config.name)
    name = immich_name(manifest.embedding.dim, manifest.preprocess["resolution"], name)
    if (warning := dim_mismatch(name, manifest.embedding.dim)) is not None:
        say(f"warning: {warning}")
    out = out.absolute()
    immich.refuse_foreign(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with BundleLayout(root).exclusive():  # the check may write the bundle's reference cache
            folder = immich.write_folder(manifest, stage, name, staging)
            loaded = functools.cache(lambda: load_recorded(config, manifest))
            check = check_folder(folder, manifest, config, stage, name, loaded, lambda e: say(render(e)))
        write_report(check, folder)
        written = immich.publish(staging, out, check.passed)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    click.echo(render_markdown(check))
    if not check.passed:
        raise ParityError(f"The Immich folder fails as Immich would run it; see {ImmichFolder(written).check_md}.")
    say(f"Immich folder {name} in {written}")
    if cache is not None:
        say(f"installed as {immich.install(written, cache.absolute(), name)}; run Smart Search for all photos in Immich.")


def _config_for(model: str | None, checkpoint: str | None):
    """The model's config, and the checkpoint argument (an `hf:` reference becomes its folder in the hub's cache)."""
    from converters.export import huggingface
    from converters.export.config import load_config

    if checkpoint and checkpoint.startswith(huggingface.PREFIX):
        checkpoint = str(huggingface.download(checkpoint))
    if model is not None:
        return load_config(model), checkpoint
    if checkpoint and huggingface.is_checkpoint_folder(Path(checkpoint)):
        return huggingface.infer_config(Path(checkpoint)), checkpoint
    raise click.UsageError("Give MODEL (see `models`), unless --checkpoint is a Hugging Face model folder, whose config.json names it.")


def bundle_config(model: str | None, out: Path | None):
    """The config of MODEL, or, without MODEL, of the bundle at --bundle as its manifest records it."""
    from converters.app.layout import BundleLayout
    from converters.app.manifest import Manifest
    from converters.export import huggingface
    from converters.export.config import load_config

    if model is not None:
        config = load_config(model)  # MODEL may be a path to a YAML file: the folder is named after the config
        return config, (out or default_bundle_dir(config.name)).absolute()
    if out is None:
        raise click.UsageError("Give MODEL, or --bundle with the bundle's folder.")
    manifest = Manifest.load(BundleLayout(out).manifest)
    source = Path(manifest.checkpoint.source)
    # A Hugging Face folder of an architecture no config file names has its config in the folder.
    config = huggingface.infer_config(source) if huggingface.is_checkpoint_folder(source) else load_config(manifest.model)
    return config, out.absolute()


def report_parity(report, out: Path) -> None:
    from converters.app.layout import BundleLayout
    from converters.validate.report import render_markdown

    click.echo(render_markdown(report))
    if not report.passed:
        raise ParityError(f"Parity failed for {report.model}; see {BundleLayout(out).parity_md}.")
