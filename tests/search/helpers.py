"""What the search tests share: reading an index database from outside, as another process would, and a bucket on
a loopback S3 server for libraries named by URL."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from converters.search.store import INDEX_FILE


def indexed_rows(index_dir: Path) -> int:
    """Photos committed so far; 0 while there is no database yet."""
    if not (index_dir / INDEX_FILE).exists():
        return 0
    try:
        with sqlite3.connect(index_dir / INDEX_FILE, timeout=0.1) as connection:
            return connection.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
    except sqlite3.Error:
        return 0


def integrity(index_dir: Path) -> str:
    with sqlite3.connect(index_dir / INDEX_FILE) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


class Bucket(NamedTuple):
    client: object  # boto3's
    outage: Callable[[], contextlib.AbstractContextManager[None]]  # while it lasts, nothing listens at the address


@contextlib.contextmanager
def s3_bucket(name: str = "household-photos") -> Iterator[Bucket]:
    """An empty bucket on moto's S3 server on loopback; its address and credentials are in this process's
    environment while it lasts, for the processes it starts too (a Ray node started meanwhile)."""
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()

    @contextlib.contextmanager
    def outage() -> Iterator[None]:
        nonlocal server
        server.stop()
        server._server.server_close()  # refused, not left waiting in the listen queue
        try:
            yield
        finally:  # moto keeps the buckets in this process: they are back with the server
            server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
            server.start()

    settings = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec keeps filesystems by their options, not by the environment
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket=name)
        yield Bucket(client, outage)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def upload(client, folder: Path, bucket: str, prefix: str) -> None:
    """Every file under `folder` to s3://bucket/prefix/…, at the same relative paths."""
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{file.relative_to(folder).as_posix()}", Body=file.read_bytes())


def rows_by_place(index_dir: Path, root: str) -> tuple[dict[str, tuple], dict[str, np.ndarray]]:
    """Each photo's facts that do not depend on where the library is kept (its size, capture time if any, width,
    height, orientation) and its embedding, by its path under `root`."""
    with sqlite3.connect(index_dir / INDEX_FILE) as connection:
        photos = connection.execute("SELECT path, size, time, captured, width, height, orientation, embedding FROM photos").fetchall()
    facts, vectors = {}, {}
    for path, size, time, captured, width, height, orientation, embedding in photos:
        place = os.fsdecode(path).removeprefix(root.rstrip("/") + "/")
        facts[place] = (size, time if captured else None, width, height, orientation)
        vectors[place] = np.frombuffer(embedding, "<f2").astype(np.float32)
    return facts, vectors


def assert_same_photos(index_dir: Path, root: str, other_dir: Path, other_root: str) -> dict[str, tuple]:
    """Both indexes hold the same photos under their roots: the same facts (`rows_by_place`), and embeddings within
    the fp32 stages' parity target, cosine ≥ 0.99999 (the photos may have been grouped into other model calls).
    Returns the facts."""
    facts, vectors = rows_by_place(index_dir, root)
    other_facts, other_vectors = rows_by_place(other_dir, other_root)
    assert facts == other_facts
    for place, vector in vectors.items():
        other = other_vectors[place]
        cosine = float(vector @ other) / float(np.linalg.norm(vector) * np.linalg.norm(other))
        assert cosine >= 0.99999, (place, cosine)
    return facts
