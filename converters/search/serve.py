"""`serve`: the photo search as a local web page, for a home NAS or an edge box beside the photo disk.

    GET  /                      the page: a search box, photo drop, date range, thumbnails, "more like this"
    GET  /status                the index at a glance (photos, artifact, last run, skipped files)
    GET  /api/search?q=…&top=…&since=…&until=…     text search, JSON as `search --json` plus ids and URLs
    POST /api/search/image      image search: the photo as the multipart field `image`
    GET  /api/similar/{id}      photos like the indexed photo `id`
    GET  /api/status            the status as JSON
    GET  /thumb/{id}, /photo/{id}                  a thumbnail (cached beside the index), the photo itself

Photos are addressed by their row in the index, never by a path from the
request, and a file is served only while it is a regular file inside an
indexed folder: no URL reaches any other file.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ImageOps
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from converters.app.bundle import Bundle
from converters.app.fsutil import atomic_write_bytes
from converters.app.preprocess import ImageError, load_image
from converters.app.runtimes import Embedder
from converters.errors import UserError
from converters.search.query import Searcher, SearchResult, TimeRange, text_query
from converters.search.render import THUMBNAIL_PX, readable_path, to_dict
from converters.search.store import IndexDatabase, PhotoIndex, load_index
from converters.search.vectors import normalize_rows

DEFAULT_TOP = 24
MAX_TOP = 200
MAX_UPLOAD_BYTES = 50 * 2**20
THUMBNAIL_FOLDER = "thumbnails"


@dataclass
class Library:
    """What the server holds: the index in memory, its bundle and embedder, and where thumbnails go."""

    index_dir: Path
    index: PhotoIndex
    bundle: Bundle
    embedder: Embedder
    searcher: Searcher

    @classmethod
    def open(cls, index_dir: Path, artifacts: Path | None, threads: int) -> "Library":
        index = load_index(index_dir)
        bundle = index.artifact.open_bundle(artifacts, index.file)
        return cls(Path(index_dir), index, bundle, bundle.embedder(index.artifact.stage, threads), Searcher(index, threads=threads))

    def photo_file(self, row: int) -> Path:
        """The photo of `row`, if it is still a regular file inside an indexed folder."""
        if not 0 <= row < len(self.index):
            raise LookupError(row)
        path = Path(self.index.photos.paths[row])
        resolved = path.resolve()
        inside = any(resolved.is_relative_to(Path(root).resolve()) for root in self.index.roots)
        if not inside or not resolved.is_file():
            raise LookupError(row)
        return resolved

    def thumbnail(self, row: int) -> bytes:
        path = self.photo_file(row)
        stat = path.stat()
        key = hashlib.sha256(f"{os.fsencode(path)!r}:{stat.st_size}:{stat.st_mtime_ns}:{THUMBNAIL_PX}".encode()).hexdigest()
        cached = self.index_dir / THUMBNAIL_FOLDER / f"{key}.jpg"
        if cached.is_file():
            return cached.read_bytes()
        # Turned upright for people, unlike the model's pixels, which use the file as stored.
        image = ImageOps.exif_transpose(load_image(path))
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=80)
        atomic_write_bytes(cached, buffer.getvalue())
        return buffer.getvalue()


def create_app(library: Library) -> Starlette:
    def answer(result: SearchResult) -> JSONResponse:
        data = to_dict(result)
        for hit, entry in zip(result.hits, data["hits"]):
            entry |= {"id": hit.row, "thumb": f"/thumb/{hit.row}", "photo": f"/photo/{hit.row}",
                      "similar": f"/api/similar/{hit.row}", "name": Path(readable_path(hit.path)).name}
        return JSONResponse(data)

    def options(request: Request) -> tuple[int, TimeRange]:
        try:
            top = int(request.query_params.get("top", DEFAULT_TOP))
        except ValueError:
            raise UserError("top must be a whole number.") from None
        if not 1 <= top <= MAX_TOP:
            raise UserError(f"top must be from 1 to {MAX_TOP}.")
        since, until = (request.query_params.get(key) or None for key in ("since", "until"))
        return top, TimeRange.parse(since, until)

    async def search(request: Request) -> Response:
        top, time_range = options(request)
        text = request.query_params.get("q", "")
        query = text_query(library.bundle, library.embedder, text)
        return answer(library.searcher.find(text, query, top, time_range))

    async def search_image(request: Request) -> Response:
        top, time_range = options(request)
        form = await request.form(max_files=1, max_fields=4, max_part_size=MAX_UPLOAD_BYTES)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise UserError("Send the photo as the multipart field 'image'.")
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise UserError(f"The photo is over {MAX_UPLOAD_BYTES // 2**20} MB.")
        with tempfile.TemporaryDirectory(prefix="cnclip-upload-") as folder:
            path = Path(folder) / "upload"
            path.write_bytes(data)
            try:
                image = load_image(path)  # the same checks as a file on disk: size limit, damaged files
            except ImageError as error:  # said of the upload, not of a server path
                raise ImageError(str(error).replace(str(path), "The uploaded file")) from None
        query = normalize_rows(library.embedder.embed_images(library.bundle.pixels([image])))
        return answer(library.searcher.find(f"image: {upload.filename or 'upload'}", query, top, time_range))

    async def similar(request: Request) -> Response:
        top, time_range = options(request)
        row = request.path_params["row"]
        if not 0 <= row < len(library.index):
            return JSONResponse({"error": f"No photo {row} in the index."}, status_code=404)
        query = library.index.vectors[row].astype(np.float32)
        name = Path(readable_path(library.index.photos.paths[row])).name
        return answer(library.searcher.find(f"like {name}", query, top, time_range))

    def status_data() -> dict:
        database = IndexDatabase(library.index_dir)
        try:
            return database.status() | {"loaded_photos": len(library.index), "bundle": str(library.bundle.manifest.root)}
        finally:
            database.close()

    async def status(request: Request) -> Response:
        return JSONResponse(status_data())

    async def thumb(request: Request) -> Response:
        try:
            return Response(library.thumbnail(request.path_params["row"]), media_type="image/jpeg",
                            headers={"Cache-Control": "max-age=3600"})
        except (LookupError, ImageError):
            return Response(status_code=404)

    async def photo(request: Request) -> Response:
        try:
            return FileResponse(library.photo_file(request.path_params["row"]))
        except LookupError:
            return Response(status_code=404)

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def status_page(request: Request) -> Response:
        return HTMLResponse(STATUS_PAGE)

    async def user_error(request: Request, error: UserError) -> Response:
        return JSONResponse({"error": str(error)}, status_code=400)

    routes = [
        Route("/", page), Route("/status", status_page),
        Route("/api/search", search), Route("/api/search/image", search_image, methods=["POST"]),
        Route("/api/similar/{row:int}", similar), Route("/api/status", status),
        Route("/thumb/{row:int}", thumb), Route("/photo/{row:int}", photo),
    ]
    return Starlette(routes=routes, exception_handlers={UserError: user_error})


PAGE = """<!doctype html>
<html lang="zh">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cnclip · 照片搜索</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0; background: #f6f6f4; color: #222; }
header { padding: 16px 24px; background: #fff; border-bottom: 1px solid #ddd; display: flex; flex-wrap: wrap; gap: 12px; align-items: center; }
header form { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; flex: 1; }
#q { flex: 1; min-width: 240px; font-size: 18px; padding: 8px 12px; border: 1px solid #bbb; border-radius: 6px; }
button, label.drop { font-size: 15px; padding: 8px 14px; border-radius: 6px; border: 1px solid #888; background: #fff; cursor: pointer; }
label.drop.over { background: #e7f0ff; border-color: #3a6fd8; }
input[type=date] { font-size: 14px; padding: 6px; }
#summary { padding: 10px 24px; color: #555; font-size: 14px; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 14px; padding: 0 24px 24px; }
figure { margin: 0; background: #fff; border-radius: 8px; overflow: hidden; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
figure img { width: 100%; height: 200px; object-fit: cover; display: block; background: #eee; }
figcaption { padding: 8px 10px; font-size: 13px; display: flex; justify-content: space-between; gap: 6px; align-items: baseline; flex-wrap: wrap; }
.when { color: #666; }
figcaption a { color: #3a6fd8; text-decoration: none; white-space: nowrap; }
.score { font-weight: 600; }
.error { color: #b00020; }
</style>
</head>
<body>
<header>
  <form id="text">
    <input id="q" name="q" placeholder="海边的日落 · 去年的身份证 · a cat on a sofa" autocomplete="off">
    <button type="submit" id="go">搜索</button>
    <label class="drop" id="drop">拖入照片 / drop a photo<input type="file" id="file" accept="image/*" hidden></label>
    <span>从 <input type="date" id="since"> 到 <input type="date" id="until"></span>
  </form>
  <a href="/status">index status</a>
</header>
<div id="summary"></div>
<div id="grid"></div>
<script>
const grid = document.getElementById("grid"), summary = document.getElementById("summary");
let last = null;  // the last query, re-run when the dates change
function range() {
  const p = new URLSearchParams({top: "24"});
  for (const key of ["since", "until"]) { const v = document.getElementById(key).value; if (v) p.set(key, v); }
  return p;
}
async function show(response) {
  const data = await response.json();
  grid.innerHTML = "";
  if (!response.ok) { summary.innerHTML = '<span class="error"></span>'; summary.firstChild.textContent = data.error; return; }
  summary.textContent = `${data.query} · ${data.model} / ${data.stage} · ${data.hits.length} of ${data.considered} photos` +
    (data.since || data.until ? ` (${data.since || "…"} – ${data.until || "…"})` : "");
  for (const hit of data.hits) {
    const figure = document.createElement("figure");
    figure.className = "hit";
    figure.innerHTML = '<a target="_blank"><img loading="lazy" alt=""></a><figcaption><span><span class="score"></span> <span class="when"></span></span><a href="#" class="similar">相似 · more like this</a></figcaption>';
    figure.querySelector("a").href = hit.photo;
    figure.querySelector("img").src = hit.thumb;
    figure.querySelector("img").title = hit.path;
    figure.querySelector(".score").textContent = hit.score.toFixed(3);
    figure.querySelector(".when").textContent = hit.time.slice(0, 10);
    figure.querySelector(".similar").addEventListener("click", event => { event.preventDefault(); run({similar: hit.id}); });
    grid.appendChild(figure);
  }
}
async function run(query) {
  last = query;
  const p = range();
  if (query.text !== undefined) { p.set("q", query.text); return show(await fetch("/api/search?" + p)); }
  if (query.similar !== undefined) return show(await fetch(`/api/similar/${query.similar}?` + p));
  const body = new FormData(); body.append("image", query.file);
  return show(await fetch("/api/search/image?" + p, {method: "POST", body}));
}
document.getElementById("text").addEventListener("submit", event => { event.preventDefault(); run({text: document.getElementById("q").value}); });
for (const key of ["since", "until"]) document.getElementById(key).addEventListener("change", () => last && run(last));
const drop = document.getElementById("drop"), file = document.getElementById("file");
file.addEventListener("change", () => file.files[0] && run({file: file.files[0]}));
drop.addEventListener("dragover", event => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", event => { event.preventDefault(); drop.classList.remove("over"); if (event.dataTransfer.files[0]) run({file: event.dataTransfer.files[0]}); });
</script>
</body>
</html>
"""

STATUS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cnclip · index status</title>
<style>body { font-family: system-ui, sans-serif; margin: 24px; } td { padding: 4px 12px 4px 0; vertical-align: top; }</style></head>
<body><h1>Index status</h1><table id="facts"></table><h2>Skipped files</h2><ul id="skipped"></ul><p><a href="/">search</a></p>
<script>
fetch("/api/status").then(r => r.json()).then(s => {
  const rows = [["index", s.index], ["photos", s.photos], ["model", s.artifact.model], ["artifact", `${s.artifact.stage} (${s.artifact.id.slice(0, 12)})`],
    ["bundle", s.bundle], ["folders", s.roots.join(", ")],
    ["last run", s.last_run ? `${s.last_run.root}: ${s.last_run.started} → ${s.last_run.finished || "not finished"}, ${s.last_run.added} added, ${s.last_run.updated} updated, ${s.last_run.removed} removed` : "none"]];
  for (const [key, value] of rows) { const tr = document.createElement("tr"); tr.innerHTML = "<td></td><td></td>";
    tr.children[0].textContent = key; tr.children[1].textContent = value; document.getElementById("facts").appendChild(tr); }
  for (const reason of s.skipped) { const li = document.createElement("li"); li.textContent = reason; document.getElementById("skipped").appendChild(li); }
});
</script></body></html>
"""
