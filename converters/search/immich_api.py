"""An endpoint Immich's server can use as its machine-learning URL, for CLIP only (`docs/immich.md`).

What Immich's server sends and reads (immich-app/immich, `server/src/repositories/machine-learning.repository.ts`):
`GET /ping` must answer 200 (its health check); `POST /predict` is a multipart form with `entries`, a JSON string —
`{"clip": {"textual": {"modelName": …, "options": {"language": …}}}}` with a `text` field, or
`{"clip": {"visual": {"modelName": …}}}` with an `image` file (the preview's bytes) — and it reads `response["clip"]`,
a string holding the JSON list of the embedding (Immich's service serializes it so, `immich_ml/models/transforms.py`),
plus `imageHeight` and `imageWidth` for an image (`immich_ml/main.py`).

The embeddings come from the bundle's chosen stage (any runtime), with Chinese-CLIP's own preprocessing (the
whole photo squashed, as it was trained) and tokenizer, and are L2-normalized, as Immich's own models give them.
Face detection, OCR and every other task are refused with 400 and a message saying so.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from converters.app.bundle import Bundle
from converters.app.preprocess import ImageError, load_image
from converters.app.runtimes import Embedder
from converters.errors import UserError

MAX_UPLOAD_BYTES = 64 * 2**20  # Immich's service spools uploads of 64 MiB and more to disk; previews are far smaller


class RequestError(UserError):
    """A request this endpoint does not answer; said back to Immich with status 400 (422 for a malformed one)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_entries(raw: str | None) -> tuple[str, str]:
    """The one CLIP model type asked for ("textual" or "visual") and its model name."""
    try:
        entries = json.loads(raw or "")
        tasks = {task: dict(types) for task, types in entries.items()}
    except (ValueError, AttributeError, TypeError):
        raise RequestError("Invalid request format: 'entries' must be a JSON object such as "
                           '{"clip": {"textual": {"modelName": "ViT-B-16__openai"}}}.', 422) from None
    others = sorted(set(tasks) - {"clip"})
    if others:
        raise RequestError(f"This server answers Immich's CLIP (smart search) requests only, not {', '.join(others)}: "
                           "faces and OCR need Immich's own machine-learning service (docs/immich.md).")
    types = tasks.get("clip", {})
    if len(types) != 1 or next(iter(types)) not in ("textual", "visual"):
        raise RequestError(f"Ask for exactly one of clip.textual or clip.visual; got {sorted(types) or 'none'}.")
    (kind, entry), = types.items()
    if not isinstance(entry, dict) or not isinstance(entry.get("modelName"), str):
        raise RequestError(f"clip.{kind} needs a modelName.", 422)
    return kind, entry["modelName"]


def serialize(vector: np.ndarray) -> str:
    """An embedding as Immich's `clip` field carries it: a JSON list in a string, L2-normalized."""
    vector = vector.astype(np.float64)
    return json.dumps((vector / np.linalg.norm(vector)).astype(np.float32).tolist())


def decode(data: bytes):
    """The uploaded photo with the same checks as a file on disk (size limit, damaged files), first frame, as stored."""
    with tempfile.TemporaryDirectory(prefix="cnclip-immich-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        try:
            return load_image(path)
        except ImageError as error:
            raise RequestError(str(error).replace(str(path), "The uploaded image")) from None


def create_immich_app(bundle: Bundle, embedder: Embedder, model_name: str) -> Starlette:
    """`/ping` and `/predict` for `model_name`; a request for another model is refused, since Immich sizes its
    vectors by the name and would store these under a model they do not come from."""

    def embed_text(text: str) -> dict:
        return {"clip": serialize(embedder.embed_texts(bundle.token_ids([text]))[0])}

    def embed_image(data: bytes) -> dict:
        image = decode(data)
        vector = embedder.embed_images(bundle.pixels([image]))[0]
        return {"clip": serialize(vector), "imageHeight": image.height, "imageWidth": image.width}

    async def predict(request: Request) -> Response:
        form = await request.form(max_files=1, max_fields=8, max_part_size=MAX_UPLOAD_BYTES)
        entries = form.get("entries")
        kind, name = parse_entries(entries if isinstance(entries, str) else None)
        if name != model_name:
            raise RequestError(f"This server serves {model_name}; Immich asked for {name}. Choose {model_name} in "
                               "Administration > Settings > Machine Learning > Smart Search.")
        if kind == "textual":
            text = form.get("text")
            if not isinstance(text, str):
                raise RequestError("A clip.textual request needs a 'text' field.")
            return JSONResponse(await run_in_threadpool(embed_text, text))
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise RequestError("A clip.visual request needs an 'image' file.")
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise RequestError(f"The image is over {MAX_UPLOAD_BYTES // 2**20} MiB.")
        return JSONResponse(await run_in_threadpool(embed_image, data))

    async def ping(request: Request) -> Response:
        return PlainTextResponse("pong")

    async def root(request: Request) -> Response:
        return JSONResponse({"message": "Immich ML (cnclip-converters: Chinese-CLIP, CLIP only)"})

    async def refused(request: Request, error: UserError) -> Response:
        status = error.status if isinstance(error, RequestError) else 400
        return JSONResponse({"detail": str(error)}, status_code=status)

    routes = [Route("/", root), Route("/ping", ping), Route("/predict", predict, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={UserError: refused})
