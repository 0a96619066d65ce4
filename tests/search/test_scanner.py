"""A library named by URL (issue 27): listed and read through fsspec, on moto's S3 server on loopback, it gives the
index the rows the same photos give from a folder, notices what changed, and is served; what cannot work is refused
by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from starlette.testclient import TestClient

from converters.app.bundle import Bundle
from converters.errors import UserError
from converters.search.library import Library
from converters.search.scanner import find_photos_at, image_suffixes, library_root
from converters.search.serve import create_app
from converters.search.store import load_index
from converters.search.updater import IndexUpdater
from tests.app.test_preprocess import write_jpeg_claiming
from tests.search.conftest import PHOTOS
from tests.search.helpers import rows_by_place, s3_bucket, upload

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
    with s3_bucket(BUCKET) as client:
        upload(client, folder, BUCKET, "photos")
        yield client


def update(index_dir, library, bundle_dir):
    with IndexUpdater(index_dir, Bundle.open(bundle_dir), STAGE) as updater:
        plan = updater.plan(library)
        return plan, updater.run(plan)


@ON_TINY_VIT
def test_a_library_on_s3_gives_the_rows_of_the_same_photos_in_a_folder(bucket, folder, tiny_bundle, tmp_path):
    _, on_disk = update(tmp_path / "local", folder, tiny_bundle)
    plan, on_s3 = update(tmp_path / "s3", f"{URL}/", tiny_bundle)
    assert plan.root == URL and all(found.path.startswith(f"{URL}/") for found in plan.to_embed)
    facts, vectors = rows_by_place(tmp_path / "s3", URL)
    local_facts, local_vectors = rows_by_place(tmp_path / "local", str(folder))
    assert facts == local_facts and len(facts) == on_s3.added == on_disk.added
    assert not any(name in facts for name in LEFT_OUT)
    for place, vector in vectors.items():  # the same pixels; batches grouped in another order
        assert float(vector @ local_vectors[place]) / float(np.linalg.norm(vector) * np.linalg.norm(local_vectors[place])) >= 0.99999
    assert sorted(on_s3.skipped) == sorted(sentence.replace(str(folder), URL) for sentence in on_disk.skipped)
    assert len(on_s3.skipped) == len(BROKEN) and f"{URL}/album/empty.jpg is an empty file." in on_s3.skipped
    assert f"{URL}/album/huge.jpg is 400,000,000 pixels, above the limit" in " ".join(on_s3.skipped)


@ON_TINY_VIT
def test_a_second_run_embeds_only_what_changed_in_the_bucket(bucket, tiny_bundle, tmp_path):
    update(tmp_path / "index", URL, tiny_bundle)
    plan, _ = update(tmp_path / "index", URL, tiny_bundle)
    retried = [f"{URL}/{name}" for name in sorted(BROKEN)]  # what could not be read is tried again, as from a folder
    assert [found.path for found in plan.to_embed] == retried and plan.gone == [] and plan.unchanged > 0
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


@ON_TINY_VIT
def test_the_index_command_reads_a_bucket_and_says_why_when_it_cannot(bucket, tiny_bundle, tmp_path):
    command = [sys.executable, "-m", "converters", "index", URL, "--bundle", str(tiny_bundle), "--index", str(tmp_path / "index")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{URL}: " in done.stderr and " added" in done.stderr
    nowhere = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # the discard port: nothing listens
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300, env=nowhere)
    assert refused.returncode != 0 and f"Cannot list {URL}:" in refused.stderr and "Traceback" not in refused.stderr


def test_nothing_at_the_url_and_an_unknown_protocol_are_refused_by_name(bucket):
    with pytest.raises(UserError, match=f"There is nothing at s3://{BUCKET}/nowhere"):
        find_photos_at(f"s3://{BUCKET}/nowhere", image_suffixes())
    with pytest.raises(UserError, match="Cannot open nosuch://x/photos: .*nosuch"):
        library_root("nosuch://x/photos")


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
    with pytest.raises(UserError, match="gives no modification time .*cat.jpg"):
        find_photos_at("undated://undated-library", image_suffixes())
    dated = find_photos_at("memory://undated-library", image_suffixes())  # the same file, where the listing has a date
    assert [found.path for found in dated] == ["memory:///undated-library/cat.jpg"]
