"""The Ray Data pipeline: files → read and preprocess (CPU tasks) → embed (an actor pool) → shards on the driver.

The photos are read where the tasks run, so every node sees the library under the same paths (a shared
mount), or reads it at the same URL (a bucket; scanner.py). Only the results travel back: a few bytes of
facts and 2·dim bytes of embedding per photo, which the driver writes as shards (shards.py). Rows are made by the functions a local `index` run uses
(`read_batch`, `photo_rows`), so a row embedded here is the row `index` would have written.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
from tqdm import tqdm

from converters.app.bundle import Bundle
from converters.cluster.shards import as_shard, shard_columns, write_shard
from converters.errors import UserError
from converters.search.scanner import FoundFile, PhotoRead
from converters.search.stamp import ArtifactStamp
from converters.search.updater import photo_rows, read_batch


@dataclass(frozen=True)
class ClusterOptions:
    batch_size: int = 16  # photos per read task and per model call
    workers: int = 0  # embedding actors; 0: one per alive node
    embed_cpus: float = 1.0  # CPUs each actor reserves (and inference threads, rounded up)
    embed_gpus: float = 0.0  # the share of a GPU each actor reserves (Ray's num_gpus, at most 1); 0: CPUs only
    read_cpus: float = 1.0  # CPUs each read task reserves
    shard_rows: int = 1024  # files per shard: what an interrupted driver loses at most


@dataclass
class Throughput:
    photos: int = 0
    seconds: float = 0.0
    per_node: Counter = field(default_factory=Counter)


def read_stage(batch: dict[str, np.ndarray], bundle: Bundle) -> dict[str, np.ndarray]:
    """Decode and preprocess a batch with the bundle's own transform; an unreadable file keeps its sentence."""
    files = [FoundFile(os.fsdecode(p), int(s), int(m)) for p, s, m in zip(batch["path"], batch["size"], batch["mtime_ns"])]
    read, skipped = read_batch(files, bundle)
    readable = {found.path: photo for found, photo in read}
    reasons = iter(skipped)  # read_batch names the unreadable files in their order
    blank = np.zeros((3, bundle.resolution, bundle.resolution), np.float32)
    photos = [readable.get(found.path) for found in files]
    return {
        "path": batch["path"], "size": batch["size"], "mtime_ns": batch["mtime_ns"],
        "pixels": np.stack([blank if p is None else p.pixels for p in photos]),
        "taken": np.array(["" if p is None or p.taken is None else p.taken.isoformat() for p in photos], dtype=object),
        "width": np.array([0 if p is None else p.width for p in photos], np.int32),
        "height": np.array([0 if p is None else p.height for p in photos], np.int32),
        "orientation": np.array([0 if p is None else p.orientation for p in photos], np.int8),
        "skipped": np.array(["" if p is not None else next(reasons) for p in photos], dtype=object),
    }


class EmbedActor:
    """One per worker: opens the bundle once and embeds batch after batch with `photo_rows`."""

    def __init__(self, bundle_dir: str, stage: str, artifact: str, threads: int, gpu: bool):
        self.node, self.artifact, self.refused = ray.get_runtime_context().get_node_id(), artifact, None
        try:
            bundle = Bundle.open(bundle_dir)
            mine = ArtifactStamp.of(bundle, stage)
            if mine.id != artifact:  # another copy of the bundle on this node, with other files
                raise UserError(f"The bundle at {bundle_dir} is {mine.describe()}, not artifact {artifact[:12]}.")
            self.embedder = bundle.embedder(stage, threads, gpu)
        except UserError as error:
            # Raised here, Ray Data would start the actor again and again, then report only the error's text in an
            # ActorDiedError; raised from the first batch it reaches the driver as itself, and no retry is made.
            self.refused = f"Node {self.node[:12]}: {error}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.refused is not None:
            raise UserError(self.refused)  # a new one each time: Ray Data appends its advice to the one raised
        read, skipped = [], []
        for i, raw in enumerate(batch["path"]):
            found = FoundFile(os.fsdecode(raw), int(batch["size"][i]), int(batch["mtime_ns"][i]))
            if batch["skipped"][i]:
                skipped.append((found, batch["skipped"][i]))
                continue
            taken = datetime.fromisoformat(batch["taken"][i]) if batch["taken"][i] else None
            photo = PhotoRead(batch["pixels"][i], taken, int(batch["width"][i]), int(batch["height"][i]),
                              int(batch["orientation"][i]))
            read.append((found, photo))
        return shard_columns(photo_rows(read, self.embedder), skipped, self.artifact, self.node)


def gpu_actors_fitting(nodes: list[dict], gpus_each: float) -> int:
    """How many actors of `gpus_each` GPUs the nodes hold, counted in Ray's units of 1/10,000 (a float floor
    division would start one too few: 1 // 0.2 == 4.0)."""
    each = round(gpus_each * 10_000)
    return sum(round(node["Resources"].get("GPU", 0) * 10_000) // each for node in nodes)


def embed_files(
    files: list[FoundFile], bundle: Bundle, stage: str, shards: Path, options: ClusterOptions,
    on_shard: Callable[[Path], None] = lambda shard: None,
) -> Throughput:
    """Embed `files` on the connected Ray cluster, writing a shard every `options.shard_rows` files."""
    alive = [node for node in ray.nodes() if node["Alive"]]
    if options.embed_gpus:
        fitting = gpu_actors_fitting(alive, options.embed_gpus)
        if not fitting:  # Ray Data would wait for them for ever
            raise UserError(
                f"--embed-gpus {options.embed_gpus:g}: no node of the cluster has that much of a GPU. Ray counts a "
                "node's NVIDIA GPUs when it starts (`ray start --num-gpus K` to say how many), or leave out --embed-gpus."
            )
        workers = options.workers or fitting
    else:
        workers = options.workers or len(alive)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # one bar: photos/s and time left
    # A task's own error (a bucket that stopped answering) reaches the driver as itself, not as Ray Data's
    # UserCodeException, whose cause is lost on the way.
    context.raise_original_map_exception = True
    items = [{"path": os.fsencode(f.path), "size": f.size, "mtime_ns": f.mtime_ns} for f in files]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // options.batch_size)))
    dataset = dataset.map_batches(read_stage, fn_args=(bundle,), batch_size=options.batch_size, batch_format="numpy",
                                  num_cpus=options.read_cpus)
    artifact = ArtifactStamp.of(bundle, stage).id
    dataset = dataset.map_batches(
        EmbedActor, fn_constructor_args=(str(Path(bundle.manifest.root).resolve()), stage, artifact,
                                         max(1, round(options.embed_cpus)), bool(options.embed_gpus)),
        batch_size=options.batch_size, batch_format="numpy", concurrency=workers, num_cpus=options.embed_cpus,
        num_gpus=options.embed_gpus,
    )
    done, pending = Throughput(), []
    with tqdm(total=len(files), unit="photo", disable=not files) as bar:
        for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            pending.append(as_shard(table))
            done.photos += table.num_rows
            done.per_node.update(table.column("node").to_pylist())
            bar.update(table.num_rows)
            if sum(t.num_rows for t in pending) >= options.shard_rows:
                on_shard(write_shard(shards, pa.concat_tables(pending)))
                pending = []
        if pending:
            on_shard(write_shard(shards, pa.concat_tables(pending)))
        done.seconds = bar.format_dict["elapsed"]
    return done
