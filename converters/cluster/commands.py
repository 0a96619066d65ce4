"""`embed`: the `index` of a library too large for one machine, on a Ray cluster.

    ray start --head --port 6379                         # on the head; `ray start --address HEAD:6379` on each worker
    python -m converters embed /mnt/photos --bundle artifacts/ViT-B-16 --stage onnx-int8 --ray HEAD:6379
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import click

from converters.app.bundle import DEFAULT_STAGE, Bundle
from converters.app.specs import STAGE_NAMES, runtime_of
from converters.console import bundle_option, library_argument, say
from converters.errors import UserError
from converters.search.updater import DEFAULT_BATCH_SIZE, DEFAULT_INDEX_DIR, IndexUpdater

SHARDS_DIR = "shards"
# Addresses Ray resolves itself: the cluster `ray start` runs on this machine, or one it starts.
RAY_STARTS_OR_FINDS = ("auto", "local")


@click.command("embed")
@library_argument
@bundle_option("Bundle directory, e.g. artifacts/ViT-B-16, at the same path on every node", required=True,
               old_name="--artifacts")
@click.option("--stage", type=click.Choice(STAGE_NAMES), default=DEFAULT_STAGE, show_default=True,
              help="Which of the bundle's artifacts embeds the photos; an existing index needs its own.")
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_INDEX_DIR,
              show_default=True, help="Index directory (env CNCLIP_INDEX), the one `index` and `search` use.")
@click.option("--ray", "address", is_flag=False, flag_value=RAY_STARTS_OR_FINDS[0], default=None, metavar="[ADDRESS]",
              help="The Ray cluster: HOST:PORT of its head, or bare --ray for the one `ray start` runs here "
              "(default: a Ray started for this run on this machine alone).")
@click.option("--shards", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the embedded rows wait until they are merged (default: INDEX/shards); a re-run continues from them.")
@click.option("--batch-size", type=click.IntRange(1), default=DEFAULT_BATCH_SIZE, show_default=True,
              help="Photos per read task and per model call.")
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True,
              help="Embedding actors, each opening the bundle once (0: one per node).")
@click.option("--embed-cpus", type=click.FloatRange(0.1), default=1.0, show_default=True,
              help="CPUs each embedding actor reserves; also its inference threads.")
@click.option("--embed-gpus", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="The share of a GPU each embedding actor reserves (0.5: two actors a GPU); its onnx-* stage then "
              "runs on onnxruntime-gpu's CUDA provider (onnx-fp16 is meant for it). 0: CPUs only. Never run on a "
              "GPU by this project's tests.")
@click.option("--shard-rows", type=click.IntRange(1), default=1024, show_default=True,
              help="Photos per shard: at most this many are embedded again after the driver is stopped.")
def embed_command(photos: Path | str, bundle: Path, stage: str, index_dir: Path, address: str | None, shards: Path | None,
                  batch_size: int, workers: int, embed_cpus: float, embed_gpus: float, shard_rows: int) -> None:
    """Embed the photos under PHOTOS on a Ray cluster into the index `index` writes.

    The same files as `index` are embedded (new, or changed in size or date), by the same artifact, into the
    same rows; results are kept in Parquet shards and merged into the index at the end, so a stopped run
    continues where it was. PHOTOS is a folder every node sees at the same path, or a URL fsspec reads
    (s3://bucket/photos, with s3fs and credentials on every node); the bundle must be at the same path on every node.
    """
    from converters.cluster.pipeline import ClusterOptions
    from converters.cluster.run import describe_throughput, embed_and_merge

    if embed_gpus and runtime_of(stage) != "onnxruntime":
        raise UserError(f"--embed-gpus runs an onnx-* stage on the GPU; --stage {stage} runs in {runtime_of(stage)}.")
    options = ClusterOptions(batch_size, workers, embed_cpus, embed_gpus, read_cpus=min(1.0, embed_cpus), shard_rows=shard_rows)
    with IndexUpdater(index_dir, Bundle.open(bundle), stage) as updater:
        # Listed before Ray starts (some seconds): a mistyped library is said at once, and one whose photos are all
        # in the index or in shards needs no cluster.
        plan = updater.plan(photos)
        say(f"{plan.root}: {len(plan.to_embed)} to embed, {plan.unchanged} unchanged, {len(plan.gone)} gone since last time")
        result = embed_and_merge(updater, plan, shards or index_dir / SHARDS_DIR, options,
                                 cluster=lambda: _ray_cluster(address))
    for line in describe_throughput(result.embedded):
        say(line)
    update = result.update
    say(f"{update.index_file}: {update.total} photos ({update.added} added, {update.updated} updated, "
        f"{update.removed} removed, {update.unchanged} unchanged, {len(update.skipped)} skipped; "
        f"{result.from_shards} from an earlier run's shards)")
    for reason in update.skipped:
        say(f"skipped: {reason}")


@contextlib.contextmanager
def _ray_cluster(address: str | None) -> Iterator[None]:
    import ray

    if address not in (None, *RAY_STARTS_OR_FINDS) and "://" not in address:  # a head's HOST:PORT, not ray://
        _require_listening(address)
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _require_listening(address: str) -> None:
    """Ray waits minutes on an address where nothing listens, then exits without saying why."""
    try:
        where = urlsplit(f"//{address}")  # HOST:PORT, [IPv6]:PORT
        socket.create_connection((where.hostname or "127.0.0.1", where.port), timeout=10).close()
    except (OSError, ValueError, TypeError) as error:
        raise UserError(
            f"No Ray cluster answers at --ray {address} ({error}). Give the HOST:PORT of a head started with "
            "`ray start --head --port PORT`, bare --ray for the one `ray start` runs on this machine, or no --ray "
            "for a Ray of this run's own."
        ) from None
