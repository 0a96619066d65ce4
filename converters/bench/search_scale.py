"""Search latency, memory and recall at scale, on synthetic unit vectors: what the `bench` command reports.

`python -m converters search-scale --sizes 1000000,5000000` (`make search-scale`) prints a table of them.
`measure_topk(1_000_000, 512, "int8")` writes a real index of synthetic
vectors into a temporary folder, opens it the way `search` does and times
single queries through `Searcher`. With `stored=False` the index is built in
memory, as `search` holds it, straight from the vectors: the scan and the
graph are the same, but a SQLite index of ten million takes hours to write
on two cores. Recall@k is measured against an exact float32 search of the
same vectors before their float16 storage.

Two kinds of vectors, neither of them real photo embeddings:
- `random`: independent Gaussian directions. The hard case for rounding (their
  top similarities lie close together) and the worst case for a graph index
  (no neighbourhood structure at all: HNSW's recall collapses on them).
- `clustered`: a stand-in for photo embeddings, which lie near a low-dimensional
  subspace and gather in groups (events, bursts, places): groups of about
  `GROUP_SIZE` vectors around centres in a `SUBSPACE`-dimensional subspace,
  plus isotropic noise. Probes are drawn the same way, apart from the library.
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
from converters.search.photos import PhotoFacts, PhotoIndex, PhotoRow
from converters.search.schema import INDEX_FILE
from converters.search.store import IndexDatabase, load_index
from converters.search.vectors import int8_codes, normalize_rows


VECTOR_KINDS = ("random", "clustered")
SUBSPACE = 128
GROUP_SIZE = 100
GROUP_SPREAD = 1.0  # within-group spread, relative to the spread of the group centres
NOISE = 0.15  # isotropic noise's norm, relative to the unit signal


@dataclass(frozen=True)
class TopkMeasurement:
    n: int
    dim: int
    vectors: str  # one of VECTOR_KINDS
    backend: str
    k: int
    queries: int
    threads: int
    median_ms: float  # one query's wall-clock time: scan, top-k and rescoring
    p90_ms: float
    p99_ms: float  # with few queries, about the slowest
    # CPU time one query used, all threads together. Other processes on the machine stretch the
    # wall-clock time but not this; with threads=1 it is close to the latency on an idle machine.
    median_cpu_ms: float
    open_seconds: float  # loading the index and preparing the backend (hnsw: building its graph)
    resident_mb: float  # memory the opened index and backend hold (growth of the resident set)
    process_mb: float  # the resident set of a fresh process that opened the index and searched
    recall: float  # recall@k against exact float32, averaged over the queries
    stored: bool = True  # the index written to disk and read back (open_seconds counts the reading), or held in memory



def measure_topk(
    n: int, dim: int, backend: str = "int8", vectors: str = "random", k: int = 10, queries: int = 20,
    threads: int = 1, seed: int = 0, workdir: Path | None = None, stored: bool = True,
) -> TopkMeasurement:
    """Time `queries` single top-`k` searches over `n` synthetic unit vectors of `dim` dimensions (`stored`: in
    an index written to disk and read back; else built in memory, and `open_seconds` leaves out the reading)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if vectors not in VECTOR_KINDS:
        raise ValueError(f"unknown vectors {vectors!r}; known: {', '.join(VECTOR_KINDS)}")
    if backend == "faiss":
        import_faiss()  # before minutes of set-up, not after
    source = VectorSource(vectors, n, dim, seed)
    probes = source.draw(queries, stream=-1)
    # A process of its own, so that memory counts what `search` would hold, not our leftovers.
    if stored:
        with tempfile.TemporaryDirectory(dir=workdir, prefix="cnclip-scale-") as folder:
            truth = write_index(Path(folder), source, probes, k)
            timed = run_fresh(time_searches, folder, backend, threads, k, probes.tolist(), threads=threads)
    else:
        timed = run_fresh(time_searches_in_memory, source, backend, threads, k, probes, threads=threads)
        truth = timed["truth"]
    recall = float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(timed["found"], truth)]))
    milliseconds = np.array(timed["seconds"]) * 1000
    return TopkMeasurement(
        n, dim, vectors, backend, k, queries, threads, round(float(np.median(milliseconds)), 2),
        round(float(np.percentile(milliseconds, 90)), 2), round(float(np.percentile(milliseconds, 99)), 2),
        round(float(np.median(timed["cpu_seconds"])) * 1000, 2),
        round(timed["open_seconds"], 2), round(timed["resident_mb"], 1), round(timed["process_mb"], 1), round(recall, 4),
        stored,
    )


def time_searches(folder: str, backend: str, threads: int, k: int, probes: list[list[float]]) -> dict:
    """Open the index in `folder` as `search` does and time one query per probe."""
    before, started = _resident_mb(), time.perf_counter()
    searcher = Searcher(load_index(Path(folder)), backend, threads)
    return _timed(searcher, k, np.array(probes, np.float32), before, time.perf_counter() - started)


def time_searches_in_memory(source: VectorSource, backend: str, threads: int, k: int, probes: np.ndarray) -> dict:
    """Hold `source`'s index in memory as `search` does (float16 vectors, int8 codes, paths) and time one query
    per probe; also the probes' exact float32 top-k rows."""
    before = _resident_mb()
    vectors, exact = np.empty((source.n, source.dim), np.float16), ExactTop(probes, k)
    for start, chunk in source.chunks():
        vectors[start : start + len(chunk)] = chunk
        exact.add(start, chunk)
    started, zeros = time.perf_counter(), np.zeros(source.n, np.int64)
    facts = PhotoFacts([source.path(i) for i in range(source.n)], zeros, zeros, zeros, zeros.astype(bool))
    # A folder of its own all the same: the graph keeps its cache beside the index file.
    with tempfile.TemporaryDirectory(prefix="cnclip-scale-") as folder:
        index = PhotoIndex(Path(folder) / INDEX_FILE, _stamp(source), [source.root], True, facts, vectors,
                           int8_codes(vectors))
        searcher = Searcher(index, backend, threads)
        return _timed(searcher, k, probes, before, time.perf_counter() - started) | {"truth": exact.rows}


def _timed(searcher: Searcher, k: int, queries: np.ndarray, before: float, open_seconds: float) -> dict:
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
        "seconds": seconds, "cpu_seconds": cpu_seconds, "found": found, "open_seconds": open_seconds,
        "resident_mb": resident, "process_mb": _resident_mb(),
    }


class VectorSource:
    """A library of `n` unit vectors of one kind, and probes like them; reproducible from the seed."""

    def __init__(self, kind: str, n: int, dim: int, seed: int):
        self.kind, self.n, self.dim, self.seed = kind, n, dim, seed
        self.groups = max(1, n // GROUP_SIZE)
        if kind == "clustered":
            rng = np.random.default_rng([seed, 2])
            self.basis = np.linalg.qr(rng.standard_normal((dim, min(SUBSPACE, dim))))[0].astype(np.float32)

    def draw(self, count: int, stream: int) -> np.ndarray:
        """`count` vectors from one stream (a chunk of the library, or the probes); all streams share the groups."""
        rng = np.random.default_rng([self.seed, 1, stream + 1])
        if self.kind == "random":
            return normalize_rows(rng.standard_normal((count, self.dim), dtype=np.float32))
        rank = self.basis.shape[1]
        centres = np.random.default_rng([self.seed, 3]).standard_normal((self.groups, rank), dtype=np.float32)
        within = centres[rng.integers(0, self.groups, count)] + GROUP_SPREAD * rng.standard_normal((count, rank), dtype=np.float32)
        signal = normalize_rows(within) @ self.basis.T
        noise = NOISE / np.sqrt(self.dim) * rng.standard_normal((count, self.dim), dtype=np.float32)
        return normalize_rows(signal + noise)

    @property
    def root(self) -> str:
        return f"/{self.kind}"

    def path(self, row: int) -> str:
        return f"{self.root}/{row}.jpg"

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, vectors) of the library, chunk by chunk."""
        for number, start in enumerate(range(0, self.n, CHUNK_ROWS)):
            yield start, self.draw(min(CHUNK_ROWS, self.n - start), number)


class ExactTop:
    """Each probe's exact float32 top-k rows, over the chunks added."""

    def __init__(self, probes: np.ndarray, k: int):
        self.probes, self.k = probes, k
        self.rows, self.scores = np.zeros((len(probes), 0), np.int64), np.zeros((len(probes), 0), np.float32)

    def add(self, start: int, chunk: np.ndarray) -> None:
        rows = np.concatenate([self.rows, np.arange(start, start + len(chunk))[None].repeat(len(self.probes), 0)], 1)
        scores = np.concatenate([self.scores, self.probes @ chunk.T], 1)
        keep = np.argsort(-scores, axis=1)[:, : self.k]
        self.rows, self.scores = np.take_along_axis(rows, keep, 1), np.take_along_axis(scores, keep, 1)


def write_index(folder: Path, source: VectorSource, probes: np.ndarray, k: int) -> list[np.ndarray]:
    """Write the index of `source`'s vectors; return each probe's exact float32 top-k rows."""
    database = IndexDatabase(folder, create_for=_stamp(source))
    run = database.start_run(source.root)
    exact = ExactTop(probes, k)
    for start, chunk in source.chunks():
        rows = (PhotoRow(source.path(start + i), 0, 0, 0, False, 0, 0, 0, vector)
                for i, vector in enumerate(chunk.astype(np.float16)))
        database.write(run, source.root, rows, [], [])
        exact.add(start, chunk)
    database.finish_run(run)
    database.close()
    return list(exact.rows)


def _stamp(source: VectorSource) -> ArtifactStamp:
    return ArtifactStamp(source.kind, source.kind, "none", source.dim, "")


def _resident_mb() -> float:
    """The process's resident set now (Linux); NaN where /proc is not there."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
