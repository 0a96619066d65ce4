"""`serve` while `index` writes the same library: killed mid-batch, a writer holding the database, a full disk.
Each test checks that the server kept answering, that nothing committed was lost, and that its answers
equal a fresh single-threaded search of the index as committed."""

from __future__ import annotations

import errno
import shutil
import signal
import sqlite3
import subprocess
import sys

import httpx
import pytest

from converters.app.bundle import Bundle
from converters.search import library as library_module
from converters.search.loadtest import resident_mb, serving
from converters.search.query import Searcher, text_query
from converters.search.serve import Library, create_app
from converters.search.store import INDEX_FILE, load_index
from tests.search.conftest import PHOTOS, index, live
from tests.search.helpers import indexed_rows, integrity

ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
WAIT = 120  # a guard against hanging, not a measurement


def fresh_answer(index_dir, text: str, top: int) -> list[tuple[str, float]]:
    """What a single-threaded search of the index as committed now finds."""
    index = load_index(index_dir)
    bundle = Bundle.open(index.artifact.bundle)
    query = text_query(bundle, bundle.embedder(index.artifact.stage, 1), text)
    return [(hit.path, round(hit.score, 6)) for hit in Searcher(index, threads=1).find(text, query, top).hits]


def served_answer(base: str, text: str, top: int) -> list[tuple[str, float]]:
    data = httpx.get(base + "/api/search", params={"q": text, "top": top}, timeout=WAIT).json()
    return [(hit["path"], hit["score"]) for hit in data["hits"]]


@ON_TINY_VIT
def test_index_killed_mid_batch_while_serving_loses_nothing_committed(library, tmp_path):
    photos, index_dir, _ = library
    more = photos / "more"
    more.mkdir()
    for copy in range(20):
        for photo in PHOTOS.glob("*.jpg"):
            shutil.copy(photo, more / f"{copy:02d}-{photo.name}")
    with live(create_app(Library.open(index_dir, None, 1))) as base:
        command = [sys.executable, "-m", "converters", "index", str(photos), "--index", str(index_dir), "--batch-size", "4"]
        indexer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = []
        try:
            while indexed_rows(index_dir) < 15 + 40 and indexer.poll() is None and len(seen) < 2000:
                response = httpx.get(base + "/api/search", params={"q": "猫", "top": 5}, timeout=WAIT)
                assert response.status_code == 200, response.text
                seen.append(response.json()["indexed"])
        finally:
            indexer.send_signal(signal.SIGKILL)
            indexer.wait(WAIT)
        assert integrity(index_dir) == "ok"
        committed = indexed_rows(index_dir)
        assert 15 + 40 <= committed < 15 + 300, "the run was not killed mid-way; nothing to test"
        assert seen and seen == sorted(seen)  # answered throughout, never going back to fewer photos
        assert httpx.get(base + "/api/status", timeout=WAIT).json()["loaded_photos"] == committed
        assert served_answer(base, "草地", 30) == fresh_answer(index_dir, "草地", 30)
        index(photos, index_dir)  # a re-run finishes what the killed one started
        assert httpx.get(base + "/api/status", timeout=WAIT).json()["loaded_photos"] == 15 + 300
        assert served_answer(base, "海边", 50) == fresh_answer(index_dir, "海边", 50)


@ON_TINY_VIT
def test_a_long_writer_holding_the_database_holds_no_search_up(served, library):
    client, _ = served
    writer = sqlite3.connect(library[1] / INDEX_FILE, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # as `index` holds it while writing a batch, only longer
    writer.execute("UPDATE photos SET path = CAST('/moved/' || rowid || '.jpg' AS BLOB)")
    try:
        for _ in range(3):
            assert len(client.get("/api/search", params={"q": "猫", "top": 15}).json()["hits"]) == 15
            assert client.get("/api/status").json()["photos"] == 15
        assert not any(hit["path"].startswith("/moved/") for hit in client.get("/api/search", params={"q": "猫"}).json()["hits"])
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert integrity(library[1]) == "ok" and len(load_index(library[1])) == 15


@ON_TINY_VIT
def test_a_full_disk_for_the_thumbnail_cache_still_shows_thumbnails(served, library, monkeypatch):
    client, _ = served

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(library_module, "atomic_write_bytes", full)
    for row in range(1, 4):  # photo ids are rowids, from 1
        response = client.get(f"/thumb/{row}")
        assert response.status_code == 200 and response.content[:2] == b"\xff\xd8"
    assert not (library[1] / "thumbnails").exists()
    assert client.get("/api/status").status_code == 200


@ON_TINY_VIT
def test_concurrent_searches_equal_single_threaded_ones(library):
    import concurrent.futures

    _, index_dir, _ = library
    texts = ["猫", "草地", "海边的日落", "火箭", "咖啡", "一个人", "dog", "宇航员"]
    expected = {text: fresh_answer(index_dir, text, 10) for text in texts}
    with live(create_app(Library.open(index_dir, None, 1))) as base, \
            concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda text: (text, served_answer(base, text, 10)), texts * 8))
    assert all(answer == expected[text] for text, answer in answers)


@ON_TINY_VIT
def test_memory_of_serve_does_not_grow_with_requests(library, tmp_path):
    # The real command in a process of its own: the test process's memory, gigabytes after hundreds of other
    # tests, moves by tens of megabytes for reasons of its own.
    _, index_dir, _ = library
    upload = {"image": ("q.jpg", (PHOTOS / "cat_chelsea.jpg").read_bytes(), "image/jpeg")}
    with serving(index_dir, tmp_path / "serve.log") as (base, server), httpx.Client(base_url=base, timeout=WAIT) as client:

        def round_of_requests() -> None:
            ids = [hit["id"] for hit in client.get("/api/search", params={"q": "猫", "top": 15}).json()["hits"]]
            for photo_id in ids:
                assert client.get(f"/thumb/{photo_id}").status_code == 200
                assert client.get(f"/photo/{photo_id}").status_code == 200
            assert client.post("/api/search/image", files=upload).status_code == 200
            assert client.get(f"/api/similar/{ids[0]}").status_code == 200
            assert client.get("/api/status").status_code == 200

        for _ in range(10):  # warm: thumbnails cached, thread pool and allocator at their working size
            round_of_requests()
        before = resident_mb(server.pid)
        for _ in range(40):  # 40 × 34 requests
            round_of_requests()
        # Alone, serve grows by about 1 MB here; this catches what keeps a quarter of a megabyte or more per round
        # (a decoded photo, a session).
        assert resident_mb(server.pid) - before < 10, "memory grew with the requests"
