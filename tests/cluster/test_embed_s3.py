"""`embed` of a library on S3 (moto's server on loopback): the driver lists the bucket, Ray's workers read from it, and
the index holds the rows a local `index` run gives the same photos from a folder."""

from __future__ import annotations

import pytest

from converters.app.bundle import Bundle
from converters.cluster.run import embed_and_merge
from converters.search.updater import IndexUpdater
from tests.cluster.conftest import BROKEN, ON_TINY_VIT, PHOTOS, STAGE
from tests.cluster.test_embed import OPTIONS
from tests.search.helpers import assert_same_photos, s3_bucket, upload

pytestmark = pytest.mark.cluster

BUCKET = "archive"
URL = f"s3://{BUCKET}/photos"


@pytest.fixture(scope="module")
def bucket_library(library):
    """The library uploaded to a bucket, whose address and credentials are in the environment while it lasts."""
    with s3_bucket(BUCKET) as client:
        upload(client, library, BUCKET, "photos")
        yield URL


@pytest.fixture(scope="module")
def cluster(bucket_library, cluster):
    """The nodes start once the bucket is there, so that they inherit its address and credentials."""
    return cluster


@ON_TINY_VIT
def test_the_cluster_reads_a_library_on_s3_into_the_rows_of_a_local_run(bucket_library, cluster, library, local_index, tiny_bundle, tmp_path):
    with IndexUpdater(tmp_path / "index", Bundle.open(tiny_bundle), STAGE) as updater:
        report = embed_and_merge(updater, updater.plan(bucket_library), tmp_path / "shards", OPTIONS)
    facts = assert_same_photos(tmp_path / "index", URL, local_index, str(library))  # Ray groups the batches its own way
    assert len(facts) == PHOTOS == report.update.added
    assert len(report.update.skipped) == len(BROKEN) and all(URL in sentence for sentence in report.update.skipped)
