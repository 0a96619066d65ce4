"""`parity`: re-check an existing bundle."""

from __future__ import annotations

from pathlib import Path

import click

from converters.app.layout import BundleLayout, default_bundle_dir
from converters.cli import say
from converters.export.commands import model_argument, out_option, report_parity
from converters.progress import render


@click.command("parity")
@model_argument
@out_option
def parity_command(model: str, out: Path | None) -> None:
    """Compare every artifact of MODEL's bundle with PyTorch fp32 on the parity set.

    Writes parity.json and parity.md beside the manifest and exits with status 3
    when a tolerance from the config is not met. Needs no PyTorch when the
    reference embeddings are cached in the bundle.
    """
    from converters.export.config import load_config
    from converters.validate.parity import run_parity

    config = load_config(model)
    out = (out or default_bundle_dir(config.name)).absolute()
    report_parity(run_parity(config, BundleLayout(out), lambda e: say(render(e))), out)
