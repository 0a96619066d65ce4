"""The index file and the incremental indexer, on the tiny ViT bundle and the shipped photos."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image

from converters.app.bundle import Bundle
from converters.data import PARITY_SET_DIR
from converters.search import store
from converters.search.schema import remove_database
from converters.search.stamp import ArtifactMismatchError, ArtifactStamp
from converters.search.photos import wall_seconds
from converters.search.store import INDEX_FILE, IndexFileError, load_index
from converters.search.updater import IndexBusyError, IndexUpdater
from converters.search.vectors import normalize_rows
from tests.search.helpers import indexed_rows, integrity

PHOTOS = PARITY_SET_DIR / "images"
PHOTO_COUNT = len(list(PHOTOS.iterdir()))
ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    shutil.copytree(PHOTOS, folder / "album")
    return folder


def update(index_dir: Path, photos: Path, bundle: Bundle, stage: str = "onnx-sim", **options):
    with IndexUpdater(index_dir, bundle, stage) as updater:
        return updater.run(updater.plan(photos), **options)


def embed_file(bundle: Bundle, path: Path) -> np.ndarray:
    return normalize_rows(bundle.embedder("onnx-sim").embed_images(bundle.pixels([Image.open(path)])))[0]


@ON_TINY_VIT
def test_index_holds_every_photo_and_lists_the_unreadable_ones(tiny_bundle, photos, tmp_path):
    bundle = Bundle.open(tiny_bundle)
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "notes.png").write_text("not an image")
    truncated = (PHOTOS / "astronaut.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    report = update(tmp_path / "index", photos, bundle)

    assert (report.added, report.total) == (PHOTO_COUNT, PHOTO_COUNT)
    assert len(report.skipped) == 3
    for name in ("empty.jpg", "notes.png", "truncated.jpg"):
        assert sum(name in reason for reason in report.skipped) == 1
    index = load_index(tmp_path / "index")
    assert index.complete and index.artifact.id == bundle.artifact_id("onnx-sim") and index.artifact.stage == "onnx-sim"
    assert index.artifact.model == bundle.model and index.roots == [str(photos.resolve())]
    assert sorted(Path(p).name for p in index.photos.paths) == sorted(p.name for p in PHOTOS.glob("*.jpg"))
    row = index.photos.paths.index(str(photos.resolve() / "album" / "cat_chelsea.jpg"))
    stat = os.stat(index.photos.paths[row])
    assert (index.photos.size[row], index.photos.mtime_ns[row]) == (stat.st_size, stat.st_mtime_ns)
    np.testing.assert_allclose(index.vectors[row], embed_file(bundle, PHOTOS / "cat_chelsea.jpg"), atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(index.vectors[:].astype(np.float32), axis=1), 1, atol=1e-3)


@ON_TINY_VIT
def test_reindex_embeds_only_new_and_changed_files_and_drops_deleted_ones(tiny_bundle, photos, tmp_path):
    bundle = Bundle.open(tiny_bundle)
    update(tmp_path / "index", photos, bundle)
    album = photos / "album"
    shutil.copy(album / "grass.jpg", album / "new.jpg")
    shutil.copy(album / "rocket_launch.jpg", album / "cat_chelsea.jpg")  # changed content, same name
    (album / "gravel.jpg").unlink()

    report = update(tmp_path / "index", photos, bundle)

    assert (report.added, report.updated, report.removed, report.unchanged, report.total) == (1, 1, 1, PHOTO_COUNT - 2, PHOTO_COUNT)
    index = load_index(tmp_path / "index")
    paths = [Path(p).name for p in index.photos.paths]
    assert "gravel.jpg" not in paths and paths.count("cat_chelsea.jpg") == 1 and "new.jpg" in paths
    changed = index.vectors[paths.index("cat_chelsea.jpg")]
    np.testing.assert_allclose(changed, embed_file(bundle, PHOTOS / "rocket_launch.jpg"), atol=1e-3)

    again = update(tmp_path / "index", photos, bundle)
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, PHOTO_COUNT)


@ON_TINY_VIT
def test_other_formats_and_the_first_frame_of_a_gif(tiny_bundle, tmp_path):
    bundle = Bundle.open(tiny_bundle)
    source = Image.open(PHOTOS / "coffee_cup.jpg")
    folder = tmp_path / "formats"
    folder.mkdir()
    for suffix in ("png", "webp", "bmp", "jpeg"):
        source.save(folder / f"cup.{suffix}")
    frames = [source.convert("P"), Image.new("P", source.size, 7)]
    frames[0].save(folder / "cup.gif", save_all=True, append_images=frames[1:])
    (folder / "readme.txt").write_text("not a photo")

    report = update(tmp_path / "index", folder, bundle)

    assert report.total == 5 and report.skipped == []
    index = load_index(tmp_path / "index")
    gif = index.photos.paths.index(str(folder.resolve() / "cup.gif"))
    np.testing.assert_allclose(index.vectors[gif], embed_file(bundle, folder / "cup.gif"), atol=1e-3)


@ON_TINY_VIT
def test_heic_is_indexed_when_pillow_heif_is_installed(tiny_bundle, tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    folder = tmp_path / "heic"
    folder.mkdir()
    Image.open(PHOTOS / "coffee_cup.jpg").save(folder / "cup.heic")
    assert update(tmp_path / "index", folder, Bundle.open(tiny_bundle)).total == 1


@ON_TINY_VIT
def test_photo_time_is_the_exif_capture_time_else_the_mtime(tiny_bundle, tmp_path):
    folder = tmp_path / "dated"
    folder.mkdir()
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2021:06:01 12:30:00"
    Image.open(PHOTOS / "grass.jpg").save(folder / "exif.jpg", exif=exif)
    shutil.copy(PHOTOS / "gravel.jpg", folder / "plain.jpg")
    modified = datetime(2019, 3, 4, 5, 6, 7)
    os.utime(folder / "plain.jpg", (modified.timestamp(), modified.timestamp()))

    update(tmp_path / "index", folder, Bundle.open(tiny_bundle))

    index = load_index(tmp_path / "index")
    row_of = {Path(p).name: row for row, p in enumerate(index.photos.paths)}
    assert index.photos.time[row_of["exif.jpg"]] == wall_seconds(datetime(2021, 6, 1, 12, 30))
    assert index.photos.captured[row_of["exif.jpg"]]
    assert index.photos.time[row_of["plain.jpg"]] == wall_seconds(modified)
    assert not index.photos.captured[row_of["plain.jpg"]]


@ON_TINY_VIT
def test_an_index_made_by_another_artifact_is_refused(tiny_bundle, photos, tmp_path):
    bundle = Bundle.open(tiny_bundle)
    update(tmp_path / "index", photos, bundle, "onnx-sim")
    with pytest.raises(ArtifactMismatchError) as refused:
        update(tmp_path / "index", photos, bundle, "onnx-int8")
    message = str(refused.value)
    assert "/ onnx-sim (" in message and "onnx-int8" in message and "--index" in message
    assert load_index(tmp_path / "index").artifact.stage == "onnx-sim"


@ON_TINY_VIT
def test_one_index_keeps_several_folders_apart(tiny_bundle, tmp_path):
    bundle = Bundle.open(tiny_bundle)
    for name, files in (("a", ["grass.jpg", "gravel.jpg"]), ("b", ["astronaut.jpg"])):
        (tmp_path / name).mkdir()
        for file in files:
            shutil.copy(PHOTOS / file, tmp_path / name / file)
        update(tmp_path / "index", tmp_path / name, bundle)
    (tmp_path / "a" / "grass.jpg").unlink()

    report = update(tmp_path / "index", tmp_path / "a", bundle)

    assert (report.removed, report.total) == (1, 2)
    index = load_index(tmp_path / "index")
    assert sorted(Path(p).name for p in index.photos.paths) == ["astronaut.jpg", "gravel.jpg"]
    assert index.roots == [str((tmp_path / "a").resolve()), str((tmp_path / "b").resolve())]


@ON_TINY_VIT
def test_a_second_indexer_on_the_same_index_is_refused(tiny_bundle, photos, tmp_path):
    bundle = Bundle.open(tiny_bundle)
    with IndexUpdater(tmp_path / "index", bundle, "onnx-sim"):
        with pytest.raises(IndexBusyError, match="Another `index` run"):
            IndexUpdater(tmp_path / "index", bundle, "onnx-sim").__enter__()


@ON_TINY_VIT
def test_an_interrupted_run_keeps_its_checkpoints_and_a_rerun_finishes(tiny_bundle, photos, tmp_path):
    bundle = Bundle.open(tiny_bundle)
    batches = []

    def interrupt_after_two_batches(done: int) -> None:
        batches.append(done)
        if len(batches) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        update(tmp_path / "index", photos, bundle, on_progress=interrupt_after_two_batches, batch_size=4)

    partial = load_index(tmp_path / "index")
    assert len(partial) == 8 and not partial.complete
    report = update(tmp_path / "index", photos, bundle, batch_size=4)
    assert (report.added, report.unchanged, report.total) == (PHOTO_COUNT - 8, 8, PHOTO_COUNT)
    assert load_index(tmp_path / "index").complete


@ON_TINY_VIT
def test_a_batch_interrupted_in_its_write_is_rolled_back_and_the_rest_kept(tiny_bundle, photos, tmp_path, monkeypatch):
    bundle = Bundle.open(tiny_bundle)
    writes = []
    real_write = store.IndexDatabase.write

    def write_then_interrupt(self, *args, **kwargs):
        writes.append(1)
        if len(writes) == 3:  # the gone-files write, one batch, then Ctrl-C inside the second batch's write
            with self.transaction():
                self.connection.execute("DELETE FROM photos")
                raise KeyboardInterrupt
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(store.IndexDatabase, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        update(tmp_path / "index", photos, bundle, batch_size=5)
    monkeypatch.undo()
    partial = load_index(tmp_path / "index")
    assert len(partial) == 5 and not partial.complete
    assert integrity(tmp_path / "index") == "ok"


@ON_TINY_VIT
def test_a_process_killed_at_any_moment_leaves_a_whole_database_and_a_rerun_finishes(tiny_bundle, tmp_path):
    """SIGKILL (a power cut, the OOM killer) mid-run: the database passes integrity_check and keeps every committed batch."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for copy in range(20):
        for photo in PHOTOS.glob("*.jpg"):
            shutil.copy(photo, photos / f"{copy:02d}-{photo.name}")
    command = [sys.executable, "-m", "converters", "index", str(photos), "--bundle", str(tiny_bundle),
               "--index", str(tmp_path / "index"), "--batch-size", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if indexed_rows(tmp_path / "index") >= 10:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert integrity(tmp_path / "index") == "ok"
    kept = len(load_index(tmp_path / "index"))
    assert 10 <= kept < 20 * PHOTO_COUNT, "the run was not killed mid-way; nothing to test"
    report = update(tmp_path / "index", photos, Bundle.open(tiny_bundle))
    assert (report.unchanged, report.total) == (kept, 20 * PHOTO_COUNT) and load_index(tmp_path / "index").complete


@pytest.fixture
def saved_index(tmp_path) -> Path:
    """A small index written straight from vectors, for the database tests."""
    folder = tmp_path / "index"
    vectors = normalize_rows(np.random.default_rng(0).standard_normal((50, 16))).astype(np.float16)
    database = store.IndexDatabase(folder, create_for=ArtifactStamp("0" * 64, "tiny", "onnx-sim", 16, "/bundle"))
    run = database.start_run("/photos")
    rows = [store.PhotoRow(f"/photos/{i}.jpg", i, i, i, True, 4, 3, 1, v) for i, v in enumerate(vectors)]
    database.write(run, "/photos", rows, [], ["/photos/bad.jpg is truncated"], added=50)
    database.finish_run(run)
    database.close()
    return folder


def test_the_database_round_trips(saved_index):
    index = load_index(saved_index)
    assert len(index) == 50 and index.photos.paths[7] == "/photos/7.jpg" and index.photos.size[7] == 7
    assert index.complete and index.roots == ["/photos"]
    assert index.vectors.dtype == np.float16 and index.int8.codes.shape == (16, 50)
    dequantized = index.int8.codes.T.astype(np.float32) * index.int8.scales[:, None]
    np.testing.assert_allclose(dequantized, index.vectors, atol=0.01)
    status = store.IndexDatabase(saved_index).status()
    assert status["photos"] == 50 and status["last_run"]["added"] == 50 and status["skipped"] == ["/photos/bad.jpg is truncated"]


def test_remove_database_removes_it_and_its_journal_and_nothing_else(saved_index):
    (saved_index / "index.lock").touch()
    database = store.IndexDatabase(saved_index)
    database.status()  # an open connection in WAL mode keeps -wal and -shm beside the file
    assert {f"{INDEX_FILE}-wal", f"{INDEX_FILE}-shm"} <= {f.name for f in saved_index.iterdir()}
    with sqlite3.connect(saved_index / INDEX_FILE):  # another connection keeps them once the first closes
        database.close()
        remove_database(database.file)
    assert [f.name for f in saved_index.iterdir()] == ["index.lock"]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_database_is_one_error(saved_index, damage):
    file = saved_index / INDEX_FILE
    data = file.read_bytes()
    file.write_bytes(b"not a database at all" * 100 if damage == "garbage" else data[: len(data) // 3])
    with pytest.raises(IndexFileError, match="unusable") as error:
        load_index(saved_index)
    assert str(file) in str(error.value) and "rebuild" in str(error.value)


@pytest.mark.parametrize("sql, why", [
    ("UPDATE meta SET value = '99' WHERE key = 'version'", "version 99"),
    ("UPDATE meta SET value = '{\"id\": 1}' WHERE key = 'artifact'", "artifact stamp is malformed"),
    ("UPDATE meta SET value = json_set(value, '$.dim', 100000000000) WHERE key = 'artifact'", "artifact stamp is malformed"),
    ("UPDATE photos SET embedding = zeroblob(6) WHERE path = CAST('/photos/3.jpg' AS BLOB)", "not 16 float16 values long"),
    ("ALTER TABLE photos ADD COLUMN secret TEXT", "columns"),
    ("DROP TABLE runs", "columns"),
])
def test_a_crafted_database_is_refused_before_its_rows_are_used(saved_index, sql, why):
    with sqlite3.connect(saved_index / INDEX_FILE) as connection:
        connection.execute(sql)
    with pytest.raises(IndexFileError, match=why):
        load_index(saved_index)


def test_an_index_of_the_earlier_single_file_format_is_refused_with_how_to_rebuild(tmp_path):
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "index.cnclip").write_bytes(b"CNCLIPIX" + bytes(100))
    with pytest.raises(IndexFileError, match="earlier version.*Delete it and run `python -m converters index` again"):
        load_index(tmp_path / "index")


def test_a_missing_index_says_how_to_make_one(tmp_path):
    with pytest.raises(IndexFileError, match="python -m converters index PHOTOS --bundle BUNDLE"):
        load_index(tmp_path / "nowhere")


@settings(max_examples=100, deadline=None)
@given(key=st.sampled_from(["format", "version", "artifact", "created_by"]),
       value=st.one_of(st.text(max_size=30), st.integers().map(str), st.just('{"id": "x", "model": "m", "stage": "s", "dim": -1, "bundle": ""}'),
                       st.just("{}"), st.just("[]"), st.just("null")),
       blob=st.binary(max_size=40))
def test_fuzzed_databases_load_or_fail_with_one_error(key, value, blob):
    with tempfile.TemporaryDirectory() as scratch:
        fuzz_database(Path(scratch) / "index", key, value, blob)


def fuzz_database(folder: Path, key: str, value: str, blob: bytes) -> None:
    database = store.IndexDatabase(folder, create_for=ArtifactStamp("0" * 64, "t", "onnx-sim", 4, "/b"))
    run = database.start_run("/p")
    database.write(run, "/p", [store.PhotoRow("/p/0.jpg", 1, 1, 1, False, 1, 1, 0, np.ones(4, np.float16) / 2)], [], [])
    database.close()
    with sqlite3.connect(folder / INDEX_FILE) as connection:
        connection.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
        connection.execute("UPDATE photos SET embedding = ?", (blob,))
    try:
        index = load_index(folder)
        assert index.vectors.shape == (len(index), index.artifact.dim)
    except IndexFileError:
        pass
