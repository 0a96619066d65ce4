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
from converters.validate.client import ARCHES


@click.command("parity")
@optional_model_argument
@out_option
@click.option(
    "--client", "arches", multiple=True, type=click.Choice(ARCHES),
    help="Also run the ncnn stages through the C++ reference client built for ARCH (`make client ARCH=...`, "
    "binary in build/client/ARCH/): every caption and the golden photos. aarch64 runs under qemu-aarch64 "
    "-cpu max (emulated ARMv8.2, fp16 arithmetic on). Repeatable.",
)
def parity_command(model: str | None, out: Path | None, arches: tuple[str, ...]) -> None:
    """Compare every artifact of MODEL's bundle (or the bundle at --out) with PyTorch fp32 on the parity set.

    Writes parity.json and parity.md beside the manifest and exits with status 3
    when a tolerance from the config is not met. Needs no PyTorch when the
    reference embeddings are cached in the bundle.
    """
    from converters.validate.client import CppClient, default_binary
    from converters.validate.parity import run_parity

    config, out = bundle_config(model, out)
    clients = [CppClient(default_binary(arch), arch) for arch in arches]
    report_parity(run_parity(config, BundleLayout(out), lambda e: say(render(e)), clients), out)
