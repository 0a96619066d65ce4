"""A shard that is damaged on disk, or made by another artifact, is refused before a row reaches the index."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from converters.app.bundle import Bundle
from converters.search.scanner import find_photos, image_suffixes
from converters.search.store import load_index
from converters.search.updater import IndexUpdater, embed_here
from tests.cluster.conftest import ON_TINY_VIT, STAGE
from converters.cluster.pipeline import ClusterOptions
from converters.cluster.run import embed_and_merge
from converters.cluster.shards import ShardError, as_shard, shard_columns, write_shard


def truncate(table: pa.Table, shard):
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def garble(table: pa.Table, shard):
    data = bytearray(shard.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = bytes(64)
    shard.write_bytes(bytes(data))


def with_embeddings(change):
    def rewrite(table: pa.Table, shard):
        blobs = [None if b is None else change(np.frombuffer(b, "<f2")).tobytes() for b in table.column("embedding").to_pylist()]
        pq.write_table(table.set_column(table.schema.get_field_index("embedding"), "embedding", pa.array(blobs, pa.binary())), shard)
    return rewrite


def other_artifact(table: pa.Table, shard):
    column = pa.array(["0" * 64] * table.num_rows, pa.string())
    pq.write_table(table.set_column(table.schema.get_field_index("artifact"), "artifact", column), shard)


DAMAGE = {
    "truncated": (truncate, "Parquet cannot read it"),
    "garbled": (garble, "cannot be merged"),
    "wrong dim": (with_embeddings(lambda v: v[:-1]), "values, the index's artifact makes"),
    "not finite": (with_embeddings(lambda v: np.where(np.arange(v.size) == 0, np.float16("nan"), v).astype("<f2")), "not a unit vector"),
    "another artifact": (other_artifact, "holds embeddings of artifact 000000000000"),
}


@ON_TINY_VIT
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_shard_is_refused_before_merging(damage, tiny_bundle, six_photos, tmp_path):
    photos = six_photos
    bundle = Bundle.open(tiny_bundle)
    files = find_photos(photos, image_suffixes(), [])
    rows, _ = embed_here(bundle, bundle.embedder(STAGE), files)
    with IndexUpdater(tmp_path / "index", bundle, STAGE) as updater:
        table = as_shard(pa.table(shard_columns(rows, [], updater.stamp.id, "node")))
        shard = write_shard(tmp_path / "shards", table)
        change, why = DAMAGE[damage]
        change(table, shard)
        with pytest.raises(ShardError) as refused:
            embed_and_merge(updater, updater.plan(photos), tmp_path / "shards", ClusterOptions())
    assert str(shard) in str(refused.value) and why in str(refused.value)
    assert "Delete that shard and run `embed` again" in str(refused.value)
    assert len(load_index(tmp_path / "index")) == 0


@ON_TINY_VIT
def test_a_whole_shard_merges_without_the_cluster(tiny_bundle, six_photos, tmp_path):
    """The check of the damage tests can pass: the same shard, undamaged, is merged (no Ray work is left to do)."""
    photos = six_photos
    bundle = Bundle.open(tiny_bundle)
    rows, _ = embed_here(bundle, bundle.embedder(STAGE), find_photos(photos, image_suffixes(), []))
    with IndexUpdater(tmp_path / "index", bundle, STAGE) as updater:
        write_shard(tmp_path / "shards", pa.table(shard_columns(rows, [], updater.stamp.id, "node")))
        report = embed_and_merge(updater, updater.plan(photos), tmp_path / "shards", ClusterOptions())
    assert (report.update.added, report.from_shards, report.embedded.photos) == (6, 6, 0)
    assert len(load_index(tmp_path / "index")) == 6
