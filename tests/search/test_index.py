"""The index file and the incremental indexer, on the tiny ViT bundle and the shipped photos."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image

from converters.app.bundle import Bundle
from converters.data import PARITY_SET_DIR
from converters.search import store, updater
from converters.search.stamp import ArtifactMismatchError, ArtifactStamp
from converters.search.store import INDEX_FILE, IndexFileError, load_index, wall_seconds
from converters.search.updater import IndexBusyError, IndexUpdater
from converters.search.vectors import normalize_rows

PHOTOS = PARITY_SET_DIR / "images"
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

    assert (report.added, report.total) == (14, 14)
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

    assert (report.added, report.updated, report.removed, report.unchanged, report.total) == (1, 1, 1, 12, 14)
    index = load_index(tmp_path / "index")
    paths = [Path(p).name for p in index.photos.paths]
    assert "gravel.jpg" not in paths and paths.count("cat_chelsea.jpg") == 1 and "new.jpg" in paths
    changed = index.vectors[paths.index("cat_chelsea.jpg")]
    np.testing.assert_allclose(changed, embed_file(bundle, PHOTOS / "rocket_launch.jpg"), atol=1e-3)

    again = update(tmp_path / "index", photos, bundle)
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 14)


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
    assert (report.added, report.unchanged, report.total) == (6, 8, 14)
    assert load_index(tmp_path / "index").complete


@ON_TINY_VIT
def test_periodic_checkpoints_are_written_during_a_run(tiny_bundle, photos, tmp_path, monkeypatch):
    saves = []
    real_save = updater.save_index

    def recording_save(file, artifact, roots, photos, parts, complete):
        saves.append((len(photos.paths), complete))
        real_save(file, artifact, roots, photos, parts, complete)

    monkeypatch.setattr(updater, "save_index", recording_save)
    update(tmp_path / "index", photos, Bundle.open(tiny_bundle), batch_size=5, checkpoint_seconds=0)
    # A checkpoint after the first batch; later ones only once 10x the last save's time has passed.
    assert saves[0] == (5, False) and saves[-1] == (14, True)


@ON_TINY_VIT
def test_a_save_interrupted_midway_leaves_the_old_index_whole(tiny_bundle, photos, tmp_path, monkeypatch):
    bundle = Bundle.open(tiny_bundle)
    update(tmp_path / "index", photos, bundle)
    before = (tmp_path / "index" / INDEX_FILE).read_bytes()
    shutil.copy(PHOTOS / "grass.jpg", photos / "album" / "new.jpg")
    real_write = store._write_section

    def write_then_interrupt(handle, section):
        described = real_write(handle, section)
        if section.name == "codes":
            raise KeyboardInterrupt  # Ctrl-C halfway through the new file
        return described

    monkeypatch.setattr(store, "_write_section", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        update(tmp_path / "index", photos, bundle)

    assert (tmp_path / "index" / INDEX_FILE).read_bytes() == before
    assert len(load_index(tmp_path / "index")) == 14
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == [INDEX_FILE, "index.lock"]


@ON_TINY_VIT
def test_a_process_killed_midway_through_a_save_leaves_the_old_index_whole(tiny_bundle, photos, tmp_path):
    update(tmp_path / "index", photos, Bundle.open(tiny_bundle))
    before = (tmp_path / "index" / INDEX_FILE).read_bytes()
    shutil.copy(PHOTOS / "grass.jpg", photos / "album" / "new.jpg")
    # The child dies without any clean-up, as on a power cut or kill -9, after writing part of the file.
    script = textwrap.dedent(f"""
        import os
        from converters.app.bundle import Bundle
        from converters.search import store, updater
        real_write = store._write_section
        def write_then_die(handle, section):
            described = real_write(handle, section)
            if section.name == "codes":
                handle.flush()
                os._exit(9)
            return described
        store._write_section = write_then_die
        with updater.IndexUpdater({str(tmp_path / "index")!r}, Bundle.open({str(tiny_bundle)!r}), "onnx-sim") as run:
            run.run(run.plan({str(photos)!r}))
    """)
    child = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2])
    assert child.returncode == 9
    assert (tmp_path / "index" / INDEX_FILE).read_bytes() == before
    assert len(list((tmp_path / "index").glob(f".{INDEX_FILE}.*.tmp"))) == 1

    report = update(tmp_path / "index", photos, Bundle.open(tiny_bundle))
    assert (report.added, report.total) == (1, 15)
    assert not list((tmp_path / "index").glob(f".{INDEX_FILE}.*.tmp"))


@pytest.fixture
def saved_index(tmp_path) -> Path:
    """A small index written straight from vectors, for the file-format tests."""
    folder = tmp_path / "index"
    vectors = normalize_rows(np.random.default_rng(0).standard_normal((50, 16)))
    photos = store.PhotoFacts(
        [f"/photos/{i}.jpg" for i in range(50)], *(np.arange(50, dtype=np.int64) for _ in range(3)), np.ones(50, bool)
    )
    stamp = ArtifactStamp("0" * 64, "tiny", "onnx-sim", 16, "/bundle")
    store.save_index(folder / INDEX_FILE, stamp, ["/photos"], photos, [(vectors, None)], complete=True)
    return folder


def test_the_file_round_trips(saved_index):
    index = load_index(saved_index)
    assert len(index) == 50 and index.photos.paths[7] == "/photos/7.jpg" and index.photos.size[7] == 7
    assert index.vectors.dtype == np.float16 and index.int8.codes.shape == (16, 50)
    dequantized = index.int8.codes.T.astype(np.float32) * index.int8.scales[:, None]
    np.testing.assert_allclose(dequantized, index.vectors, atol=0.01)


def test_a_truncated_index_is_detected(saved_index):
    file = saved_index / INDEX_FILE
    data = file.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 20, 0):
        file.write_bytes(data[:cut])
        with pytest.raises(IndexFileError, match="truncated") as error:
            load_index(saved_index)
        assert str(file) in str(error.value) and "rebuild" in str(error.value)


def test_a_corrupt_section_is_detected_by_its_sha256(saved_index):
    file = saved_index / INDEX_FILE
    data = bytearray(file.read_bytes())
    header = store._read_header(open(file, "rb"), file, len(data))[0]
    for section in header["sections"]:
        damaged = data.copy()
        damaged[section["offset"]] ^= 0xFF
        file.write_bytes(bytes(damaged))
        with pytest.raises(IndexFileError, match=f"section '{section['name']}' fails its sha256 check"):
            load_index(saved_index)


def test_a_damaged_header_or_another_file_is_detected(saved_index):
    file = saved_index / INDEX_FILE
    data = bytearray(file.read_bytes())
    data[-60] ^= 0xFF  # inside the JSON header
    file.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="header fails its sha256 check"):
        load_index(saved_index)
    file.write_bytes(b"PK\x03\x04" + bytes(200))
    with pytest.raises(IndexFileError, match="not a cnclip photo index"):
        load_index(saved_index)


def test_a_missing_index_says_how_to_make_one(tmp_path):
    with pytest.raises(IndexFileError, match="python -m converters index PHOTOS --artifacts BUNDLE"):
        load_index(tmp_path / "nowhere")


def rewrite_header(folder: Path, edit) -> None:
    """Change the header of an index file and re-seal it with a valid sha256, as a crafted file would be."""
    file = folder / INDEX_FILE
    data = file.read_bytes()
    length, _, magic = store.TRAILER.unpack(data[-store.TRAILER.size :])
    body_start = len(data) - store.TRAILER.size - length
    header = json.loads(data[body_start : len(data) - store.TRAILER.size])
    edit(header)
    body = json.dumps(header).encode()
    file.write_bytes(data[:body_start] + body + store.TRAILER.pack(len(body), hashlib.sha256(body).digest(), magic))


def section(header: dict, name: str) -> dict:
    return next(s for s in header["sections"] if s["name"] == name)


@pytest.mark.parametrize("edit, why", [
    (lambda h: section(h, "size").update(dtype="object"), "section size is object"),
    (lambda h: section(h, "scales").update(shape=[-50]), "whole numbers"),
    (lambda h: h.update(count="50"), "whole numbers"),
    (lambda h: h["artifact"].pop("stage"), "malformed"),
    (lambda h: h.update(sections="all of them"), "malformed"),
    (lambda h: h["sections"].pop(), "sections"),
])
def test_a_crafted_header_with_valid_checksums_is_refused(saved_index, edit, why):
    rewrite_header(saved_index, edit)
    with pytest.raises(IndexFileError, match=why) as error:
        load_index(saved_index)
    assert "rebuild" in str(error.value)


def test_a_sparse_file_declaring_gigabytes_is_refused_before_allocating(saved_index):
    """60 GiB of int8 codes declared, the file made that large by a hole that holds nothing on disk."""
    count = 60 * 2**30 // 16

    def huge(header: dict) -> None:
        header["count"] = count
        for s in header["sections"]:
            s["shape"] = [{"count": count, "dim": 16}.get(axis, s["shape"][i]) for i, axis in enumerate(store.SECTIONS[s["name"]][1])]
            s["bytes"] = int(np.prod(s["shape"])) * np.dtype(s["dtype"]).itemsize

    rewrite_header(saved_index, huge)
    file = saved_index / INDEX_FILE
    data = file.read_bytes()
    length = store.TRAILER.unpack(data[-store.TRAILER.size :])[0]
    tail = len(data) - store.TRAILER.size - length
    with open(file, "wb") as handle:  # the sections, a 1 TiB hole, then the header and trailer
        handle.write(data[:tail])
        handle.seek(2**40)
        handle.write(data[tail:])
    with pytest.raises(IndexFileError, match="holds .* on disk"):
        load_index(saved_index)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.lists(st.integers(0, 20), min_size=1, max_size=4),
       value=st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.text(max_size=8),
                       st.lists(st.integers(-5, 2**40), max_size=3), st.just("object"), st.just({})))
def test_fuzzed_headers_load_or_fail_with_one_error(tmp_path_factory, where, value):
    folder = tmp_path_factory.mktemp("fuzz") / "index"
    vectors = normalize_rows(np.random.default_rng(0).standard_normal((5, 4)))
    photos = store.PhotoFacts([f"/p/{i}.jpg" for i in range(5)], *(np.arange(5, dtype=np.int64) for _ in range(3)), np.ones(5, bool))
    store.save_index(folder / INDEX_FILE, ArtifactStamp("0" * 64, "t", "onnx-sim", 4, "/b"), ["/p"], photos, [(vectors, None)], True)

    def mutate(header: dict) -> None:
        node = header
        for step in where[:-1]:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            child = node[keys[step % len(keys)]] if keys else None
            if not isinstance(child, (dict, list)) or not child:
                break
            node = child
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        node[keys[where[-1] % len(keys)]] = value

    rewrite_header(folder, mutate)
    try:
        index = load_index(folder)
        index.vectors[: len(index)]
    except IndexFileError:
        pass
