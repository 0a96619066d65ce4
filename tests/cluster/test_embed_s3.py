"""`embed` of a library on S3 (moto's server on loopback): the driver lists the bucket, Ray's workers read from it, and
the index holds the rows a local `index` run gives the same photos from a folder."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pyarrow.parquet as pq
import pytest

from converters.app.bundle import Bundle
from converters.cluster.run import embed_and_merge
from converters.search.scanner import RemoteReadError
from converters.search.updater import IndexUpdater
from tests.cluster.conftest import BROKEN, ON_TINY_VIT, PHOTOS, STAGE
from tests.cluster.test_embed import OPTIONS
from tests.search.helpers import assert_same_photos, s3_bucket, upload

pytestmark = pytest.mark.cluster

BUCKET = "archive"
URL = f"s3://{BUCKET}/photos"


@pytest.fixture(scope="module")
def bucket(library):
    """The library uploaded to a bucket (at URL), whose address and credentials are in the environment while it lasts."""
    with s3_bucket(BUCKET) as bucket:
        upload(bucket.client, library, BUCKET, "photos")
        yield bucket


@pytest.fixture(scope="module")
def cluster(bucket, cluster):
    """The nodes start once the bucket is there, so that they inherit its address and credentials."""
    return cluster


@ON_TINY_VIT
def test_the_cluster_reads_a_library_on_s3_into_the_rows_of_a_local_run(cluster, library, local_index, tiny_bundle, tmp_path):
    with IndexUpdater(tmp_path / "index", Bundle.open(tiny_bundle), STAGE) as updater:
        report = embed_and_merge(updater, updater.plan(URL), tmp_path / "shards", OPTIONS)
    facts = assert_same_photos(tmp_path / "index", URL, local_index, str(library))  # Ray groups the batches its own way
    assert len(facts) == PHOTOS == report.update.added
    assert len(report.update.skipped) == len(BROKEN) and all(URL in sentence for sentence in report.update.skipped)


@ON_TINY_VIT
def test_a_bucket_that_stops_answering_stops_embed_by_name_and_the_next_run_resumes(bucket, cluster, library, local_index,
                                                                                   tiny_bundle, tmp_path, capfd):
    outage, written = contextlib.ExitStack(), []

    def stop_the_bucket_after_the_first_shard(shard):
        if not written:
            outage.enter_context(bucket.outage())
        # Batches already read when the bucket stopped still arrive and are saved before the error does.
        written.extend(pq.read_table(shard, columns=["path"]).column("path").to_pylist())

    with outage, pytest.raises(RemoteReadError, match=f"Cannot read {URL}/.*Check the connection") as refused:
        with IndexUpdater(tmp_path / "index", Bundle.open(tiny_bundle), STAGE) as updater:
            # A shard a batch: the bucket stops while most photos are still to be read.
            embed_and_merge(updater, updater.plan(URL), tmp_path / "shards", replace(OPTIONS, shard_rows=OPTIONS.batch_size),
                            stop_the_bucket_after_the_first_shard)
    assert "attempt 2" not in capfd.readouterr().err  # stopped at once: trying again cannot help
    assert "DataContext" not in str(refused.value)  # Ray Data's advice on its retries is not the user's to follow
    with IndexUpdater(tmp_path / "index", Bundle.open(tiny_bundle), STAGE) as updater:
        report = embed_and_merge(updater, updater.plan(URL), tmp_path / "shards", OPTIONS)
    assert report.from_shards == len(written) > 0 and report.update.added == PHOTOS
    assert_same_photos(tmp_path / "index", URL, local_index, str(library))
