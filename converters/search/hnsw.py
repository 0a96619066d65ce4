"""The approximate index of large libraries: an HNSW graph (usearch) over the int8 codes, cached beside the database.

The int8 scan reads every code, so its time grows with the library: 17-47 ms
at 1,000,000 x 512 on a 2-core AMD EPYC (`make bench`; the range is the load
of the machine), about 50 ms by 2-3 million. An HNSW graph answers in about a
millisecond at that size, at the price of being approximate and of a build
(11-13 minutes per million photos on 2 cores).

The graph is a cache derived from the database, never a second source of
truth: its file name carries a fingerprint of the codes it was built from, so a
graph that no longer matches the photos is never read, and a new one replaces it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from converters.app.fsutil import atomic_path
from converters.search.photos import PhotoIndex

GRAPH_PREFIX = "approximate-"
GRAPH_SUFFIX = ".usearch"
# Graph degree and search breadth, with 64 candidates rescored to the top 10. Measured on 1,000,000
# clustered 512-d vectors (`bench/search_scale.py`, 200 probes, AMD EPYC, 2 cores): recall@10 0.99 at
# breadth 64 (0.82 ms), 1.0 at 96 (0.96 ms) and at 128 (1.22 ms). The margin held at 2,000,000 (0.998) but
# not at 5,000,000 (0.932; docs/measurements/2026-12-07-hnsw-5m.md).
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 128
ADD_ROWS = 65_536  # rows per add call: a progress step, and a bounded int8 copy


def graph_file(index: PhotoIndex) -> Path:
    """Where the graph for exactly these photos and codes lives."""
    digest = hashlib.sha256(np.asarray(index.int8.codes.shape, np.int64).tobytes())
    digest.update(np.ascontiguousarray(index.int8.codes).data)
    return index.file.parent / f"{GRAPH_PREFIX}{digest.hexdigest()[:20]}{GRAPH_SUFFIX}"


def open_graph(index: PhotoIndex, threads: int = 0, progress: Callable[[int], None] | None = None):
    """The index's graph: read from its cache file, else built (and cached when the folder is writable).

    `progress` is told how many photos each build step added.
    """
    from usearch.index import Index

    file = graph_file(index)
    if file.is_file():
        try:
            graph = Index.restore(str(file), view=True)
        except (RuntimeError, ValueError):
            graph = None  # a damaged cache is built again
        if graph is not None and len(graph) == len(index):
            graph.expansion_search = EXPANSION_SEARCH
            return graph
    graph = build_graph(index, threads, progress)
    try:
        with atomic_path(file) as tmp:
            graph.save(str(tmp))
    except OSError:
        return graph  # a read-only index folder: search with the graph in memory
    for stale in file.parent.glob(f"{GRAPH_PREFIX}*{GRAPH_SUFFIX}"):
        if stale != file:
            stale.unlink(missing_ok=True)
    return graph


def build_graph(index: PhotoIndex, threads: int = 0, progress: Callable[[int], None] | None = None):
    """An HNSW graph whose key i is the index's row i, over the rows' int8 codes.

    Cosine on the codes: each row's codes carry its own scale, which cosine
    ignores, so the graph needs neither the scales nor the float16 rows.
    """
    from usearch.index import Index

    codes = index.int8.codes  # [D, N]
    graph = Index(
        ndim=codes.shape[0], metric="cos", dtype="i8", connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH,
    )
    for start in range(0, codes.shape[1], ADD_ROWS):
        rows = np.ascontiguousarray(codes[:, start : start + ADD_ROWS].T)
        graph.add(np.arange(start, start + len(rows), dtype=np.uint64), rows, threads=threads)
        if progress is not None:
            progress(len(rows))
    return graph
