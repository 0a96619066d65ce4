"""Search latency, memory and recall at scale, on random unit vectors: what the `bench` command reports.

`measure_topk(1_000_000, 512, "int8")` writes a real index file of random
vectors into a temporary folder, opens it the way `search` does and times
single queries through `Searcher`. Recall@k is measured against an exact
float32 search of the same vectors before their float16 storage. Random
vectors are the hard case: their top similarities lie much closer together
than real photo embeddings do, so rounding reorders them more easily.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.bench.processes import run_fresh
from converters.search.backends import BACKENDS, CHUNK_ROWS, import_faiss
from converters.search.query import Searcher
from converters.search.stamp import ArtifactStamp
from converters.search.store import IndexDatabase, PhotoRow, load_index
from converters.search.vectors import normalize_rows


@dataclass(frozen=True)
class TopkMeasurement:
    n: int
    dim: int
    backend: str
    k: int
    queries: int
    threads: int
    median_ms: float  # one query's wall-clock time: scan, top-k and rescoring
    p90_ms: float
    # CPU time one query used, all threads together. Other processes on the machine stretch the
    # wall-clock time but not this; with threads=1 it is close to the latency on an idle machine.
    median_cpu_ms: float
    resident_mb: float  # memory the opened index and backend hold (growth of the resident set)
    process_mb: float  # the resident set of a fresh process that opened the index and searched
    recall: float  # recall@k against exact float32, averaged over the queries



def measure_topk(
    n: int, dim: int, backend: str = "int8", k: int = 10, queries: int = 20, threads: int = 1,
    seed: int = 0, workdir: Path | None = None,
) -> TopkMeasurement:
    """Time `queries` single top-`k` searches over `n` random unit vectors of `dim` dimensions."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend == "faiss":
        import_faiss()  # before minutes of set-up, not after
    probes = normalize_rows(np.random.default_rng([seed, 0]).standard_normal((queries, dim), dtype=np.float32))
    with tempfile.TemporaryDirectory(dir=workdir, prefix="cnclip-scale-") as folder:
        truth = _write_random_index(Path(folder), n, dim, probes, k, seed)
        # A process of its own, so that memory counts what `search` would hold, not our leftovers.
        timed = run_fresh(time_searches, folder, backend, threads, k, probes.tolist(), threads=threads)
    recall = float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(timed["found"], truth)]))
    milliseconds = np.array(timed["seconds"]) * 1000
    return TopkMeasurement(
        n, dim, backend, k, queries, threads, round(float(np.median(milliseconds)), 2),
        round(float(np.percentile(milliseconds, 90)), 2), round(float(np.median(timed["cpu_seconds"])) * 1000, 2),
        round(timed["resident_mb"], 1), round(timed["process_mb"], 1), round(recall, 4),
    )


def time_searches(folder: str, backend: str, threads: int, k: int, probes: list[list[float]]) -> dict:
    """Open the index in `folder` as `search` does and time one query per probe."""
    before = _resident_mb()
    searcher = Searcher(load_index(Path(folder)), backend, threads)
    queries = np.array(probes, np.float32)
    searcher.top_rows(queries[:1], k)  # the first query pays for page faults and thread start-up
    resident = _resident_mb() - before
    seconds, cpu_seconds, found = [], [], []
    for query in queries:
        started, cpu_started = time.perf_counter(), time.process_time()
        rows, _ = searcher.top_rows(query[None], k)[0]
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
        found.append(rows.tolist())
    return {
        "seconds": seconds, "cpu_seconds": cpu_seconds, "found": found,
        "resident_mb": resident, "process_mb": _resident_mb(),
    }


def _random_chunks(n: int, dim: int, seed: int) -> Iterator[np.ndarray]:
    for number, start in enumerate(range(0, n, CHUNK_ROWS)):
        rng = np.random.default_rng([seed, 1, number])
        yield normalize_rows(rng.standard_normal((min(CHUNK_ROWS, n - start), dim), dtype=np.float32))


def _write_random_index(folder: Path, n: int, dim: int, probes: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Write an index of `n` random vectors; return each probe's exact float32 top-k rows."""
    database = IndexDatabase(folder, create_for=ArtifactStamp("random", "random", "none", dim, ""))
    run = database.start_run("/random")
    best_rows = np.zeros((len(probes), 0), np.int64)
    best_scores = np.zeros((len(probes), 0), np.float32)
    start = 0
    for chunk in _random_chunks(n, dim, seed):
        rows = (PhotoRow(f"/random/{start + i}.jpg", 0, 0, 0, False, 0, 0, 0, vector)
                for i, vector in enumerate(chunk.astype(np.float16)))
        database.write(run, "/random", rows, [], [])
        best_rows = np.concatenate([best_rows, np.arange(start, start + len(chunk))[None].repeat(len(probes), 0)], 1)
        best_scores = np.concatenate([best_scores, probes @ chunk.T], 1)
        keep = np.argsort(-best_scores, axis=1)[:, :k]
        best_rows, best_scores = np.take_along_axis(best_rows, keep, 1), np.take_along_axis(best_scores, keep, 1)
        start += len(chunk)
    database.finish_run(run)
    database.close()
    return list(best_rows)


def _resident_mb() -> float:
    """The process's resident set now (Linux); NaN where /proc is not there."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
