"""Search results for people and programs: a terminal table, JSON, or a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from urllib.parse import quote

from PIL import ImageOps

from converters.app.preprocess import ImageError
from converters.console import is_url
from converters.search.query import Hit, SearchResult
from converters.search.scanner import load_photo

THUMBNAIL_PX = 256
MTIME_MARK = "*"


def to_dict(result: SearchResult) -> dict:
    return {
        "query": result.query,
        "model": result.artifact.model,
        "stage": result.artifact.stage,
        "artifact_id": result.artifact.id,
        "index": result.index_file,
        "indexed": result.indexed,
        "considered": result.considered,
        "index_complete": result.complete,
        "since": result.time_range.since.isoformat() if result.time_range.since else None,
        "until": result.time_range.until.isoformat() if result.time_range.until else None,
        "backend": result.backend,
        "hits": [
            {
                "rank": hit.rank,
                "score": round(hit.score, 6),
                "path": readable_path(hit.path),
                **({"path_base64": _path_base64(hit.path)} if _undecodable(hit.path) else {}),
                "time": hit.time.isoformat(),
                "time_source": "exif" if hit.captured else "mtime",
                "size": hit.size,
            }
            for hit in result.hits
        ],
    }


def render_json(result: SearchResult) -> str:
    return json.dumps(to_dict(result), ensure_ascii=False, indent=2)


def summary(result: SearchResult) -> str:
    scope = f"{result.indexed:,} photos"
    if result.time_range.since or result.time_range.until:
        scope += f", {result.considered:,} of them {result.time_range.describe()}"
    return f"{result.query} · {result.artifact.model} / {result.artifact.stage} · {scope}"


def _when(hit: Hit) -> str:
    return hit.time.strftime("%Y-%m-%d %H:%M") + ("" if hit.captured else MTIME_MARK)


def render_table(result: SearchResult) -> str:
    lines = [summary(result)]
    if not result.hits:
        return "\n".join([*lines, "No photo matches."])
    lines.append(f"{'#':>3}  {'score':>6}  {'date':<17}  path")
    lines += [f"{hit.rank:>3}  {hit.score:>6.3f}  {_when(hit):<17}  {one_line(readable_path(hit.path))}" for hit in result.hits]
    if any(not hit.captured for hit in result.hits):
        lines.append(f"{MTIME_MARK} no EXIF capture time: the file's modification time")
    return "\n".join(lines)


def render_html(result: SearchResult, thumbnail_px: int = THUMBNAIL_PX) -> str:
    """One HTML page with the thumbnails inside it (base64 JPEG), so it can be moved or mailed alone."""
    figures = "\n".join(_figure(hit, thumbnail_px) for hit in result.hits) or "<p>No photo matches.</p>"
    return f"""<!doctype html>
<html lang="zh">
<head>
<meta charset="utf-8">
<title>{html.escape(result.query)} · cnclip search</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; }}
.hits {{ display: flex; flex-wrap: wrap; gap: 16px; }}
figure {{ margin: 0; width: {thumbnail_px}px; }}
figure img {{ display: block; max-width: {thumbnail_px}px; max-height: {thumbnail_px}px; }}
figcaption {{ font-size: 12px; overflow-wrap: anywhere; }}
.missing {{ width: {thumbnail_px}px; height: {thumbnail_px // 2}px; background: #eee; color: #666; font-size: 12px; }}
</style>
</head>
<body>
<h1>{html.escape(result.query)}</h1>
<p>{html.escape(summary(result))}</p>
<div class="hits">
{figures}
</div>
</body>
</html>
"""


def _figure(hit: Hit, thumbnail_px: int) -> str:
    try:
        picture = f'<img src="data:image/jpeg;base64,{_thumbnail(hit.path, thumbnail_px)}" alt="">'
    except ImageError as error:
        # Indexed earlier, since moved, deleted or damaged: the hit stays, without its picture.
        picture = f'<div class="missing">{html.escape(str(error))}</div>'
    caption = f"#{hit.rank} · {hit.score:.3f} · {_when(hit)}<br>{html.escape(one_line(readable_path(hit.path)))}"
    link = html.escape(quote(hit.path, safe=":/") if is_url(hit.path) else Path(hit.path).as_uri())
    return f'<figure><a href="{link}">{picture}</a><figcaption>{caption}</figcaption></figure>'


def _undecodable(path: str) -> bool:
    return path != readable_path(path)


def readable_path(path: str) -> str:
    """The path as valid text: a file name that is not UTF-8 (GBK names from old Windows disks, say) keeps
    its decodable part, and each undecodable byte appears as the four characters \\xNN."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _path_base64(path: str) -> str:
    """The exact bytes of a path that is not valid UTF-8, for a program that must open the file."""
    return base64.b64encode(path.encode("utf-8", "surrogateescape")).decode("ascii")


def one_line(text: str) -> str:
    # A newline or other control character in a file name would forge a row of the table.
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _thumbnail(path: str, size: int) -> str:
    # Turned upright for people, unlike the model's pixels, which use the file as stored.
    image = ImageOps.exif_transpose(load_photo(path))
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
