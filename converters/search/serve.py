"""`serve`: the photo search as a web page, for a home NAS or an edge box beside the photo disk.

    GET  /                      the page: a search box, photo drop, date range, thumbnails, "more like this"
    GET  /status                the index at a glance (photos, artifact, last run, skipped files, problems)
    GET  /api/search?q=…&top=…&since=…&until=…     text search, JSON as `search --json` plus ids and URLs
    POST /api/search/image      image search: the photo as the multipart field `image`
    GET  /api/similar/{id}      photos like the indexed photo `id` (not itself); an id is the photo's rowid
    GET  /api/status            the status as JSON
    GET  /thumb/{id}, /photo/{id}                  a thumbnail (cached beside the index), the photo itself
    GET, POST /login; POST /logout                 signing in, when a password is set (auth.py)

Photos are addressed by their id in the index, never by a path from the request, and a file is
served only while it is a regular file inside an indexed folder: no URL reaches any other file.
Decoding, model runs and scans run in worker threads, never on the event loop, so one slow
upload does not hold up anyone else; image decoding takes at most one thread per core, which
bounds the memory of many large uploads at once.
"""

from __future__ import annotations

import functools
import mimetypes
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.authentication import AuthenticationError
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from converters.app.preprocess import ImageError, load_image
from converters.console import is_url
from converters.errors import UserError
from converters.search.auth import SESSION_COOKIE, SESSION_SECONDS, Gate, Password, PasswordBackend, RequireSignIn, refused
from converters.search.library import Library, Snapshot
from converters.search.network import LOOPBACK_NAMES, BodyLimit, BodyTooLarge, SameOrigin, SecurityHeaders
from converters.search.pages import PAGE, STATUS_PAGE, login_page
from converters.search.query import SearchResult, TimeRange, empty_index, text_query
from converters.search.render import readable_path, to_dict
from converters.search.scanner import REMOTE_BLOCK, open_remote
from converters.search.vectors import normalize_rows

DEFAULT_TOP = 24
MAX_TOP = 200
MAX_UPLOAD_BYTES = 50 * 2**20
MAX_OTHER_BODY = 64 * 2**10  # the sign-in form; nothing else has a body
UPLOAD_PATH = "/api/search/image"


@dataclass(frozen=True)
class Security:
    """Who may use the server: a password (None: anyone who reaches it) and the Host names answered."""

    password: Password | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES


def create_app(library: Library, security: Security = Security(), gate: Gate | None = None) -> Starlette:
    decoding = anyio.CapacityLimiter(os.cpu_count() or 1)
    if security.password is not None and gate is None:
        gate = Gate(security.password)

    def answer(result: SearchResult, snapshot: Snapshot) -> JSONResponse:
        data = to_dict(result)
        for hit, entry in zip(result.hits, data["hits"]):
            # The rowid, not the row: a row number would name another photo once `index` removes one before it.
            photo_id = int(snapshot.index.rowids[hit.row])
            entry |= {"id": photo_id, "thumb": f"/thumb/{photo_id}", "photo": f"/photo/{photo_id}",
                      "similar": f"/api/similar/{photo_id}", "name": Path(readable_path(hit.path)).name}
        # Which state of the photos answered (None for an index no `index` run of this version has written):
        # a server answers from the state before a commit while it reloads, and an app may want to know.
        data["index_version"] = snapshot.index.state
        return JSONResponse(data)

    def options(request: Request) -> tuple[int, TimeRange]:
        try:
            top = int(request.query_params.get("top", DEFAULT_TOP))
        except ValueError:
            raise UserError("top must be a whole number.") from None
        if not 1 <= top <= MAX_TOP:
            raise UserError(f"top must be from 1 to {MAX_TOP}.")
        since, until = (request.query_params.get(key) or None for key in ("since", "until"))
        return top, TimeRange.parse(since, until, names=("since", "until"))

    def searcher(snapshot: Snapshot):
        if snapshot.searcher is None:
            raise empty_index(snapshot.index)
        return snapshot.searcher

    # Plain functions: Starlette runs them in its worker threads.
    def search(request: Request) -> Response:
        top, time_range = options(request)
        text, snapshot = request.query_params.get("q", ""), library.current()
        query = text_query(snapshot.bundle, snapshot.embedder, text)
        return answer(searcher(snapshot).find(text, query, top, time_range), snapshot)

    def image_search(data: bytes, label: str, top: int, time_range: TimeRange) -> Response:
        snapshot = library.current()
        with tempfile.TemporaryDirectory(prefix="cnclip-upload-") as folder:
            path = Path(folder) / "upload"
            path.write_bytes(data)
            try:
                image = load_image(path)  # the same checks as a file on disk: pixel limit, damaged files
            except ImageError as error:  # said of the upload, not of a server path
                raise ImageError(str(error).replace(str(path), "The uploaded file")) from None
        pixels = snapshot.bundle.pixels([image])
        del image  # a 50-megapixel photo is 150 MB decoded: not kept while the model runs
        query = normalize_rows(snapshot.embedder.embed_images(pixels))
        return answer(searcher(snapshot).find(label, query, top, time_range), snapshot)

    async def search_image(request: Request) -> Response:
        top, time_range = options(request)
        form = await request.form(max_files=1, max_fields=4, max_part_size=MAX_OTHER_BODY)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise UserError("Send the photo as the multipart field 'image'.")
        data = await upload.read()  # at most the body limit (network.BodyLimit)
        if len(data) > MAX_UPLOAD_BYTES:
            raise BodyTooLarge(f"The photo is over {MAX_UPLOAD_BYTES // 2**20} MB; send a smaller one.")
        label = f"image: {upload.filename or 'upload'}"
        work = functools.partial(image_search, data, label, top, time_range)
        return await anyio.to_thread.run_sync(work, limiter=decoding)

    def similar(request: Request) -> Response:
        top, time_range = options(request)
        photo_id, snapshot = request.path_params["id"], library.current()
        try:
            row = snapshot.index.row_of(photo_id)
        except LookupError:
            return JSONResponse({"error": f"No photo {photo_id} in the index (removed by a later `index` run?)."},
                                status_code=404)
        query = snapshot.index.vectors[row].astype(np.float32)
        name = Path(readable_path(snapshot.index.photos.paths[row])).name
        return answer(searcher(snapshot).find(f"like {name}", query, top, time_range, exclude=row), snapshot)

    def status(request: Request) -> Response:
        return JSONResponse(library.status())

    def thumb(request: Request) -> Response:
        try:
            data = library.thumbnail(request.path_params["id"], library.current())
        except (LookupError, ImageError):
            return Response(status_code=404)
        # private: with a password, a shared cache between the box and the browser must not keep photos
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    def photo(request: Request) -> Response:
        headers = {"Cache-Control": "private, max-age=3600"}
        try:
            path = library.photo_file(request.path_params["id"], library.current())
            if not is_url(path):
                return FileResponse(path, headers=headers)
            remote = open_remote(path)
        except (LookupError, ImageError):
            return Response(status_code=404)
        return StreamingResponse(_chunks(remote), media_type=mimetypes.guess_type(path)[0], headers=headers)

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def status_page(request: Request) -> Response:
        return HTMLResponse(STATUS_PAGE)

    async def sign_in(request: Request) -> Response:
        next_path = _local_path(request.query_params.get("next", "/"))
        if gate is None:
            return RedirectResponse(next_path, status_code=303)
        if request.method == "GET":
            return HTMLResponse(login_page(next_path, None))
        form = await request.form(max_files=0, max_fields=3, max_part_size=MAX_OTHER_BODY)
        next_path = _local_path(str(form.get("next", "/")))
        if not await gate.check(str(form.get("password", "")), request.client.host if request.client else "unknown"):
            return HTMLResponse(login_page(next_path, "Wrong password."), status_code=401)
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(SESSION_COOKIE, gate.sessions.start(), max_age=SESSION_SECONDS, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    async def sign_out(request: Request) -> Response:
        if gate is not None:
            gate.sessions.end(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login" if gate is not None else "/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
        return response

    async def user_error(request: Request, error: UserError) -> Response:
        return JSONResponse({"error": str(error)}, status_code=getattr(error, "status_code", 400))

    async def http_error(request: Request, error: HTTPException) -> Response:
        # Starlette's own errors (malformed multipart, 404, 405) as JSON, like every other error here.
        return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)

    routes = [
        Route("/", page), Route("/status", status_page),
        Route("/api/search", search), Route(UPLOAD_PATH, search_image, methods=["POST"]),
        Route("/api/similar/{id:int}", similar), Route("/api/status", status),
        Route("/thumb/{id:int}", thumb), Route("/photo/{id:int}", photo),
        Route("/login", sign_in, methods=["GET", "POST"]), Route("/logout", sign_out, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=_middleware(security, gate),
                     exception_handlers={UserError: user_error, HTTPException: http_error})


def _middleware(security: Security, gate: Gate | None) -> list[Middleware]:
    """Outermost first: the Host check and headers apply to every answer, refusals included."""
    stack = [
        Middleware(TrustedHostMiddleware, allowed_hosts=list(security.allowed_hosts), www_redirect=False),
        Middleware(SecurityHeaders),
        Middleware(BodyLimit, limits={UPLOAD_PATH: MAX_UPLOAD_BYTES + 2**20}, default=MAX_OTHER_BODY),
        Middleware(SameOrigin),
    ]
    if gate is not None:
        stack += [Middleware(AuthenticationMiddleware, backend=PasswordBackend(gate), on_error=_auth_error),
                  Middleware(RequireSignIn)]
    return stack


def _auth_error(conn: HTTPConnection, error: AuthenticationError) -> Response:
    return refused(conn, error)


def _chunks(opened: BinaryIO) -> Iterator[bytes]:
    with opened:
        while block := opened.read(REMOTE_BLOCK):
            yield block


def _local_path(path: str) -> str:
    """Where to go after signing in: a path on this server only, never another site (//evil.example)."""
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path
