"""The approximate index: recall on vectors with structure, a cache that never serves other photos, `auto`."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from converters.bench.search_scale import VectorSource, measure_topk
from converters.search import backends, hnsw
from converters.search.backends import HnswScan
from converters.search.query import Searcher
from converters.search.photos import PhotoFacts, PhotoIndex
from converters.search.vectors import int8_codes, normalize_rows


def index_in(folder: Path, vectors: np.ndarray) -> PhotoIndex:
    n = len(vectors)
    photos = PhotoFacts([f"/p/{i}.jpg" for i in range(n)], *(np.zeros(n, np.int64) for _ in range(3)), np.zeros(n, bool))
    vectors = vectors.astype(np.float16)
    return PhotoIndex(folder / "index.sqlite", None, [], True, photos, vectors, int8_codes(vectors))


def clustered(n: int, seed: int = 0) -> np.ndarray:
    return VectorSource("clustered", n, 128, seed).draw(n, stream=0)


def graph_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"{hnsw.GRAPH_PREFIX}*{hnsw.GRAPH_SUFFIX}"))


def test_recall_at_10_of_the_graph_on_clustered_vectors():
    measured = measure_topk(20_000, 512, "hnsw", k=10, queries=20, vectors="clustered")
    assert measured.recall >= 0.98
    assert (measured.backend, measured.vectors) == ("hnsw", "clustered")


def test_every_photo_finds_itself_through_the_graph(tmp_path):
    vectors = clustered(3000)
    searcher = Searcher(index_in(tmp_path, vectors), "hnsw")
    found = searcher.top_rows(vectors[:200], k=1)
    assert [int(rows[0]) for rows, _ in found] == list(range(200))


def test_the_graph_is_cached_beside_the_index_and_read_back(tmp_path, monkeypatch):
    index = index_in(tmp_path, clustered(2000))
    HnswScan(index)
    assert graph_files(tmp_path) == [hnsw.graph_file(index)]

    def no_build(*args, **kwargs):
        raise AssertionError("the cached graph should have been read")

    monkeypatch.setattr(hnsw, "build_graph", no_build)
    rows = HnswScan(index).candidates(index.vectors[:1].astype(np.float32), 10, None)[0]
    assert rows[0] == 0


def test_a_graph_of_other_photos_is_never_used_and_is_replaced(tmp_path):
    vectors = clustered(2000)
    HnswScan(index_in(tmp_path, vectors))
    old = graph_files(tmp_path)
    vectors[7] = -vectors[7]  # one photo changed: its old neighbours are wrong now
    changed = index_in(tmp_path, vectors)
    rows = HnswScan(changed).candidates(vectors[7:8], 10, None)[0]
    assert rows[0] == 7
    assert graph_files(tmp_path) == [hnsw.graph_file(changed)] != old


@pytest.mark.parametrize("damage", ["garbage", "truncated", "another graph"])
def test_a_damaged_cache_file_is_built_again(tmp_path, damage):
    index = index_in(tmp_path, clustered(2000))
    file = hnsw.graph_file(index)
    if damage == "another graph":
        other = tmp_path / "other"
        other.mkdir()
        smaller = index_in(other, clustered(500, seed=1))
        HnswScan(smaller)
        shutil.copyfile(hnsw.graph_file(smaller), file)
    else:
        HnswScan(index)
        data = file.read_bytes()
        file.write_bytes(b"\x00garbage" * 100 if damage == "garbage" else data[: len(data) // 2])
    rows = HnswScan(index).candidates(index.vectors[5:6].astype(np.float32), 10, None)[0]
    assert rows[0] == 5
    assert len(hnsw.open_graph(index)) == len(index)


def test_a_date_filter_is_honoured_exactly(tmp_path):
    vectors = clustered(2000)
    allowed = np.zeros(len(vectors), bool)
    allowed[[3, 999, 1500]] = True
    rows = HnswScan(index_in(tmp_path, vectors)).candidates(vectors[:2], 64, allowed)
    assert [sorted(r) for r in rows] == [[3, 999, 1500]] * 2


def test_auto_walks_the_graph_from_the_stated_size_on(tmp_path, monkeypatch):
    index = index_in(tmp_path, normalize_rows(np.random.default_rng(0).standard_normal((300, 64))))
    monkeypatch.setattr(backends, "APPROXIMATE_FROM", 300)
    assert Searcher(index).scan.name == "hnsw"
    monkeypatch.setattr(backends, "APPROXIMATE_FROM", 301)
    assert Searcher(index).scan.name == "int8"
