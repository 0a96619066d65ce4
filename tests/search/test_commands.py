"""The `index` and `search` commands through click, on the tiny ViT bundle and the shipped photos."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from converters.cli import cli
from converters.data import PARITY_SET_DIR
from converters.search import backends
from converters.search.query import QueryError
from converters.search.stamp import ArtifactMismatchError
from converters.search.store import IndexFileError

PHOTOS = PARITY_SET_DIR / "images"
REPO = Path(__file__).resolve().parents[2]
ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)


def invoke(*args) -> click.testing.Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


@pytest.fixture
def indexed(tiny_bundle, tmp_path) -> tuple[Path, Path]:
    """(photos, index dir) after one `index` run over the shipped photos and one broken file."""
    photos = tmp_path / "photos"
    shutil.copytree(PHOTOS, photos)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    result = invoke("index", photos, "--bundle", tiny_bundle, "--index", tmp_path / "index")
    assert result.exit_code == 0, result.output
    return photos, tmp_path / "index"


@ON_TINY_VIT
def test_index_reports_what_it_did_and_lists_skipped_files(indexed):
    photos, index_dir = indexed
    again = invoke("index", photos, "--index", index_dir)  # the index remembers its bundle and stage
    assert again.exit_code == 0, again.output
    assert "1 to embed, 15 unchanged, 0 gone" in again.stderr  # unreadable files are tried again
    assert "15 photos (0 added, 0 updated, 0 removed, 15 unchanged, 1 skipped)" in again.stderr
    assert f"skipped: {photos.resolve() / 'broken.jpg'}" in again.stderr


@ON_TINY_VIT
def test_search_by_text_as_json(indexed):
    _, index_dir = indexed
    result = invoke("search", "海边的日落", "--index", index_dir, "--top", 3, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["query"] == "海边的日落" and data["stage"] == "onnx-sim" and data["backend"] == "int8"
    assert [hit["rank"] for hit in data["hits"]] == [1, 2, 3]
    assert all(Path(hit["path"]).is_file() for hit in data["hits"])


@ON_TINY_VIT
def test_search_by_image_prints_a_table_and_writes_an_html_page(indexed, tmp_path):
    photos, index_dir = indexed
    page = tmp_path / "results.html"
    query = photos / "cat_chelsea.jpg"
    result = invoke("search", "--image", query, "--index", index_dir, "--html", page, "--backend", "exact")
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    assert rows[0].startswith(f"image: {photos / 'cat_chelsea.jpg'}") and rows[2].endswith("cat_chelsea.jpg")
    assert len([row for row in rows if row.endswith(".jpg")]) == 10
    assert page.read_text().count("data:image/jpeg;base64,") == 10


@ON_TINY_VIT
@pytest.mark.parametrize("stage", ["onnx-int8", "ncnn-fp16", "ncnn-int8"])
def test_every_stage_of_the_bundle_indexes_and_searches(tiny_bundle, tmp_path, stage):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat_chelsea.jpg", "grass.jpg", "rocket_launch.jpg", "coffee_cup.jpg"):
        shutil.copy(PHOTOS / name, photos / name)
    index_dir = tmp_path / "index"
    made = invoke("index", photos, "--bundle", tiny_bundle, "--stage", stage, "--index", index_dir)
    assert made.exit_code == 0, made.output
    found = invoke("search", "--image", photos / "grass.jpg", "--index", index_dir, "--json")
    assert found.exit_code == 0, found.output
    data = json.loads(found.stdout)
    assert data["stage"] == stage and Path(data["hits"][0]["path"]).name == "grass.jpg"
    assert data["hits"][0]["score"] == pytest.approx(1, abs=1e-3)


@ON_TINY_VIT
def test_a_library_from_the_approximate_size_on_gets_its_graph_at_index_time(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "APPROXIMATE_FROM", len(list(PHOTOS.glob("*.jpg"))))
    index_dir = tmp_path / "index"
    made = invoke("index", PHOTOS, "--bundle", tiny_bundle, "--index", index_dir)
    assert made.exit_code == 0, made.output
    assert "approximate index (HNSW graph)" in made.output
    assert len(list(index_dir.glob("approximate-*.usearch"))) == 1
    found = invoke("search", "--image", PHOTOS / "grass.jpg", "--index", index_dir, "--json")
    data = json.loads(found.stdout)
    assert data["backend"] == "hnsw" and Path(data["hits"][0]["path"]).name == "grass.jpg"


@ON_TINY_VIT
def test_search_with_a_time_window_that_holds_nothing(indexed):
    result = invoke("search", "猫", "--index", indexed[1], "--since", "1990-01-01", "--until", "1990-12-31")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "No photo matches."


def test_search_needs_one_query_and_a_new_index_needs_a_bundle(tmp_path):
    neither = invoke("search", "--index", tmp_path)
    both = invoke("search", "猫", "--image", PHOTOS / "grass.jpg", "--index", tmp_path)
    for result in (neither, both):
        assert result.exit_code == 2 and "Give either a TEXT query or --image FILE" in result.output
    new = invoke("index", PHOTOS, "--index", tmp_path / "new")
    assert new.exit_code == 2 and "give --bundle BUNDLE to create one" in new.output


@ON_TINY_VIT
def test_user_errors_reach_the_cli_as_user_errors(indexed, tiny_bundle, tmp_path):
    photos, index_dir = indexed
    missing = invoke("search", "猫", "--index", tmp_path / "nowhere")
    assert isinstance(missing.exception, IndexFileError)
    empty = invoke("search", "   ", "--index", index_dir)
    assert isinstance(empty.exception, QueryError)
    other_stage = invoke("index", photos, "--bundle", tiny_bundle, "--stage", "onnx-int8", "--index", index_dir)
    assert isinstance(other_stage.exception, ArtifactMismatchError)


@ON_TINY_VIT
def test_the_search_engine_never_imports_torch(indexed):
    photos, index_dir = indexed
    script = textwrap.dedent(f"""
        import sys
        import click
        from click.testing import CliRunner
        from converters.cli import cli
        for args in (["index", {str(photos)!r}, "--index", {str(index_dir)!r}],
                     ["search", "日落", "--index", {str(index_dir)!r}, "--json"]):
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0, result.output
        loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "torchvision", "cn_clip"))
        assert not loaded, loaded
    """)
    child = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
