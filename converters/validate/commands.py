"""`parity`: re-check an existing bundle."""

from __future__ import annotations

from pathlib import Path

import click

from converters.app.layout import BundleLayout
from converters.cli import say
from converters.export.commands import (
    bundle_config,
    optional_model_argument,
    out_option,
    report_parity,
)
from converters.progress import render


@click.command("parity")
@optional_model_argument
@out_option
def parity_command(model: str | None, out: Path | None) -> None:
    """Compare every artifact of MODEL's bundle (or the bundle at --out) with PyTorch fp32 on the parity set.

    Writes parity.json and parity.md beside the manifest and exits with status 3
    when a tolerance from the config is not met. Needs no PyTorch when the
    reference embeddings are cached in the bundle.
    """
    from converters.validate.parity import run_parity

    config, out = bundle_config(model, out)
    report_parity(run_parity(config, BundleLayout(out), lambda e: say(render(e))), out)
