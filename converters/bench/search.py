"""The reference search engine: how fast it indexes photos, and how fast it answers a top-10 query at scale."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from converters.app.bundle import Bundle
from converters.app.preprocess import load_image
from converters.bench.processes import run_fresh
from converters.bench.report import IndexingRun, TopkRow
from converters.bench.search_scale import measure_topk
from converters.data import PARITY_SET_DIR
from converters.search.updater import DEFAULT_BATCH_SIZE

TOP_K = 10
# (backend, vectors): the int8 scan on both kinds (its recall suffers from close scores, not from
# missing structure), the graph on vectors with structure (on random ones its recall is 0.2-0.4).
CASES = (("int8", "random"), ("int8", "clustered"), ("hnsw", "clustered"), ("faiss", "random"))
PHOTOS = PARITY_SET_DIR / "images"  # real JPEGs of many sizes, so decoding costs what it costs on photos


def bench_topk(
    dim: int, sizes: tuple[int, ...], queries: int, threads: int, progress: Callable[[str], None]
) -> list[TopkRow]:
    rows = []
    for n in sizes:
        for backend, vectors in CASES:
            if backend == "faiss" and importlib.util.find_spec("faiss") is None:
                rows.append(TopkRow(backend, vectors, n, None, "not measured: faiss-cpu is not installed (pip install faiss-cpu)"))
                continue
            progress(f"search: top-{TOP_K} over {n:,} {vectors} vectors, {backend}")
            # measure_topk times in a process of its own; starting it from a fresh one pins its BLAS threads too.
            measured = run_fresh(measure_topk, n, dim, backend, vectors, TOP_K, queries, threads, threads=threads)
            rows.append(TopkRow(backend, vectors, n, measured))
    return rows


def bench_indexing(bundle_dir: Path, stage: str, copies: int, threads: int) -> IndexingRun:
    return run_fresh(measure_indexing, bundle_dir, stage, copies, threads, threads=threads)


def measure_indexing(bundle_dir: Path, stage: str, copies: int, threads: int) -> IndexingRun:
    """Index `copies` copies of the parity photos into a new index, as `python -m converters index` would."""
    from converters.search.updater import IndexUpdater

    bundle = Bundle.open(bundle_dir)
    with tempfile.TemporaryDirectory(prefix="cnclip-bench-index-") as folder:
        photos = _photo_folder(Path(folder) / "photos", copies)
        files = sorted(photos.iterdir())
        started = time.perf_counter()
        for file in files:
            bundle.pixels([load_image(file)])
        decode_seconds = time.perf_counter() - started
        started = time.perf_counter()
        with IndexUpdater(Path(folder) / "index", bundle, stage, threads) as updater:
            updater.run(updater.plan(photos), batch_size=DEFAULT_BATCH_SIZE)
        seconds = time.perf_counter() - started
    return IndexingRun(
        stage, len(files), DEFAULT_BATCH_SIZE, round(seconds, 3), round(len(files) / seconds, 3),
        round(len(files) / decode_seconds, 3),
    )


def _photo_folder(folder: Path, copies: int) -> Path:
    folder.mkdir(parents=True)
    for copy in range(copies):
        for photo in sorted(PHOTOS.glob("*.jpg")):
            shutil.copyfile(photo, folder / f"{copy:03d}-{photo.name}")
    return folder
