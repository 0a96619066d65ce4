"""The search-scale measurement: an index held in memory answers as the same index written and read back."""

from __future__ import annotations

import numpy as np
import pytest

from converters.bench.search_scale import VectorSource, measure_topk, time_searches, time_searches_in_memory, write_index


@pytest.mark.parametrize("backend", ["int8", "hnsw"])
def test_an_index_built_in_memory_answers_as_the_stored_one(backend, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    source = VectorSource("clustered", 3_000, 64, seed=0)
    probes = source.draw(8, stream=-1)
    truth = write_index(tmp_path, source, probes, 10)
    stored = time_searches(str(tmp_path), backend, 1, 10, probes.tolist())
    held = time_searches_in_memory(source, backend, 1, 10, probes)
    assert np.array_equal(np.array(truth), held["truth"])
    assert stored["found"] == held["found"]
    assert not list(elsewhere.iterdir()), "the held index writes nothing where it runs"
    assert np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(held["found"], truth)]) >= 0.9


def test_the_in_memory_measurement_reports_recall_against_the_exact_top():
    measured = measure_topk(2_000, 32, "int8", "random", k=10, queries=5, stored=False)
    assert measured.n == 2_000 and not measured.stored and measured.recall >= 0.9 and 0 < measured.median_ms <= measured.p90_ms <= measured.p99_ms and measured.resident_mb > 0
