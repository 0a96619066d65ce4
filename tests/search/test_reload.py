"""A running server's reload: only what `index` changed is read again, and photo ids outlive other photos' removal."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from converters.search import store
from converters.search.library import Library
from converters.search.schema import INDEX_FILE, TRIGGER_NAMES
from converters.search.store import IndexDatabase, load_index
from tests.search.conftest import PHOTOS, index

ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)


# The listing is compared a chunk at a time: in one chunk, and in chunks of two rows (changes across chunks).
CHUNKS = pytest.mark.parametrize("chunk", [store.CHANGES_CHUNK, 2])


@ON_TINY_VIT
@CHUNKS
def test_a_reload_reads_only_the_changed_rows_and_equals_a_full_load(library, monkeypatch, chunk):
    monkeypatch.setattr(store, "CHANGES_CHUNK", chunk)
    photos, index_dir, _ = library
    before = load_index(index_dir)
    (photos / "coffee_cup.jpg").unlink()
    os.utime(photos / "astronaut.jpg", (1_700_000_000, 1_700_000_000))  # changed: its row is replaced
    shutil.copy(PHOTOS / "grass.jpg", photos / "new.jpg")
    index(photos, index_dir)
    read = []
    rows = IndexDatabase._rows
    monkeypatch.setattr(IndexDatabase, "_rows", lambda self, where, parameters, count: read.append(count) or rows(self, where, parameters, count))
    reloaded = load_index(index_dir, before)
    assert sum(read) == 2  # astronaut.jpg and new.jpg; the 13 others are kept from before
    full = load_index(index_dir)
    assert np.array_equal(reloaded.rowids, full.rowids) and reloaded.photos.paths == full.photos.paths
    for name in ("size", "mtime_ns", "time", "captured"):
        assert np.array_equal(getattr(reloaded.photos, name), getattr(full.photos, name))
    assert np.array_equal(reloaded.vectors, full.vectors)
    assert np.array_equal(reloaded.int8.codes, full.int8.codes) and np.array_equal(reloaded.int8.scales, full.int8.scales)
    assert (reloaded.roots, reloaded.complete, len(reloaded)) == (full.roots, full.complete, 15)


@ON_TINY_VIT
def test_an_index_emptied_then_filled_again_reloads_every_photo(library):
    photos, index_dir, _ = library
    aside = photos.parent / "aside"
    photos.rename(aside)
    photos.mkdir()
    index(photos, index_dir)
    empty = load_index(index_dir)
    assert len(empty) == 0
    photos.rmdir()
    aside.rename(photos)
    index(photos, index_dir)
    reloaded, full = load_index(index_dir, empty), load_index(index_dir)
    assert len(full) > 0 and np.array_equal(reloaded.rowids, full.rowids) and reloaded.photos.paths == full.photos.paths


@ON_TINY_VIT
def test_photo_ids_outlive_the_removal_of_other_photos(served, library):
    client, photos = served
    ids = {hit["name"]: hit["id"] for hit in client.get("/api/search", params={"q": "猫", "top": 15}).json()["hits"]}
    first = min(ids, key=ids.get)
    (photos / first).unlink()
    index(photos, library[1])
    for name, photo_id in ids.items():
        if name != first:
            assert client.get(f"/photo/{photo_id}").content == (photos / name).read_bytes()
    for url in (f"/photo/{ids[first]}", f"/thumb/{ids[first]}", f"/api/similar/{ids[first]}"):
        assert client.get(url).status_code == 404


@ON_TINY_VIT
@CHUNKS
def test_a_renamed_photo_that_gets_a_removed_photos_rowid_is_read_anew(library, monkeypatch, chunk):
    monkeypatch.setattr(store, "CHANGES_CHUNK", chunk)
    photos, index_dir, _ = library
    before = load_index(index_dir)
    last = Path(before.photos.paths[-1])
    aside = last.parent.parent / last.name
    last.rename(aside)
    index(photos, index_dir)
    aside.rename(photos / f"renamed-{last.name}")  # same size and mtime, another name
    index(photos, index_dir)
    reloaded, full = load_index(index_dir, before), load_index(index_dir)
    assert full.rowids[-1] == before.rowids[-1]  # SQLite gave the removed last row's id to the renamed photo
    assert reloaded.photos.paths == full.photos.paths and reloaded.photos.paths[-1].endswith(f"renamed-{last.name}")


@ON_TINY_VIT
def test_requests_answer_from_the_loaded_index_while_another_request_reloads(library, monkeypatch):
    photos, index_dir, _ = library
    monkeypatch.setattr(Library, "RELOAD_WAIT", None)  # the request that noticed waits the reload out
    served = Library.open(index_dir, None, 1)
    before = served.current()
    (photos / "coffee_cup.jpg").unlink()
    index(photos, index_dir)
    reloading, finish = threading.Event(), threading.Event()
    load = Library._load

    def slow_load(self, signature):
        reloading.set()
        assert finish.wait(30)
        return load(self, signature)

    monkeypatch.setattr(Library, "_load", slow_load)
    reloaded = []
    reloader = threading.Thread(target=lambda: reloaded.append(served.current()))
    reloader.start()
    assert reloading.wait(30)
    assert served.current() is before  # not held up by the reload: the state committed before it
    finish.set()
    reloader.join(30)
    assert not reloader.is_alive() and len(reloaded[0].index) == len(before.index) - 1
    assert served.current() is reloaded[0] and served.reloads == 1


@ON_TINY_VIT
def test_the_request_that_notices_a_commit_answers_after_the_reload_wait_and_the_reload_goes_on(library, monkeypatch):
    photos, index_dir, _ = library
    monkeypatch.setattr(Library, "RELOAD_WAIT", 0.05)
    served = Library.open(index_dir, None, 1)
    before = served.current()
    (photos / "coffee_cup.jpg").unlink()
    index(photos, index_dir)
    finish = threading.Event()
    load = Library._load
    monkeypatch.setattr(Library, "_load", lambda self, signature: finish.wait(30) and load(self, signature))
    assert served.current() is before  # the reload is slow: the request that started it did not wait for it
    assert served.current() is before and served.reloads == 0
    finish.set()
    reloader = next(thread for thread in threading.enumerate() if thread.name == "cnclip-reload")
    reloader.join(30)  # it finishes on its own; no request waits for it
    after = served.current()
    assert served.reloads == 1 and len(after.index) == len(before.index) - 1


@ON_TINY_VIT
def test_a_commit_that_leaves_the_photos_alone_reads_no_row_and_keeps_the_search_backend(library, monkeypatch):
    photos, index_dir, _ = library
    served = Library.open(index_dir, None, 1)
    before = served.current()
    database = IndexDatabase(index_dir)
    database.start_run(str(photos))  # a run starts: a commit, the photos untouched
    database.close()
    read = []
    monkeypatch.setattr(IndexDatabase, "_changes", lambda self, previous: read.append(previous))
    after = served.current()
    assert served.reloads == 1 and read == []
    assert after.index.vectors is before.index.vectors and after.searcher.scan is before.searcher.scan
    assert before.index.complete and not after.index.complete  # what the runs say is read anew


@ON_TINY_VIT
def test_changes_by_any_writer_are_counted_and_an_index_without_the_count_is_compared_row_by_row(library):
    _, index_dir, _ = library
    before = load_index(index_dir)
    assert before.state is not None
    with contextlib.closing(sqlite3.connect(index_dir / INDEX_FILE)) as connection, connection:  # another program
        connection.execute("DELETE FROM photos WHERE rowid = ?", (int(before.rowids[0]),))
    counted = load_index(index_dir, before)
    assert counted.state != before.state and len(counted) == len(before) - 1
    with contextlib.closing(sqlite3.connect(index_dir / INDEX_FILE)) as connection, connection:  # an earlier version's
        for name in TRIGGER_NAMES.values():
            connection.execute(f"DROP TRIGGER {name}")
        connection.execute("DELETE FROM photos WHERE rowid = ?", (int(before.rowids[1]),))
    compared = load_index(index_dir, counted)
    assert compared.state is None and compared.photos.paths == load_index(index_dir).photos.paths == before.photos.paths[2:]


@ON_TINY_VIT
def test_an_index_rebuilt_with_as_many_photos_is_read_anew(library, tmp_path):
    photos, index_dir, bundle = library
    served = Library.open(index_dir, None, 1)
    before = served.current()
    other = tmp_path / "other"
    shutil.copytree(photos, other)
    for photo in sorted(other.iterdir()):
        photo.rename(photo.with_name(f"other-{photo.name}"))
    shutil.rmtree(index_dir)
    index(other, index_dir, bundle)  # as many photos and as many changes counted, other files
    after = served.current()
    assert len(after.index) == len(before.index) and after.index.state != before.index.state
    assert all(Path(path).name.startswith("other-") for path in after.index.photos.paths)
