"""A library of a few hundred small photos (a few broken), a local index of it to compare with, and a two-node
Ray cluster on loopback, started and stopped by the tests."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from converters.app.bundle import Bundle
from converters.search.store import INDEX_FILE
from converters.search.updater import IndexUpdater

REPO = Path(__file__).resolve().parents[2]
PHOTOS = 240
BROKEN = ("empty.jpg", "notes.png", "truncated.jpg")
STAGE = "onnx-sim"
ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
# Loopback only: Ray turns 127.0.0.1 into this machine's outward address unless told it runs on one machine
# (read when ray is imported; the `embed` subprocesses inherit it).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
NODE = {"num_cpus": 1, "object_store_memory": 128 * 2**20, "node_ip_address": "127.0.0.1"}


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("library") / "photos"
    rng = random.Random(27)
    for i in range(PHOTOS):
        folder = root / f"album{i % 3}" / ("sub" if i % 7 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        size = (rng.randint(24, 64), rng.randint(24, 64))
        image = Image.fromarray(np.uint8(rng.getrandbits(8) + np.arange(size[0] * size[1] * 3).reshape(size[1], size[0], 3) % 251))
        exif = Image.Exif()
        if i % 4 == 0:
            exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = f"2024:0{1 + i % 9}:1{i % 10} 12:00:00"
        if i % 5 == 0:
            exif[ExifTags.Base.Orientation] = 1 + i % 8
        image.save(folder / f"photo{i:04d}.jpg", exif=exif)
    (root / "album0" / "empty.jpg").write_bytes(b"")
    (root / "album1" / "notes.png").write_text("not an image")
    whole = (root / "album2" / "photo0002.jpg").read_bytes()
    (root / "album2" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    return root


@pytest.fixture
def six_photos(tmp_path) -> Path:
    """A folder of six small photos: shards made by hand, without a cluster."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        Image.new("RGB", (40, 30), (40 * i, 20, 200 - 30 * i)).save(photos / f"p{i}.jpg")
    return photos


@pytest.fixture(scope="module")
def local_index(library, tiny_bundle, tmp_path_factory) -> Path:
    """What a local `index` run makes of the library."""
    index_dir = tmp_path_factory.mktemp("local") / "index"
    with IndexUpdater(index_dir, Bundle.open(tiny_bundle), STAGE) as updater:
        updater.run(updater.plan(library))
    return index_dir


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node on loopback, one CPU each; the worker is `cluster.worker`."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=dict(NODE))
    cluster.worker = cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    # The workers import this worktree's package, as the test process does.
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def rows(index_dir: Path) -> tuple[list[tuple], np.ndarray, list[str]]:
    """The photos' facts in write order, their embeddings, and the skipped sentences, read as another process would."""
    with sqlite3.connect(index_dir / INDEX_FILE) as connection:
        photos = connection.execute("SELECT * FROM photos ORDER BY rowid").fetchall()
        skipped = [row[0] for row in connection.execute("SELECT reason FROM skipped ORDER BY rowid")]
    vectors = np.array([np.frombuffer(row[-1], "<f2") for row in photos]).reshape(len(photos), -1)
    return [row[:-1] for row in photos], vectors, skipped


def assert_same_index(cluster_index: Path, local_index: Path) -> None:
    facts, vectors, skipped = rows(cluster_index)
    local_facts, local_vectors, local_skipped = rows(local_index)
    assert facts == local_facts and skipped == local_skipped
    assert len(facts) == PHOTOS and len(skipped) == len(BROKEN)
    # onnx-sim is an fp32 stage: its parity target is cosine ≥ 0.99999; batches made by Ray Data may group
    # photos differently from a local run, which may move a float16 value by one step.
    a, b = (v.astype(np.float32) / np.linalg.norm(v.astype(np.float32), axis=1, keepdims=True) for v in (vectors, local_vectors))
    cosine = np.sum(a * b, axis=1)
    assert cosine.min() >= 0.99999, (cosine.min(), np.abs(vectors.astype(np.float32) - local_vectors).max(), vectors.shape)
