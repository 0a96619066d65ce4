"""Command line: `python -m converters …` or `cnclip-convert …`.

Every command prints user errors as one paragraph and exits non-zero; the
traceback appears only with `--debug`.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from pathlib import Path

import click

from converters.config import known_models, load_config
from converters.errors import UserError
from converters.layout import BundleLayout, default_bundle_dir

DEFAULT_CACHE = Path(os.environ.get("CNCLIP_CACHE", Path.home() / ".cache" / "clip"))


def _say(message: str) -> None:
    click.echo(f"[cnclip] {message}", err=True)


model_argument = click.argument("model", metavar="MODEL")
out_option = click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Bundle directory (default: artifacts/MODEL).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-paragraph errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Convert Chinese-CLIP checkpoints into verified ONNX, int8 and ncnn artifacts.

    MODEL is a config name from configs/ (see `models`) or a path to a config YAML file.
    """
    ctx.obj = {"debug": debug}


@cli.command()
def models() -> None:
    """List the known model names (one config file each in configs/)."""
    for name in known_models():
        click.echo(name)


@cli.command()
@model_argument
@click.option(
    "--checkpoint", "checkpoint", default=None, metavar="PATH|random",
    help="A Chinese-CLIP .pt checkpoint, or 'random' for seeded random weights. "
    "Default: the official release, downloaded once into --cache-dir.",
)
@out_option
@click.option("--stages", default=None, help="Comma-separated stages to run (default: all): onnx,simplify,int8.")
@click.option("--parity/--no-parity", default=True, show_default=True, help="Check every artifact after converting.")
@click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_CACHE, show_default=True,
    help="Where official checkpoints are downloaded (env CNCLIP_CACHE).",
)
def convert(model: str, checkpoint: str | None, out: Path | None, stages: str | None, parity: bool, cache_dir: Path) -> None:
    """Run the conversion stages for MODEL, then the parity check.

    Stages whose inputs have not changed since the last run are skipped, so a
    re-run after an interruption finishes the job. Exits with status 3 when a
    parity tolerance is not met.
    """
    config = load_config(model)
    from converters.pipeline import STAGES, ConvertRequest, convert as run_convert, parse_stages

    out = out or default_bundle_dir(config.name)
    request = ConvertRequest(config, out, checkpoint, cache_dir, parse_stages(stages) if stages else tuple(STAGES))
    run_convert(request, _say)
    _say(f"artifacts in {out}")
    if parity:
        _report_parity(config, out)


@cli.command("parity")
@model_argument
@out_option
def parity_command(model: str, out: Path | None) -> None:
    """Compare every artifact of MODEL's bundle with PyTorch fp32 on the parity set.

    Writes parity.json and parity.md beside the manifest and exits with status 3
    when a tolerance from the config is not met.
    """
    config = load_config(model)
    _report_parity(config, out or default_bundle_dir(config.name))


def _report_parity(config, out: Path) -> None:
    from converters.errors import ParityError
    from converters.parity import render_markdown
    from converters.verify import run_parity

    layout = BundleLayout(out)
    report = run_parity(config, layout, _say)
    click.echo(render_markdown(report))
    if not report.passed:
        raise ParityError(f"Parity failed for {config.name}; see {layout.parity_md}.")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _say(f"warning: {message}")


# Commands defined in their own packages; each package's command module imports nothing heavy.
from converters.bench.command import register as register_bench  # noqa: E402  (needs `cli` above)
from converters.search.commands import register as register_search  # noqa: E402

register_search(cli)
register_bench(cli)


def main() -> None:
    debug = "--debug" in sys.argv
    if not debug:
        warnings.showwarning = _show_warning
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        _say("interrupted; finished artifacts are kept and a re-run continues from them.")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        _say(f"error: {exc}")
        sys.exit(exc.exit_code)
    except OSError as exc:
        # A full disk or a permission change mid-run: staging folders are removed
        # on the way out and the manifest lists only what was finished.
        if debug:
            traceback.print_exc()
        where = f" ({exc.filename})" if exc.filename else ""
        _say(f"error: {exc.strerror or exc}{where}. Free space or choose another --out, then run the same command again.")
        sys.exit(2)
