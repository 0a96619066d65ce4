"""Queries, the time filter and the scan backends, on an index of the shipped photos made by the tiny ViT."""

from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from converters.app.bundle import Bundle
from converters.bench.search_scale import measure_topk
from converters.data import PARITY_SET_DIR
from converters.search.backends import BackendUnavailableError, Int8Scan
from converters.search.query import (
    QueryError,
    Searcher,
    TimeRange,
    image_query,
    text_query,
)
from converters.search.stamp import ArtifactMismatchError
from converters.search.photos import PhotoFacts, PhotoIndex
from converters.search.store import load_index
from converters.search.updater import IndexUpdater
from converters.search.vectors import Int8Codes, normalize_rows, quantize

PHOTOS = PARITY_SET_DIR / "images"
ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
CAPTURED = {
    "grass.jpg": "2019:05:01 10:00:00",
    "gravel.jpg": "2021:06:01 12:30:00",
    "brick_wall.jpg": "2023:12:31 23:59:00",
}
MODIFIED = {"rocket_launch.jpg": datetime(2020, 2, 2, 8, 0)}


@pytest.fixture(scope="module")
def library(tiny_bundle, tmp_path_factory) -> tuple[Bundle, Path, Path]:
    """(bundle, photos folder, index folder): the shipped photos, some with EXIF dates or old mtimes, indexed."""
    root = tmp_path_factory.mktemp("library")
    photos = root / "photos"
    shutil.copytree(PHOTOS, photos)
    for name, taken in CAPTURED.items():
        exif = Image.Exif()
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = taken
        Image.open(PHOTOS / name).save(photos / name, exif=exif)
    for name, modified in MODIFIED.items():
        os.utime(photos / name, (modified.timestamp(), modified.timestamp()))
    bundle = Bundle.open(tiny_bundle)
    with IndexUpdater(root / "index", bundle, "onnx-sim") as updater:
        updater.run(updater.plan(photos))
    return bundle, photos, root / "index"


def names(result) -> list[str]:
    return [Path(hit.path).name for hit in result.hits]


@ON_TINY_VIT
@pytest.mark.parametrize("backend", ["int8", "exact", "hnsw"])
def test_an_image_finds_itself_first(library, backend):
    bundle, photos, index_dir = library
    searcher = Searcher(load_index(index_dir), backend)
    embedder = bundle.embedder("onnx-sim")
    for name in ("cat_chelsea.jpg", "hubble_deep_field.jpg", "cameraman_gray.jpg"):
        result = searcher.find(name, image_query(bundle, embedder, photos / name), k=3)
        assert names(result)[0] == name
        assert result.hits[0].score == pytest.approx(1, abs=1e-3)
        assert [hit.rank for hit in result.hits] == [1, 2, 3]
        assert result.hits[0].score >= result.hits[1].score >= result.hits[2].score


@ON_TINY_VIT
@pytest.mark.parametrize("backend", ["int8", "exact", "hnsw"])
def test_a_text_query_ranks_photos_by_cosine_similarity(library, backend):
    bundle, _, index_dir = library
    index = load_index(index_dir)
    query = text_query(bundle, bundle.embedder("onnx-sim"), "海边的日落 sunset")
    result = Searcher(index, backend).find("海边的日落 sunset", query, k=5)
    similarities = index.vectors[:].astype(np.float32) @ query[0]
    expected = np.argsort(-similarities, kind="stable")[:5]
    assert [hit.path for hit in result.hits] == [index.photos.paths[row] for row in expected]
    np.testing.assert_allclose([hit.score for hit in result.hits], similarities[expected], atol=1e-5)


@ON_TINY_VIT
@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        ("2021-01-01", "2023-12-31", {"gravel.jpg", "brick_wall.jpg"}),  # --until includes its whole day
        ("2020-01-01", "2020-12-31", {"rocket_launch.jpg"}),  # no EXIF: dated by its mtime
        (None, "2019-12-31", {"grass.jpg"}),
        ("2019-05-01T10:00", "2019-05-01T10:01", {"grass.jpg"}),
        ("1990-01-01", "1990-12-31", set()),
    ],
)
def test_the_time_filter_uses_capture_time_else_mtime(library, since, until, expected):
    bundle, photos, index_dir = library
    query = image_query(bundle, bundle.embedder("onnx-sim"), photos / "astronaut.jpg")
    result = Searcher(load_index(index_dir)).find("astronaut", query, k=10, time_range=TimeRange.parse(since, until))
    assert set(names(result)) == expected and result.considered == len(expected)
    captured = {Path(hit.path).name: hit.captured for hit in result.hits}
    assert all(captured[name] == (name in CAPTURED) for name in captured)


@ON_TINY_VIT
@pytest.mark.parametrize("text", ["", "   ", "\u200b\u200b", "\t\n"])
def test_a_query_with_no_words_is_refused(library, text):
    bundle, _, _ = library
    with pytest.raises(QueryError, match="no words once tokenized"):
        text_query(bundle, bundle.embedder("onnx-sim"), text)


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        ("2025-13-01", None, "--since '2025-13-01' is not a date"),
        (None, "yesterday", "--until 'yesterday' is not a date"),
        ("2025-02-01", "2025-01-01", "is not before"),
        ("2025-01-01T00:00+08:00", None, "has a time zone"),
    ],
)
def test_bad_dates_are_refused(since, until, message):
    with pytest.raises(QueryError, match=message):
        TimeRange.parse(since, until)


@ON_TINY_VIT
def test_a_bundle_with_another_artifact_is_refused(library, tmp_path):
    bundle, _, index_dir = library
    other = tmp_path / "other"
    shutil.copytree(bundle.manifest.root, other)
    manifest = json.loads((other / "manifest.json").read_text())
    # Its "onnx-sim" visual tower is now the int8 model: a different artifact under the same model name.
    manifest["artifacts"]["visual.onnx-sim"] = {**manifest["artifacts"]["visual.onnx-int8"], "stage": "onnx-sim", "precision": "fp32"}
    (other / "manifest.json").write_text(json.dumps(manifest))
    index = load_index(index_dir)
    with pytest.raises(ArtifactMismatchError, match="cannot be compared"):
        index.artifact.open_bundle(other, index.file)
    assert index.artifact.open_bundle(None, index.file).artifact_id("onnx-sim") == bundle.artifact_id("onnx-sim")


def in_memory_index(vectors: np.ndarray) -> PhotoIndex:
    n = len(vectors)
    codes, scales = quantize(vectors)
    photos = PhotoFacts([f"/p/{i}.jpg" for i in range(n)], *(np.zeros(n, np.int64) for _ in range(3)), np.zeros(n, bool))
    int8 = Int8Codes(codes.T.copy(), scales)
    return PhotoIndex(Path("memory"), None, [], True, photos, vectors.astype(np.float16), int8)


def test_the_int8_scan_computes_exact_integer_dot_products():
    """Guards the 7-bit query: with 8-bit operands the AVX2 kernel's int16 pair sums saturate."""
    rng = np.random.default_rng(0)
    vectors = normalize_rows(rng.standard_normal((3000, 512)))
    query = normalize_rows(vectors[:1] + 0.01)  # near-duplicates give the largest dot products
    vectors[1:50] = normalize_rows(np.sign(query) + 0.001 * rng.standard_normal((49, 512)))
    scan = Int8Scan(in_memory_index(vectors))
    rows = scan.candidates(query, count=len(vectors), allowed=None)[0]
    quantized = np.rint(query[0] / np.abs(query).max() * Int8Scan.QUERY_LEVELS).astype(np.int64)
    expected = (quantized @ scan.codes.astype(np.int64)) * scan.scales.astype(np.float64)
    assert sorted(rows) == list(range(len(vectors)))
    assert np.all(np.diff(expected[rows]) <= 1e-6 * np.abs(expected).max())


def test_the_int8_scan_honours_the_filter():
    vectors = normalize_rows(np.random.default_rng(1).standard_normal((500, 64)))
    allowed = np.zeros(500, bool)
    allowed[[3, 99, 400]] = True
    rows = Int8Scan(in_memory_index(vectors)).candidates(vectors[:2], count=64, allowed=allowed)
    assert [sorted(r) for r in rows] == [[3, 99, 400]] * 2


def test_recall_at_10_of_the_int8_scan_against_exact_float32_on_random_vectors():
    measured = measure_topk(20_000, 512, "int8", k=10, queries=10)
    assert measured.recall >= 0.99
    assert (measured.n, measured.dim, measured.backend) == (20_000, 512, "int8")
    assert measured.median_ms > 0 and measured.resident_mb > 0


@ON_TINY_VIT
def test_the_faiss_backend_agrees_with_exact(library):
    pytest.importorskip("faiss")
    bundle, photos, index_dir = library
    index = load_index(index_dir)
    query = image_query(bundle, bundle.embedder("onnx-sim"), photos / "coffee_cup.jpg")
    time_range = TimeRange.parse("2019-01-01", "2022-01-01")
    for window in (TimeRange(), time_range):
        expected = Searcher(index, "exact").find("cup", query, 5, window)
        assert names(Searcher(index, "faiss").find("cup", query, 5, window)) == names(expected)


@ON_TINY_VIT
def test_without_faiss_its_backend_says_what_to_install(library, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(BackendUnavailableError, match="pip install faiss-cpu"):
        Searcher(load_index(library[2]), "faiss")


def test_scans_share_one_session_per_thread_count_and_it_does_not_spin():
    """A server builds a scan at every reload: a session each started a thread pool (and a glibc arena) each time."""
    rng = np.random.default_rng(0)
    first, second = (Int8Scan(in_memory_index(normalize_rows(rng.standard_normal((n, 64)))), 2) for n in (50, 80))
    assert first.session is second.session and Int8Scan(in_memory_index(normalize_rows(rng.standard_normal((9, 64)))), 1).session is not first.session
    assert first.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert len(first.candidates(np.ones((1, 64), np.float32), 10, None)[0]) == 10  # still a working scan
