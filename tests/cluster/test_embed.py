"""`embed` on a two-node Ray cluster gives the rows a local `index` run gives, through a lost worker node and
an interrupted driver."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from converters.app.bundle import Bundle
from converters.cli import cli
from converters.errors import UserError
from converters.search.updater import IndexUpdater
from converters.cluster.pipeline import ClusterOptions
from converters.cluster.run import embed_and_merge
from tests.cluster.conftest import BROKEN, NODE, ON_TINY_VIT, PHOTOS, REPO, STAGE, assert_same_index

pytestmark = pytest.mark.cluster

# Half a CPU for each actor and each read task: one of each fits on a one-CPU node.
OPTIONS = ClusterOptions(batch_size=16, workers=2, embed_cpus=0.5, read_cpus=0.5, shard_rows=48)


def embed(index_dir, library, bundle_dir, shards, on_shard=lambda shard: None):
    with IndexUpdater(index_dir, Bundle.open(bundle_dir), STAGE) as updater:
        return embed_and_merge(updater, updater.plan(library), shards, OPTIONS, on_shard)


def shard_paths(shard) -> list[bytes]:
    return pq.read_table(shard, columns=["path"]).column("path").to_pylist()


@ON_TINY_VIT
def test_the_embed_command_on_two_nodes_writes_the_rows_of_a_local_run(cluster, library, local_index, tiny_bundle, tmp_path):
    command = [sys.executable, "-m", "converters", "embed", library, "--bundle", tiny_bundle, "--stage", STAGE,
               "--index", tmp_path / "index", "--ray", cluster.address, "--workers", "2", "--embed-cpus", "0.5",
               "--shard-rows", "64"]
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{PHOTOS} added" in result.stderr and f"{len(BROKEN)} skipped" in result.stderr
    assert "photos/s" in result.stderr and "node " in result.stderr
    assert_same_index(tmp_path / "index", local_index)
    assert not list((tmp_path / "index" / "shards").glob("*.parquet"))  # merged, then removed


@ON_TINY_VIT
def test_losing_the_worker_node_mid_run_loses_and_duplicates_nothing(cluster, library, local_index, tiny_bundle, tmp_path):
    written = []

    def kill_worker_after_the_first_shard(shard):
        written.extend(shard_paths(shard))
        if cluster.worker is not None:
            cluster.remove_node(cluster.worker)
            cluster.worker = None

    try:
        report = embed(tmp_path / "index", library, tiny_bundle, tmp_path / "shards", kill_worker_after_the_first_shard)
    finally:
        if cluster.worker is None:
            cluster.worker = cluster.add_node(**NODE)
            cluster.wait_for_nodes()
    assert len(written) == len(set(written)) == PHOTOS + len(BROKEN)  # each file embedded into exactly one shard
    assert report.update.added == PHOTOS
    assert_same_index(tmp_path / "index", local_index)


@ON_TINY_VIT
def test_an_interrupted_driver_resumes_without_embedding_again_what_its_shards_hold(
    cluster, library, local_index, tiny_bundle, tmp_path
):
    first, second = [], []

    def stop_after_two_shards(shard):
        first.extend(shard_paths(shard))
        if len(first) >= 2 * OPTIONS.shard_rows:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed(tmp_path / "index", library, tiny_bundle, tmp_path / "shards", stop_after_two_shards)
    report = embed(tmp_path / "index", library, tiny_bundle, tmp_path / "shards", lambda shard: second.extend(shard_paths(shard)))

    assert report.from_shards == len(first) and report.embedded.photos == len(second)
    assert not set(first) & set(second) and len(first) + len(second) == PHOTOS + len(BROKEN)
    assert_same_index(tmp_path / "index", local_index)


@ON_TINY_VIT
def test_a_run_whose_shards_hold_every_photo_merges_them_without_a_cluster(cluster, library, local_index, tiny_bundle, tmp_path):
    written = []

    def stop_after_the_last_shard(shard):
        written.extend(shard_paths(shard))
        if len(written) == PHOTOS + len(BROKEN):
            raise KeyboardInterrupt  # every photo embedded, none merged

    with pytest.raises(KeyboardInterrupt):
        embed(tmp_path / "index", library, tiny_bundle, tmp_path / "shards", stop_after_the_last_shard)

    def no_cluster():
        raise AssertionError("the cluster was reached though the shards hold every photo")

    with IndexUpdater(tmp_path / "index", Bundle.open(tiny_bundle), STAGE) as updater:
        report = embed_and_merge(updater, updater.plan(library), tmp_path / "shards", OPTIONS, cluster=no_cluster)
    assert report.from_shards == len(written) and report.embedded.photos == 0
    assert_same_index(tmp_path / "index", local_index)


@ON_TINY_VIT
def test_an_unchanged_library_is_listed_and_done_without_a_cluster(library, local_index, tiny_bundle, tmp_path):
    shutil.copytree(local_index, tmp_path / "index")
    unchanged = library / "album0" / "sub"  # no unreadable file, which every run tries again
    # Nothing listens at the discard port: a run that started Ray before listing would wait to connect, then fail.
    arguments = ["embed", str(unchanged), "--bundle", str(tiny_bundle), "--stage", STAGE, "--index", str(tmp_path / "index"),
                 "--ray", "127.0.0.1:9"]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    assert f"0 to embed, {len(list(unchanged.glob('*.jpg')))} unchanged" in result.output
    changed = CliRunner().invoke(cli, [*arguments[:1], str(library), *arguments[2:]])  # its unreadable files are tried again
    assert isinstance(changed.exception, UserError) and "No Ray cluster answers at --ray 127.0.0.1:9" in str(changed.exception)


@ON_TINY_VIT
def test_a_node_whose_bundle_is_not_the_drivers_artifact_is_refused_by_name(cluster, library, tiny_bundle, tmp_path):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle_dir)
    with IndexUpdater(tmp_path / "index", Bundle.open(bundle_dir), STAGE) as updater:
        plan = updater.plan(library)
        # Another conversion lands at the bundle's path after the driver opened it: the nodes read the new one.
        manifest = json.loads((bundle_dir / "manifest.json").read_text())
        entry = manifest["artifacts"][f"visual.{STAGE}"]["files"][0]
        entry["sha256"] = ("1" if entry["sha256"].startswith("0") else "0") + entry["sha256"][1:]
        (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(UserError) as refused:
            embed_and_merge(updater, plan, tmp_path / "shards", OPTIONS)
    assert str(refused.value).startswith("Node ") and f"The bundle at {bundle_dir.resolve()} is " in str(refused.value)
    assert f"not artifact {updater.stamp.id[:12]}" in str(refused.value) and "DataContext" not in str(refused.value)
    assert not list((tmp_path / "shards").glob("*.parquet"))


@ON_TINY_VIT
def test_gpu_actors_wait_for_no_gpu_and_refuse_an_onnxruntime_without_cuda(cluster, library, tiny_bundle, tmp_path):
    """Without GPUs in the cluster Ray Data would wait for them for ever; a node that has one (declared: there is
    none here) gets the actors, and its CPU-only onnxruntime is refused by the node's name, not run on the CPU."""
    options = dataclasses.replace(OPTIONS, workers=0, embed_gpus=1)
    with pytest.raises(UserError, match="no node of the cluster has that much of a GPU"):
        with IndexUpdater(tmp_path / "index", Bundle.open(tiny_bundle), STAGE) as updater:
            embed_and_merge(updater, updater.plan(library), tmp_path / "shards", options)
    gpu_node = cluster.add_node(**NODE, num_gpus=1)
    cluster.wait_for_nodes()
    try:
        with pytest.raises(UserError) as refused:
            with IndexUpdater(tmp_path / "index", Bundle.open(tiny_bundle), STAGE) as updater:
                embed_and_merge(updater, updater.plan(library), tmp_path / "shards", options)
    finally:
        cluster.remove_node(gpu_node)
    assert f"Node {gpu_node.node_id[:12]}: onnxruntime" in str(refused.value)
    assert "has no CUDAExecutionProvider" in str(refused.value) and "DataContext" not in str(refused.value)
    assert not list((tmp_path / "shards").glob("*.parquet"))


@ON_TINY_VIT
def test_gpu_actors_need_an_onnx_stage(library, tiny_bundle, tmp_path):
    arguments = ["embed", str(library), "--bundle", str(tiny_bundle), "--stage", "ncnn-fp16", "--embed-gpus", "1",
                 "--index", str(tmp_path / "index")]
    result = CliRunner().invoke(cli, arguments)
    assert isinstance(result.exception, UserError), result.output
    assert "--stage ncnn-fp16 runs in ncnn" in str(result.exception)
    assert not (tmp_path / "index").exists()
