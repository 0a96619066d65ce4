"""What an app runs for one query, in one timing: tokenize (or decode and preprocess), embed, search the top 10.

The towers and the search are timed apart elsewhere in the report; this times them together, as `search` runs
them (`converters.search.query`: text_query / image_query, then `Searcher.find`), over synthetic libraries of
clustered vectors of the bundle's width (`search_scale`), so that each size's number is one query's whole cost.
Each library size is measured in a fresh process, every artifact's both queries in it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from converters.app.bundle import Bundle
from converters.bench.goals import GOAL_QUERY_CHARS
from converters.bench.processes import run_fresh
from converters.bench.report import QueryPath
from converters.bench.search import PHOTOS, TOP_K
from converters.bench.search_scale import VectorSource, write_index
from converters.bench.timing import Budget, time_calls
from converters.bench.tower_speed import query_text
from converters.search.query import Searcher, image_query, text_query
from converters.search.store import load_index


def bench_query_paths(bundle_dir: Path, stages: list[str], sizes: tuple[int, ...], budget: Budget, threads: int,
                      progress: Callable[[str], None]) -> list[QueryPath]:
    paths: list[QueryPath] = []
    dim = Bundle.open(bundle_dir).embedding_dim
    for n in sizes:
        progress(f"query end to end: {n:,} photos, {', '.join(stages)}")
        with tempfile.TemporaryDirectory(prefix="cnclip-query-path-") as folder:
            write_index(Path(folder), VectorSource("clustered", n, dim, seed=0), np.zeros((0, dim), np.float32), TOP_K)
            paths += run_fresh(measure_query_paths, folder, bundle_dir, stages, budget, threads, threads=threads)
    return paths


def measure_query_paths(index_folder: str, bundle_dir: Path, stages: list[str], budget: Budget, threads: int) -> list[QueryPath]:
    bundle = Bundle.open(bundle_dir)
    searcher = Searcher(load_index(Path(index_folder)), threads=threads)
    text, photo = query_text(GOAL_QUERY_CHARS), sorted(PHOTOS.glob("*.jpg"))[0]
    paths = []
    for stage in stages:
        embedder = bundle.embedder(stage, threads)
        for label, query in ((f"text, {GOAL_QUERY_CHARS} chars", lambda: text_query(bundle, embedder, text)),
                             (f"image {photo.name}", lambda: image_query(bundle, embedder, photo))):
            def one_query() -> None:
                hits = searcher.find(label, query(), TOP_K).hits
                if len(hits) != TOP_K:  # a path that found nothing would time nothing
                    raise RuntimeError(f"{stage}: a {label} query found {len(hits)} photos, not {TOP_K}")

            paths.append(QueryPath(stage, label, len(searcher.index), searcher.scan.name, time_calls(one_query, budget)))
    return paths
