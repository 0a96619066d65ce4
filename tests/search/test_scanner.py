"""A library named by URL (issue 27): listed and read through fsspec, on moto's S3 server on loopback, it gives the
index the rows the same photos give from a folder, notices what changed, and is served; what cannot work is refused
by name."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from click.testing import CliRunner
from starlette.testclient import TestClient

from converters.app.bundle import Bundle
from converters.cli import cli
from converters.console import is_url
from converters.errors import UserError
from converters.search.library import Library
from converters.search.scanner import RemoteReadError, find_photos_at, image_suffixes, library_root
from converters.search.serve import create_app
from converters.search.store import INDEX_FILE, load_index
from converters.search.updater import IndexUpdater
from tests.app.test_preprocess import write_jpeg_claiming
from tests.search.conftest import PHOTOS
from tests.search.helpers import assert_same_photos, s3_bucket, upload

REPO = Path(__file__).resolve().parents[2]
BUCKET, STAGE = "household-photos", "onnx-sim"
URL = f"s3://{BUCKET}/photos"
ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
BROKEN = ("album/empty.jpg", "album/huge.jpg", "album/truncated.jpg", "notes.png")
LEFT_OUT = ("album/.thumbs/cat.jpg", ".trash/cat.jpg", "readme.txt")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The shipped photos, a subfolder, four files that cannot be read (one a decompression bomb) and three that
    are not photos."""
    root = tmp_path_factory.mktemp("library") / "photos"
    shutil.copytree(PHOTOS, root)
    (root / "album").mkdir()
    shutil.copy(PHOTOS / "cat_chelsea.jpg", root / "album" / "cat.jpg")
    whole = (PHOTOS / "cat_chelsea.jpg").read_bytes()
    (root / "album" / "empty.jpg").write_bytes(b"")
    write_jpeg_claiming(root / "album" / "huge.jpg", 20_000, 20_000)
    (root / "album" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "notes.png").write_text("not an image")
    for name in LEFT_OUT:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PHOTOS / "cat_chelsea.jpg", root / name)
    return root


@pytest.fixture(scope="module")
def bucket(folder):
    with s3_bucket(BUCKET) as bucket:
        upload(bucket.client, folder, BUCKET, "photos")
        yield bucket.client


def update(index_dir, library, bundle_dir):
    with IndexUpdater(index_dir, Bundle.open(bundle_dir), STAGE) as updater:
        plan = updater.plan(library)
        return plan, updater.run(plan)


@ON_TINY_VIT
def test_a_library_on_s3_gives_the_rows_of_the_same_photos_in_a_folder(bucket, folder, tiny_bundle, tmp_path):
    _, on_disk = update(tmp_path / "local", folder, tiny_bundle)
    plan, on_s3 = update(tmp_path / "s3", f"{URL}/", tiny_bundle)
    assert plan.root == URL and all(found.path.startswith(f"{URL}/") for found in plan.to_embed)
    facts = assert_same_photos(tmp_path / "s3", URL, tmp_path / "local", str(folder))
    assert len(facts) == on_s3.added == on_disk.added
    assert not any(name in facts for name in LEFT_OUT)
    assert sorted(on_s3.skipped) == sorted(sentence.replace(str(folder), URL) for sentence in on_disk.skipped)
    assert len(on_s3.skipped) == len(BROKEN) and f"{URL}/album/empty.jpg is an empty file." in on_s3.skipped
    assert f"{URL}/album/huge.jpg is 400,000,000 pixels, above the limit" in " ".join(on_s3.skipped)


@ON_TINY_VIT
def test_a_second_run_embeds_only_what_changed_in_the_bucket(bucket, tiny_bundle, tmp_path):
    update(tmp_path / "index", URL, tiny_bundle)
    plan, _ = update(tmp_path / "index", URL, tiny_bundle)
    retried = [f"{URL}/{name}" for name in sorted(BROKEN)]  # what could not be read is tried again, as from a folder
    assert [found.path for found in plan.to_embed] == retried and plan.gone == []
    assert plan.unchanged == len(list(PHOTOS.glob("*.jpg"))) + 1
    bucket.put_object(Bucket=BUCKET, Key="photos/new/cat.jpg", Body=(PHOTOS / "cat_chelsea.jpg").read_bytes())
    bucket.put_object(Bucket=BUCKET, Key="photos/grass.jpg", Body=(PHOTOS / "cat_chelsea.jpg").read_bytes())  # replaced
    bucket.delete_object(Bucket=BUCKET, Key="photos/album/cat.jpg")
    try:
        plan, report = update(tmp_path / "index", URL, tiny_bundle)
        assert [found.path for found in plan.to_embed] == sorted([*retried, f"{URL}/grass.jpg", f"{URL}/new/cat.jpg"])
        assert plan.gone == [f"{URL}/album/cat.jpg"]
        assert (report.added, report.updated, report.removed) == (1, 1, 1)
    finally:
        bucket.put_object(Bucket=BUCKET, Key="photos/grass.jpg", Body=(PHOTOS / "grass.jpg").read_bytes())
        bucket.put_object(Bucket=BUCKET, Key="photos/album/cat.jpg", Body=(PHOTOS / "cat_chelsea.jpg").read_bytes())
        bucket.delete_object(Bucket=BUCKET, Key="photos/new/cat.jpg")


@ON_TINY_VIT
def test_an_emptied_bucket_drops_its_photos_and_an_empty_one_is_refused(bucket, tiny_bundle, tmp_path):
    bucket.put_object(Bucket=BUCKET, Key="later/cat.jpg", Body=(PHOTOS / "cat_chelsea.jpg").read_bytes())
    update(tmp_path / "index", f"s3://{BUCKET}/later", tiny_bundle)
    bucket.delete_object(Bucket=BUCKET, Key="later/cat.jpg")
    plan, report = update(tmp_path / "index", f"s3://{BUCKET}/later", tiny_bundle)
    assert plan.gone == [f"s3://{BUCKET}/later/cat.jpg"] and report.total == 0
    with pytest.raises(UserError, match=f"There are no photos at s3://{BUCKET}/never"):
        update(tmp_path / "other", f"s3://{BUCKET}/never", tiny_bundle)


@ON_TINY_VIT
def test_a_first_run_that_fails_leaves_no_index_and_a_failing_later_run_keeps_it(bucket, tiny_bundle, tmp_path):
    mistyped = f"s3://{BUCKET}/mistyped"
    with pytest.raises(UserError, match=f"There are no photos at {mistyped}"):
        update(tmp_path / "index", mistyped, tiny_bundle)
    assert not (tmp_path / "index" / INDEX_FILE).exists()
    with IndexUpdater(tmp_path / "index", Bundle.open(tiny_bundle), "onnx-int8") as updater:  # not tied to onnx-sim
        report = updater.run(updater.plan(URL))
    with pytest.raises(UserError):
        with IndexUpdater(tmp_path / "index", Bundle.open(tiny_bundle), "onnx-int8") as updater:
            updater.plan(mistyped)
    assert load_index(tmp_path / "index").artifact.stage == "onnx-int8" and len(load_index(tmp_path / "index")) == report.total > 0


@ON_TINY_VIT
def test_search_html_links_a_photo_on_s3_by_its_url(bucket, tiny_bundle, tmp_path):
    update(tmp_path / "index", URL, tiny_bundle)
    result = CliRunner().invoke(cli, ["search", "猫", "--index", str(tmp_path / "index"), "--html", str(tmp_path / "hits.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "hits.html").read_text()
    assert f'href="{URL}/' in page and "data:image/jpeg;base64," in page


@ON_TINY_VIT
def test_serve_shows_a_photo_from_s3_and_its_thumbnail(bucket, tiny_bundle, tmp_path):
    update(tmp_path / "index", URL, tiny_bundle)
    index = load_index(tmp_path / "index")
    photo_id = int(index.rowids[index.photos.paths.index(f"{URL}/cat_chelsea.jpg")])
    client = TestClient(create_app(Library.open(tmp_path / "index", None, 1)), base_url="http://localhost")
    photo = client.get(f"/photo/{photo_id}")
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
    assert photo.content == (PHOTOS / "cat_chelsea.jpg").read_bytes()
    thumbnail = client.get(f"/thumb/{photo_id}")
    assert thumbnail.status_code == 200 and thumbnail.content[:2] == b"\xff\xd8"
    bucket.delete_object(Bucket=BUCKET, Key="photos/cat_chelsea.jpg")  # gone from the bucket, still indexed
    try:
        assert client.get(f"/photo/{photo_id}").status_code == 404
    finally:
        bucket.put_object(Bucket=BUCKET, Key="photos/cat_chelsea.jpg", Body=(PHOTOS / "cat_chelsea.jpg").read_bytes())
    # A row no indexed root holds, of a photo that is there: a database edited by hand, or a bug.
    bucket.put_object(Bucket=BUCKET, Key="elsewhere/cat_chelsea.jpg", Body=(PHOTOS / "cat_chelsea.jpg").read_bytes())
    with sqlite3.connect(tmp_path / "index" / INDEX_FILE) as database:
        database.execute("UPDATE photos SET path = ? WHERE rowid = ?", (f"s3://{BUCKET}/elsewhere/cat_chelsea.jpg".encode(), photo_id))
    assert client.get(f"/photo/{photo_id}").status_code == 404 and client.get(f"/thumb/{photo_id}").status_code == 404


@ON_TINY_VIT
def test_a_file_url_is_the_local_folder_with_its_checks(tiny_bundle, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(PHOTOS / "cat_chelsea.jpg", folder / "cat.jpg")
    os.mkfifo(folder / "pipe.jpg")  # read through fsspec's local files, opening it would wait forever
    assert not is_url(folder.as_uri())
    with IndexUpdater(tmp_path / "index", Bundle.open(tiny_bundle), STAGE) as updater:
        plan = updater.plan(folder.as_uri())
    assert plan.root == str(folder.resolve()) and [found.path for found in plan.to_embed] == [str(folder / "cat.jpg")]
    assert plan.skipped == [f"{folder / 'pipe.jpg'}: not a regular file (a pipe, socket or device), left out."]


@ON_TINY_VIT
def test_a_bucket_that_stops_answering_is_a_502_and_stops_index_without_dropping_rows(bucket, tiny_bundle, tmp_path, monkeypatch):
    import s3fs

    update(tmp_path / "index", URL, tiny_bundle)
    index = load_index(tmp_path / "index")
    photo_id = int(index.rowids[index.photos.paths.index(f"{URL}/grass.jpg")])
    client = TestClient(create_app(Library.open(tmp_path / "index", None, 1)), base_url="http://localhost")
    bucket.put_object(Bucket=BUCKET, Key="photos/grass.jpg", Body=(PHOTOS / "cat_chelsea.jpg").read_bytes())  # changed
    try:
        with IndexUpdater(tmp_path / "index", Bundle.open(tiny_bundle), STAGE) as updater:
            plan = updater.plan(URL)
            monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing answers
            s3fs.S3FileSystem.clear_instance_cache()
            with pytest.raises(RemoteReadError, match="Cannot read .*Check the connection and the credentials"):
                updater.run(plan)
        assert f"{URL}/grass.jpg" in load_index(tmp_path / "index").photos.paths  # its old row is kept
        for route in ("photo", "thumb"):
            answer = client.get(f"/{route}/{photo_id}")
            assert answer.status_code == 502 and "Cannot read" in answer.json()["error"]
    finally:
        monkeypatch.undo()
        s3fs.S3FileSystem.clear_instance_cache()
        bucket.put_object(Bucket=BUCKET, Key="photos/grass.jpg", Body=(PHOTOS / "grass.jpg").read_bytes())


def test_a_url_names_the_root_its_listing_does():
    """The listing names keys without doubled slashes or dot folders; a root written with them would hold none."""
    assert library_root(f"s3://{BUCKET}//photos/./") == library_root(f"{URL}//") == URL


def test_a_file_url_of_another_machine_is_refused(tmp_path):
    result = CliRunner().invoke(cli, ["index", "file://nas/share/photos", "--index", str(tmp_path / "index")])
    assert result.exit_code == 2 and "names a folder on nas; mount it here" in result.output


def test_a_url_of_one_file_is_refused(bucket):
    with pytest.raises(UserError, match=f"{URL}/grass.jpg is a file: give the folder"):
        find_photos_at(f"{URL}/grass.jpg", image_suffixes())


@ON_TINY_VIT
def test_the_index_command_reads_a_bucket_and_says_why_when_it_cannot(bucket, tiny_bundle, tmp_path):
    command = [sys.executable, "-m", "converters", "index", URL, "--bundle", str(tiny_bundle), "--index", str(tmp_path / "index")]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{URL}: " in done.stderr and " added" in done.stderr
    nowhere = {**environment, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # the discard port: nothing listens
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=nowhere)
    assert refused.returncode != 0 and f"Cannot list {URL}:" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("url, said", [
    ("nosuch://x/photos", "Cannot open nosuch://x/photos: .*nosuch"),
    ("ftp://127.0.0.1:9/photos", "Cannot open ftp://127.0.0.1:9/photos: ConnectionRefusedError"),
    ("local:///tmp", "local:///tmp names this machine's own files: give the folder as a path"),
    ("http://127.0.0.1:9/photos", "http://127.0.0.1:9/photos is a web address"),
])
def test_an_odd_url_is_refused_by_name(url, said):
    with pytest.raises(UserError, match=said):
        library_root(url)


class UndatedFileSystem(MemoryFileSystem):
    """A filesystem whose listing gives sizes but no dates, as some object stores' do."""

    protocol = "undated"

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.replace("undated://", "memory://", 1))

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        found = super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=True, **kwargs)
        return {name: {"name": name, "size": info["size"], "type": info["type"]} for name, info in found.items()}


def test_a_listing_without_dates_is_refused_since_changes_could_not_be_told():
    fsspec.register_implementation("undated", UndatedFileSystem, clobber=True)
    UndatedFileSystem().pipe("/undated-library/cat.jpg", (PHOTOS / "cat_chelsea.jpg").read_bytes())
    try:
        with pytest.raises(UserError, match="gives no modification time .*cat.jpg"):
            find_photos_at("undated://undated-library", image_suffixes())
        dated = find_photos_at("memory://undated-library", image_suffixes())  # the same file, where the listing has a date
        assert [found.path for found in dated] == ["memory:///undated-library/cat.jpg"]
    finally:
        MemoryFileSystem().rm("/undated-library", recursive=True)
