"""The driver's attempts, with Ray's side played by a stand-in that writes some shards and then loses the rest:
each attempt embeds only what the shards lack, the last one gives up, and a photo in no shard stops the merge."""

from __future__ import annotations

import pyarrow as pa
import pytest
import ray

from converters.app.bundle import Bundle
from converters.cluster import run
from converters.cluster.pipeline import ClusterOptions, Throughput
from converters.cluster.run import ATTEMPTS, embed_and_merge
from converters.cluster.shards import shard_columns, write_shard
from converters.search.schema import INDEX_FILE
from converters.search.stamp import ArtifactStamp
from converters.search.store import load_index
from converters.search.updater import IndexUpdater, embed_here
from tests.cluster.conftest import ON_TINY_VIT, STAGE


class LossyCluster:
    """Stands in for `embed_files`: attempt i writes the shard of its first `writes[i]` photos, then loses the rest
    (Ray's WorkerCrashedError) unless it wrote them all. Remembers how many photos each attempt was given."""

    def __init__(self, writes: list[int], finish: bool = True):
        self.writes, self.finish, self.given = writes, finish, []

    def __call__(self, files, bundle, stage, shards, options, on_shard):
        count = self.writes[len(self.given)]
        self.given.append(len(files))
        rows, _ = embed_here(bundle, bundle.embedder(stage), files[:count])
        if rows:
            write_shard(shards, pa.table(shard_columns(rows, [], ArtifactStamp.of(bundle, stage).id, "node")))
        if count < len(files) or not self.finish:
            raise ray.exceptions.WorkerCrashedError()
        return Throughput(photos=count, seconds=1.0)


def merge(tmp_path, tiny_bundle, photos, cluster: LossyCluster, monkeypatch):
    monkeypatch.setattr(run, "embed_files", cluster)
    with IndexUpdater(tmp_path / "index", Bundle.open(tiny_bundle), STAGE) as updater:
        return embed_and_merge(updater, updater.plan(photos), tmp_path / "shards", ClusterOptions())


@ON_TINY_VIT
def test_an_attempt_embeds_only_what_the_shards_lack(tiny_bundle, six_photos, tmp_path, monkeypatch, capsys):
    cluster = LossyCluster([2, 3, 1])
    report = merge(tmp_path, tiny_bundle, six_photos, cluster, monkeypatch)
    assert cluster.given == [6, 4, 1]
    assert "attempt 3 of 3 continues from the shards" in capsys.readouterr().err
    assert (report.update.added, report.from_shards, report.embedded.photos) == (6, 0, 1)
    assert len(load_index(tmp_path / "index")) == 6


@ON_TINY_VIT
def test_a_failed_attempt_that_wrote_every_shard_is_not_followed_by_another(tiny_bundle, six_photos, tmp_path,
                                                                           monkeypatch, capsys):
    cluster = LossyCluster([6], finish=False)
    report = merge(tmp_path, tiny_bundle, six_photos, cluster, monkeypatch)
    assert cluster.given == [6] and "attempt 2" in capsys.readouterr().err
    assert (report.update.added, report.embedded.photos) == (6, 0)


@ON_TINY_VIT
def test_the_last_attempt_gives_up_and_keeps_its_shards(tiny_bundle, six_photos, tmp_path, monkeypatch):
    cluster = LossyCluster([1] * ATTEMPTS)
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        merge(tmp_path, tiny_bundle, six_photos, cluster, monkeypatch)
    assert cluster.given == [6 - i for i in range(ATTEMPTS)]
    assert len(list((tmp_path / "shards").iterdir())) == ATTEMPTS  # for the next run
    assert not (tmp_path / "index" / INDEX_FILE).exists()  # a first run that merged nothing leaves no index


@ON_TINY_VIT
def test_a_photo_in_no_shard_stops_the_merge(tiny_bundle, six_photos, tmp_path, monkeypatch):
    """An attempt that says it is done without a shard for every photo (a bug on Ray's side or ours) merges nothing."""
    class Forgetful(LossyCluster):
        def __call__(self, files, *args):
            super().__call__(files[:-1], *args)
            return Throughput(photos=len(files), seconds=1.0)

    with pytest.raises(RuntimeError, match="^1 photos are in no shard after the run"):
        merge(tmp_path, tiny_bundle, six_photos, Forgetful([5]), monkeypatch)
    assert not (tmp_path / "index" / INDEX_FILE).exists()
