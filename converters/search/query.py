"""Top-k search over a photo index: text or image queries, a time filter, and the scan backends.

Every backend scores every photo (none is approximate) and proposes a few
candidates per hit wanted; the candidates are then rescored in float32 on the
stored float16 vectors, so the scores shown are cosine similarities whatever
the backend, and the backends differ only in speed and memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path

import numpy as np

from converters.bundle import Bundle, QueryError
from converters.errors import UserError
from converters.preprocess import load_image
from converters.runtimes import Embedder
from converters.search.index import CHUNK_ROWS, ArtifactStamp, PhotoIndex, normalize_rows, wall_seconds, wall_time

# Candidates rescored per query. Measured on 1M random 512-d vectors, the int8 scan's 20 best
# already held every true top 10; 64 leaves room for larger k and closer scores.
MIN_CANDIDATES = 64
CANDIDATES_PER_HIT = 4


class BackendUnavailableError(UserError):
    """The chosen backend's package is not installed."""


@dataclass(frozen=True)
class TimeRange:
    """Photos whose time (EXIF capture time, else mtime; local wall-clock) lies in [since, until)."""

    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(cls, since: str | None, until: str | None) -> "TimeRange":
        start = _parse_moment("--since", since, end_of_day=False)
        stop = _parse_moment("--until", until, end_of_day=True)
        if start and stop and start >= stop:
            raise QueryError(f"--since {since} is not before --until {until}; no photo could match.")
        return cls(start, stop)

    def allowed(self, times: np.ndarray) -> np.ndarray | None:
        """A mask over the index's photos, or None when every photo is allowed."""
        if self.since is None and self.until is None:
            return None
        mask = np.ones(len(times), bool)
        if self.since is not None:
            mask &= times >= wall_seconds(self.since)
        if self.until is not None:
            mask &= times < wall_seconds(self.until)
        return mask

    def describe(self) -> str:
        if self.since is None and self.until is None:
            return "any time"
        since = self.since.isoformat(sep=" ") if self.since else "the beginning"
        until = self.until.isoformat(sep=" ") if self.until else "now"
        return f"from {since} until {until} (exclusive)"


def _parse_moment(option: str, value: str | None, end_of_day: bool) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise QueryError(f"{option} {value!r} is not a date; write YYYY-MM-DD or YYYY-MM-DDTHH:MM.") from None
    if moment.tzinfo is not None:
        raise QueryError(f"{option} {value!r} has a time zone; photo times are local wall-clock times: leave it out.")
    # A bare date in --until means "up to and including that day".
    whole_day = end_of_day and moment.time() == time() and len(value) <= len("2025-01-01")
    return moment + timedelta(days=1) if whole_day else moment


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    path: str
    time: datetime
    captured: bool  # `time` is the EXIF capture time, not the file's modification time
    size: int


@dataclass
class SearchResult:
    query: str
    artifact: ArtifactStamp
    index_file: str
    indexed: int
    considered: int  # photos that pass the time filter
    complete: bool
    time_range: TimeRange
    backend: str
    hits: list[Hit]


# ---- queries ----------------------------------------------------------------------------------


def text_query(bundle: Bundle, embedder: Embedder, text: str) -> np.ndarray:
    return normalize_rows(embedder.embed_texts(bundle.token_ids([text])))


def image_query(bundle: Bundle, embedder: Embedder, path: Path) -> np.ndarray:
    return normalize_rows(embedder.embed_images(bundle.pixels([load_image(path)])))


# ---- backends ---------------------------------------------------------------------------------


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
        import onnxruntime as ort

        self.codes, self.scales = index.int8.codes, index.int8.scales
        self.offsets = (self.QUERY_ZERO * self.codes.sum(axis=0, dtype=np.int32)).astype(np.int32)
        self.no_filter = np.zeros(len(self.scales), np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(_int8_scan_graph(), options, providers=["CPUExecutionProvider"])

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


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise BackendUnavailableError(
            "The faiss backend needs the faiss-cpu package: `pip install faiss-cpu` (or `pip install "
            "'cnclip-converters[faiss]'`), or leave --backend at its default, int8."
        ) from None
    return faiss


BACKENDS = {backend.name: backend for backend in (Int8Scan, ExactScan, FaissScan)}
DEFAULT_BACKEND = Int8Scan.name


# ---- search -----------------------------------------------------------------------------------


class Searcher:
    """Searches one loaded index with one backend; build once, query many times."""

    def __init__(self, index: PhotoIndex, backend: str = "int8", threads: int = 1):
        if len(index) == 0:
            raise QueryError(
                f"The index {index.file} holds no photos; run `python -m converters index` on a folder of photos."
            )
        self.index = index
        self.scan = BACKENDS[backend](index, threads)

    def find(self, label: str, query: np.ndarray, k: int = 10, time_range: TimeRange = TimeRange()) -> SearchResult:
        """The best `k` photos for one normalized query vector ([D] or [1, D]), described by `label`."""
        photos = self.index.photos
        allowed = time_range.allowed(photos.time)
        rows, scores = self.top_rows(np.reshape(query, (1, -1)), k, allowed)[0]
        hits = [
            Hit(
                rank, float(score), photos.paths[row], wall_time(photos.time[row]), bool(photos.captured[row]),
                int(photos.size[row]),
            )
            for rank, (row, score) in enumerate(zip(rows, scores), start=1)
        ]
        considered = len(self.index) if allowed is None else int(allowed.sum())
        return SearchResult(label, self.index.artifact, str(self.index.file), len(self.index), considered,
                            self.index.complete, time_range, self.scan.name, hits)

    def top_rows(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each query, the index rows of its best `k` photos among `allowed`, and their cosine similarities."""
        queries = np.ascontiguousarray(queries, np.float32)
        count = max(MIN_CANDIDATES, CANDIDATES_PER_HIT * k)
        candidates = self.scan.candidates(queries, count, allowed)
        return [self._rescore(query, rows, k) for query, rows in zip(queries, candidates)]

    def _rescore(self, query: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.sort(rows)  # file order: neighbouring rows are read together
        scores = np.asarray(self.index.vectors[rows], dtype=np.float32) @ query
        best = np.argsort(-scores, kind="stable")[:k]
        return rows[best], scores[best]
