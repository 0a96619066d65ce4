"""Search results as a table, JSON and a self-contained HTML page."""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import datetime

from PIL import Image

from converters.data import PARITY_SET_DIR
from converters.search.query import Hit, SearchResult, TimeRange
from converters.search.render import render_html, render_json, render_table
from converters.search.stamp import ArtifactStamp

PHOTOS = PARITY_SET_DIR / "images"


def result(query: str = "海边的日落", hits: list[Hit] | None = None, time_range: TimeRange | None = None) -> SearchResult:
    if hits is None:
        hits = [
            Hit(1, 0.3125, str(PHOTOS / "rocket_launch.jpg"), datetime(2024, 5, 1, 18, 30), True, 1234, 0),
            Hit(2, 0.2871, str(PHOTOS / "astronaut.jpg"), datetime(2023, 7, 12, 9, 5), False, 5678, 1),
            Hit(3, 0.1, "/nowhere/deleted since indexing.jpg", datetime(2020, 1, 1), False, 1, 2),
        ]
    artifact = ArtifactStamp("ab" * 32, "ViT-B-16", "onnx-int8", 512, "/bundles/ViT-B-16")
    return SearchResult(query, artifact, "/idx/index.cnclip", 1000, 250, True, time_range or TimeRange(), "int8", hits)


def test_the_table_lists_rank_score_date_and_path():
    table = render_table(result(time_range=TimeRange.parse("2023-01-01", None)))
    lines = table.splitlines()
    assert lines[0].startswith("海边的日落 · ViT-B-16 / onnx-int8 · 1,000 photos, 250 of them from 2023-01-01")
    assert re.fullmatch(r"\s+1\s+0\.312\s+2024-05-01 18:30\s+/.*rocket_launch\.jpg", lines[2])
    assert "2023-07-12 09:05*" in lines[3]  # no EXIF date: marked as a modification time
    assert lines[-1].startswith("* no EXIF capture time")


def test_an_empty_result_says_so():
    assert render_table(result(hits=[])).splitlines()[-1] == "No photo matches."
    assert "No photo matches." in render_html(result(hits=[]))


def test_json_keeps_every_field_and_the_chinese_text():
    text = render_json(result(time_range=TimeRange.parse("2023-01-01", "2023-12-31")))
    assert "海边的日落" in text
    data = json.loads(text)
    assert data["query"] == "海边的日落" and data["model"] == "ViT-B-16" and data["stage"] == "onnx-int8"
    assert data["artifact_id"] == "ab" * 32 and (data["indexed"], data["considered"]) == (1000, 250)
    assert (data["since"], data["until"]) == ("2023-01-01T00:00:00", "2024-01-01T00:00:00")
    assert data["hits"][0] == {
        "rank": 1, "score": 0.3125, "path": str(PHOTOS / "rocket_launch.jpg"), "time": "2024-05-01T18:30:00",
        "time_source": "exif", "size": 1234,
    }
    assert data["hits"][1]["time_source"] == "mtime"


def test_the_html_page_embeds_small_thumbnails_and_escapes_text():
    page = render_html(result(query='<script>alert("x")</script> 日落'), thumbnail_px=64)
    assert "<script>" not in page and "&lt;script&gt;" in page and "日落" in page
    thumbnails = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(thumbnails) == 2  # the deleted photo keeps its place, without a picture
    for data in thumbnails:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.format == "JPEG" and max(image.size) == 64
    assert "deleted since indexing.jpg" in page and 'class="missing"' in page
    assert 'href="file:///' in page and "src=\"http" not in page
