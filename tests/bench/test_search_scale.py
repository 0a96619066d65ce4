"""The search-scale measurement: an index held in memory answers as the same index written and read back."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from converters.bench.search_scale import VectorSource, measure_topk, time_searches, time_searches_in_memory, write_index
from converters.cli import cli


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


def test_the_command_prints_one_row_per_size_naming_the_cpu():
    result = CliRunner().invoke(cli, ["search-scale", "--sizes", "2_000,3000", "--dim", "32", "--queries", "3",
                                      "--threads", "1"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("CPU: ") and "index held in memory" in lines[0]
    rows = [line.split(" | ") for line in lines if line.startswith(("| 2,000 ", "| 3,000 "))]
    assert [row[0] for row in rows] == ["| 2,000", "| 3,000"]
    assert all(0 < float(row[-1].rstrip(" |")) <= 1 for row in rows), rows  # recall@10


@pytest.mark.parametrize("sizes", ["1e6", "10", "2000,,3000", "-5000"])
def test_the_command_refuses_sizes_it_cannot_measure(sizes):
    result = CliRunner().invoke(cli, ["search-scale", "--sizes", sizes])
    assert result.exit_code == 2 and "--sizes" in result.output and "Traceback" not in result.output
