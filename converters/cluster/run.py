"""A cluster run from plan to index: what the shards already hold is not embedded again; the rest goes through
Ray Data; then every shard is checked and merged through `IndexUpdater.run`, the transactions of a local run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import ray

from converters.cluster.pipeline import ClusterOptions, Throughput, embed_files
from converters.cluster.shards import ShardEntry, read_shards, shard_files
from converters.console import say
from converters.errors import UserError
from converters.search.scanner import FoundFile
from converters.search.store import PhotoRow
from converters.search.updater import IndexUpdater, UpdatePlan, UpdateReport

# Attempts of the pipeline when Ray gives up on it (a node lost with every retry of a task): each attempt
# starts from the shards written so far, so nothing is embedded twice.
ATTEMPTS = 3


@dataclass
class ClusterReport:
    update: UpdateReport
    from_shards: int  # files an earlier, interrupted run had embedded already
    embedded: Throughput


def embed_and_merge(
    updater: IndexUpdater, plan: UpdatePlan, shards: Path, options: ClusterOptions,
    on_shard: Callable[[Path], None] = lambda shard: None,
    cluster: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
) -> ClusterReport:
    """Bring the index up to date with `plan`, embedding on the Ray cluster: the one the driver is connected to, or
    the one `cluster()` connects to, entered only when the shards leave a photo to embed."""
    # Every shard is read, and checked, before the first write; read again after embedding, for the new ones.
    entries = _held(shards, updater, plan)
    held, throughput = len(entries), Throughput()
    if any(found.path not in entries for found in plan.to_embed):
        with cluster():
            throughput = _embed_what_shards_lack(updater, plan, shards, options, on_shard, entries)
        entries = _held(shards, updater, plan)
    missing = [found.path for found in plan.to_embed if found.path not in entries]
    if missing:
        raise RuntimeError(f"{len(missing)} photos are in no shard after the run, e.g. {missing[0]}")
    report = updater.run(plan, batch_size=options.batch_size, embed_batch=lambda batch: _from_shards(batch, entries))
    for shard in shard_files(shards):  # merged: the index holds them now
        shard.unlink()
    return ClusterReport(report, held, throughput)


def _embed_what_shards_lack(
    updater: IndexUpdater, plan: UpdatePlan, shards: Path, options: ClusterOptions, on_shard: Callable[[Path], None],
    done: dict[str, ShardEntry],
) -> Throughput:
    attempt = 1
    while True:
        todo = [found for found in plan.to_embed if found.path not in done]
        if not todo:  # the failed attempt had written every shard
            return Throughput()
        say(f"{len(todo)} photos to embed on the cluster ({len(done)} already in shards under {shards})")
        try:
            return embed_files(todo, updater.bundle, updater.stage, shards, options, on_shard)
        except ray.exceptions.RayError as error:
            cause = getattr(error, "cause", None)  # what a task raised
            if isinstance(cause, UserError):  # the library's or a node's fault (a bucket that stopped answering): no retry helps
                # Ray Data appends its advice on retries to the message ("\nFailed to apply UDF transform after
                # 1/1 attempts … configure DataContext"): not for the user, who is told what to do already.
                if cause.args and isinstance(cause.args[0], str):
                    cause.args = (cause.args[0].rpartition("\nFailed to ")[0] or cause.args[0], *cause.args[1:])
                raise cause from error
            if attempt == ATTEMPTS:
                raise
            attempt += 1
            say(f"the cluster lost work ({type(error).__name__}); attempt {attempt} of {ATTEMPTS} continues from the shards")
        done = _held(shards, updater, plan)


def _held(shards: Path, updater: IndexUpdater, plan: UpdatePlan) -> dict[str, ShardEntry]:
    """The shards' entries (every shard read and checked) of the plan's files still as they were when embedded (a
    file changed since is embedded again)."""
    entries = read_shards(shards, updater.stamp)
    return {f.path: entries[f.path] for f in plan.to_embed if f.path in entries and entries[f.path].matches(f)}


def _from_shards(batch: list[FoundFile], entries: dict[str, ShardEntry]) -> tuple[list[PhotoRow], list[str]]:
    held = [entries[found.path] for found in batch]
    return [e.row for e in held if e.row is not None], [e.skipped for e in held if e.skipped is not None]


def describe_throughput(done: Throughput) -> list[str]:
    """Photos per second overall and per node, over the time the driver waited for results."""
    if not done.photos or not done.seconds:
        return []
    lines = [f"embedded {done.photos} photos in {done.seconds:.1f} s: {done.photos / done.seconds:.1f} photos/s"]
    for node, count in sorted(done.per_node.items()):
        lines.append(f"  node {node[:12]}: {count} photos, {count / done.seconds:.1f} photos/s")
    return lines
