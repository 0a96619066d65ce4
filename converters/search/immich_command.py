"""`immich-serve`: a bundle's stage behind Immich's `/predict` and `/ping`, for CLIP (`docs/immich.md`)."""

from __future__ import annotations

from pathlib import Path

import click

from converters.app.bundle import DEFAULT_STAGE
from converters.app.specs import STAGE_NAMES
from converters.console import bundle_option, say, threads_option
from converters.errors import UserError


@click.command("immich-serve")
@bundle_option("The bundle whose stage answers Immich's CLIP requests", required=True, old_name=None)
@click.option("--stage", type=click.Choice(STAGE_NAMES), default=DEFAULT_STAGE, show_default=True,
              help="The bundle's stage to run (any runtime the bundle has: onnx-int8, ncnn-int8, bm1684x-int8, ...).")
@click.option("--name", default=None, help="The Immich model name it answers to (default: by embedding size, as "
              "`immich` names folders: 512 ViT-B-16__openai, 768 ViT-L-14__openai, 1024 RN50__openai).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Immich's server in Docker reaches the host at its bridge address; any "
              "address but loopback needs --no-auth: Immich sends no password, so anyone who reaches it can use it.")
@click.option("--no-auth", is_flag=True, help="Listen on a non-loopback address, knowing there is no password.")
@click.option("--port", type=click.IntRange(1, 65535), default=3003, show_default=True,
              help="Port to listen on (3003 is Immich's own machine-learning port).")
@threads_option(1, "Inference")
def immich_serve_command(bundle: Path, stage: str, name: str | None, host: str, no_auth: bool, port: int,
                         threads: int) -> None:
    """Answer Immich's smart-search requests with a Chinese-CLIP bundle: point Immich's machine learning URL here.

    Text and image embeddings only (clip.textual, clip.visual), with Chinese-CLIP's own tokenizer and preprocessing,
    L2-normalized; face and OCR requests are refused with status 400. Run Smart Search for all photos after
    switching.
    """
    from converters.app.bundle import Bundle
    from converters.app.immich import dim_mismatch, immich_name
    from converters.search.immich_api import create_immich_app
    from converters.search.network import check_port, is_loopback, run_server

    if not is_loopback(host) and not no_auth:
        raise UserError(f"Listening on {host} would let every device that reaches it use this model: Immich's "
                        "server sends no password. Pass --no-auth to do it on purpose, on a network you trust.")

    opened = Bundle.open(bundle)
    model_name = immich_name(opened.embedding_dim, opened.resolution, name)
    if (warning := dim_mismatch(model_name, opened.embedding_dim)) is not None:
        say(f"warning: {warning}")
    embedder = opened.embedder(stage, threads)
    check_port(host, port)
    if not is_loopback(host):
        say(f"warning: listening on {host}: every device that reaches it can use this model, with no password.")
    run_server(create_immich_app(opened, embedder, model_name), host, port,
               f"{opened.model} ({stage}) as Immich's {model_name} on http://{host}:{port}/ (Ctrl-C stops)")
