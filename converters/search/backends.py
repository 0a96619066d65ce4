"""The backends of a search: each proposes candidates, which the search rescores exactly.

The candidates are rescored in float32 on the stored float16 vectors, so the
scores shown are cosine similarities whatever the backend. The scans (int8,
exact, faiss) look at every photo; `hnsw` walks a graph and may miss some of
the true best (recall@10 is measured by `make bench`).
"""

from __future__ import annotations

import functools

import numpy as np

from converters.errors import UserError
from converters.search.photos import PhotoIndex
from converters.search.vectors import quantize

# Rows per step of the exact scan and of faiss's training: bounded memory at any index size.
CHUNK_ROWS = 65_536


class BackendUnavailableError(UserError):
    """The chosen backend's package is not installed."""



class ExactScan:
    """Every stored vector in float32, chunk by chunk: simple and exact, but about 5 s at 1M x 512."""

    name = "exact"

    def __init__(self, index: PhotoIndex, threads: int = 0):
        # `threads` is not used: numpy's BLAS picks its own.
        self.vectors = index.vectors

    def candidates(self, queries: np.ndarray, count: int, allowed: np.ndarray | None) -> list[np.ndarray]:
        scores = np.empty((len(queries), len(self.vectors)), np.float32)
        for start in range(0, len(self.vectors), CHUNK_ROWS):
            chunk = np.asarray(self.vectors[start : start + CHUNK_ROWS], dtype=np.float32)
            scores[:, start : start + len(chunk)] = queries @ chunk.T
        if allowed is not None:
            scores[:, ~allowed] = -np.inf
        count = min(count, scores.shape[1])
        best = np.argpartition(-scores, count - 1, axis=1)[:, :count]
        return [rows[np.isfinite(row_scores[rows])] for rows, row_scores in zip(best, scores)]


class Int8Scan:
    """The int8 codes times a 7-bit query, in onnxruntime's integer GEMV, with top-k in the same graph.

    At 1M x 512 a query reads the 512 MB of codes once: 31-47 ms on this
    2-core machine with little else running (about 44 ms of CPU time), and
    up to twice that while other jobs share it; one thread does as well as
    two, the memory being the limit. float32 would need 2 GB; numpy has no
    fast int8 or float16 product, and faiss's 8-bit scan took 3x as long.
    """

    name = "int8"
    # MLAS's AVX2 uint8 x int8 kernel adds pairs of products in int16 (vpmaddubsw), which saturates
    # with full 8-bit operands (measured: wrong dot products); 7-bit queries in [1, 127] cannot.
    # MatMulInteger's own zero-point input was 3x slower (measured), so the query is shifted by
    # QUERY_ZERO and the shift (QUERY_ZERO x each vector's code sum) is subtracted in the graph.
    QUERY_LEVELS = 63
    QUERY_ZERO = 64

    def __init__(self, index: PhotoIndex, threads: int = 1):
        self.codes, self.scales = index.int8.codes, index.int8.scales
        self.offsets = (self.QUERY_ZERO * self.codes.sum(axis=0, dtype=np.int32)).astype(np.int32)
        self.no_filter = np.zeros(len(self.scales), np.float32)
        self.session = _int8_scan_session(threads)

    def candidates(self, queries: np.ndarray, count: int, allowed: np.ndarray | None) -> list[np.ndarray]:
        peak = np.maximum(np.abs(queries).max(axis=1, keepdims=True), np.float32(1e-12))
        quantized = (np.rint(queries / peak * self.QUERY_LEVELS) + self.QUERY_ZERO).astype(np.uint8)
        bias = self.no_filter if allowed is None else np.where(allowed, np.float32(0), np.float32(-np.inf))
        feed = {
            "query": quantized, "codes": self.codes, "offsets": self.offsets, "scales": self.scales,
            "bias": bias, "count": np.array([min(count, len(self.scales))], np.int64),
        }
        scores, rows = self.session.run(None, feed)
        return [r[np.isfinite(s)] for r, s in zip(rows, scores)]


@functools.cache
def _int8_scan_session(threads: int):
    """One session per thread count for every scan in the process (the graph takes the codes as inputs, and
    onnxruntime's sessions may run from several threads at once): a session per index state started a thread
    pool at each of a server's reloads, and glibc gave each new thread an arena, which the process kept.

    Its threads do not spin waiting for work: a query runs the text tower's session, then this one, and each
    pool's spinning threads took the cores from the other's (a 10-character query over 100,000 photos took
    16.9 ms end to end against 8.1 + 2.1 ms for its parts; 11.6 ms without spinning, AMD EPYC, 2 threads)."""
    from converters.app.runtimes.onnx_runtime import session

    return session(_int8_scan_graph(), threads, {"session.intra_op.allow_spinning": False})


def _int8_scan_graph() -> bytes:
    from onnx import TensorProto, helper

    def tensor(name: str, dtype: int, shape: list) -> object:
        return helper.make_tensor_value_info(name, dtype, shape)

    nodes = [
        helper.make_node("MatMulInteger", ["query", "codes"], ["dots"]),
        helper.make_node("Sub", ["dots", "offsets"], ["centred"]),
        helper.make_node("Cast", ["centred"], ["centred_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["centred_float", "scales"], ["similarity"]),
        helper.make_node("Add", ["similarity", "bias"], ["filtered"]),
        helper.make_node("TopK", ["filtered", "count"], ["scores", "rows"], axis=-1),
    ]
    inputs = [
        tensor("query", TensorProto.UINT8, ["queries", "dim"]),
        tensor("codes", TensorProto.INT8, ["dim", "photos"]),
        tensor("offsets", TensorProto.INT32, ["photos"]),
        tensor("scales", TensorProto.FLOAT, ["photos"]),
        tensor("bias", TensorProto.FLOAT, ["photos"]),
        tensor("count", TensorProto.INT64, [1]),
    ]
    outputs = [
        tensor("scores", TensorProto.FLOAT, ["queries", "k"]),
        tensor("rows", TensorProto.INT64, ["queries", "k"]),
    ]
    graph = helper.make_graph(nodes, "int8_scan", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


class FaissScan:
    """faiss's 8-bit scalar quantizer, scanned in full (an optional dependency: faiss-cpu)."""

    name = "faiss"

    def __init__(self, index: PhotoIndex, threads: int = 0):
        faiss = import_faiss()
        if threads:
            faiss.omp_set_num_threads(threads)
        self.faiss = faiss
        dim = index.vectors.shape[1]
        self.scan = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        sample = np.asarray(index.vectors[:: max(1, len(index) // CHUNK_ROWS)], dtype=np.float32)
        self.scan.train(sample)
        for start in range(0, len(index), CHUNK_ROWS):
            self.scan.add(np.asarray(index.vectors[start : start + CHUNK_ROWS], dtype=np.float32))

    def candidates(self, queries: np.ndarray, count: int, allowed: np.ndarray | None) -> list[np.ndarray]:
        count = min(count, self.scan.ntotal)
        params = None
        if allowed is not None:
            bitmap = np.packbits(allowed, bitorder="little")
            selector = self.faiss.IDSelectorBitmap(len(allowed), self.faiss.swig_ptr(bitmap))
            params = self.faiss.SearchParameters(sel=selector)
        _, rows = self.scan.search(np.ascontiguousarray(queries, np.float32), count, params=params)
        return [r[r >= 0] for r in rows]


class HnswScan:
    """An HNSW graph over the int8 codes (usearch), built once per index state and cached beside it."""

    name = "hnsw"

    def __init__(self, index: PhotoIndex, threads: int = 1):
        from converters.search.hnsw import open_graph

        self.index, self.threads = index, threads
        self.graph = open_graph(index, threads)
        self.filtered_scan: Int8Scan | None = None

    def candidates(self, queries: np.ndarray, count: int, allowed: np.ndarray | None) -> list[np.ndarray]:
        if allowed is not None:
            # usearch's Python search takes no filter, and a graph walk that drops most of what it meets
            # can miss a small date range entirely; the int8 scan serves filtered queries exactly.
            if self.filtered_scan is None:
                self.filtered_scan = Int8Scan(self.index, self.threads)
            return self.filtered_scan.candidates(queries, count, allowed)
        codes, _ = quantize(queries)
        matches = self.graph.search(codes, min(count, len(self.index)), threads=self.threads)
        if len(queries) == 1:  # usearch answers one query with one trimmed row
            return [matches.keys.astype(np.int64)]
        return [keys[:found].astype(np.int64) for keys, found in zip(matches.keys, matches.counts)]


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise BackendUnavailableError(
            "The faiss backend needs the faiss-cpu package: `pip install faiss-cpu` (or `pip install "
            "'cnclip-converters[faiss]'`), or leave --backend at its default, int8."
        ) from None
    return faiss


BACKENDS = {backend.name: backend for backend in (Int8Scan, ExactScan, FaissScan, HnswScan)}
AUTO = "auto"
DEFAULT_BACKEND = AUTO
# From this many photos on, `auto` walks the HNSW graph: the int8 scan takes 17-47 ms at 1M x 512
# on this 2-core machine, depending on its load (`make bench`), and grows linearly past the 50 ms a
# query may take; the graph answers in about 1 ms at 1M with recall@10 0.98-1.0 (search/hnsw.py).
APPROXIMATE_FROM = 1_000_000


def backend_for(name: str, photos: int) -> str:
    """The backend `name` stands for over an index of `photos` photos."""
    if name != AUTO:
        return name
    return HnswScan.name if photos >= APPROXIMATE_FROM else Int8Scan.name
