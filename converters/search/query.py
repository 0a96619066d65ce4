"""Top-k search over a photo index: text or image queries, a time filter, rescoring of the backend's candidates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path

import numpy as np

from converters.app.bundle import Bundle, QueryError
from converters.app.preprocess import load_image
from converters.app.runtimes import Embedder
from converters.search.backends import BACKENDS, DEFAULT_BACKEND, backend_for
from converters.search.stamp import ArtifactStamp
from converters.search.photos import PhotoIndex, wall_seconds, wall_time
from converters.search.vectors import normalize_rows

# Candidates rescored per query. Measured on 1M random 512-d vectors, the int8 scan's 20 best
# already held every true top 10; 64 leaves room for larger k and closer scores.
MIN_CANDIDATES = 64
CANDIDATES_PER_HIT = 4


@dataclass(frozen=True)
class TimeRange:
    """Photos whose time (EXIF capture time, else mtime; local wall-clock) lies in [since, until)."""

    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(cls, since: str | None, until: str | None, names: tuple[str, str] = ("--since", "--until")) -> "TimeRange":
        """`names` are what the user typed them as: the CLI's options, the web API's parameters."""
        start = _parse_moment(names[0], since, end_of_day=False)
        stop = _parse_moment(names[1], until, end_of_day=True)
        if start and stop and start >= stop:
            raise QueryError(f"{names[0]} {since} is not before {names[1]} {until}; no photo could match.")
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
    if whole_day:
        # The last day there is has no next day: up to the end of time.
        return moment + timedelta(days=1) if moment.date() < datetime.max.date() else datetime.max
    return moment


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    path: str
    time: datetime
    captured: bool  # `time` is the EXIF capture time, not the file's modification time
    size: int
    row: int  # the photo's row in the loaded index


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
    ids = bundle.token_ids([text])
    special = bundle.tokenizer.special_ids
    words = [i for i in ids[0] if i not in (special["[CLS]"], special["[SEP]"], 0)]
    if all(i == special["[UNK]"] for i in words):
        # Every piece [UNK]: the model would embed "unknown" and rank photos by noise.
        raise QueryError(
            f"The text {text!r} holds no word the model knows (every character is outside its vocabulary, "
            f"{bundle.tokenizer.vocab_file}); write what to look for in Chinese or English, e.g. 海边的日落."
        )
    return normalize_rows(embedder.embed_texts(ids))


def image_query(bundle: Bundle, embedder: Embedder, path: Path) -> np.ndarray:
    return normalize_rows(embedder.embed_images(bundle.pixels([load_image(path)])))


# ---- search -----------------------------------------------------------------------------------


def empty_index(index: PhotoIndex) -> QueryError:
    return QueryError(
        f"The index {index.file} holds no photos; run `python -m converters index PHOTOS --index {index.file.parent}` "
        "on a folder of photos."
    )


class Searcher:
    """Searches one loaded index with one backend; build once, query many times."""

    def __init__(self, index: PhotoIndex, backend: str = DEFAULT_BACKEND, threads: int = 1, reuse: "Searcher | None" = None):
        """`reuse`: a searcher whose backend may serve `index` as well, if it was built over the same vectors
        (a server's reload after a commit that changed the runs, not the photos)."""
        if len(index) == 0:
            raise empty_index(index)
        self.index = index
        name = backend_for(backend, len(index))
        if reuse is not None and reuse.index.vectors is index.vectors and reuse.scan.name == name:
            self.scan = reuse.scan
        else:
            self.scan = BACKENDS[name](index, threads)

    def find(self, label: str, query: np.ndarray, k: int = 10, time_range: TimeRange = TimeRange(),
             exclude: int | None = None) -> SearchResult:
        """The best `k` photos for one normalized query vector ([D] or [1, D]), described by `label`;
        never the photo in row `exclude` ("more like this" would list the photo itself first)."""
        photos = self.index.photos
        allowed = time_range.allowed(photos.time)
        if exclude is not None:
            allowed = np.ones(len(self.index), bool) if allowed is None else allowed.copy()
            allowed[exclude] = False
        rows, scores = self.top_rows(np.reshape(query, (1, -1)), k, allowed)[0]
        hits = [
            Hit(
                rank, float(score), photos.paths[row], wall_time(photos.time[row]), bool(photos.captured[row]),
                int(photos.size[row]), int(row),
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
