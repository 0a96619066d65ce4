"""The load run: bounded, on loopback, and its check of answers catches a wrong one."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import click
import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from converters.search.library import Library
from converters.search.loadtest import Stats, build_library, check_answers, main, report, timed, wait_until_serving
from converters.search.serve import create_app

ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)


@ON_TINY_VIT
def test_a_short_run_with_index_committing_checks_its_answers(tiny_bundle, tmp_path):
    args = ["--bundle", str(tiny_bundle), "--photos", "2000", "--users", "4", "--seconds", "8", "--no-pause",
            "--with-index", "--workdir", str(tmp_path / "load")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    checked, wrong = map(int, re.search(r"gave them: (\d+), wrong: (\d+)", result.output).groups())
    assert checked > 0 and wrong == 0
    assert int(re.search(r"removed each\): (\d+)", result.output).group(1)) >= 1
    assert "| text search |" in result.output and "server memory:" in result.output
    assert "serve's messages during the run: 0" in result.output


@ON_TINY_VIT
def test_the_answer_check_catches_swapped_hits_a_foreign_id_and_an_unknown_state(tiny_bundle, tmp_path):
    _, index_dir = build_library(tmp_path / "load", tiny_bundle, 300)
    client = TestClient(create_app(Library.open(index_dir, None, 1)), base_url="http://localhost")
    answer = client.get("/api/search", params={"q": "猫"}).json()
    assert check_answers(index_dir, tiny_bundle, [("猫", answer)], 300) == [] and answer["index_version"]
    hits = answer["hits"]
    swapped = answer | {"hits": [hits[1], hits[0], *hits[2:]]}
    foreign = answer | {"hits": [hits[0] | {"id": 10_000}, *hits[1:]]}
    unknown = answer | {"indexed": answer["indexed"] + 1}
    wrong = check_answers(index_dir, tiny_bundle, [("猫", swapped), ("猫", foreign), ("猫", unknown)], 300)
    assert len(wrong) == 3 and "no committed state" in wrong[2]


@pytest.mark.parametrize("seconds, window", [(300, 60), (30, 10)])
def test_memory_growth_compares_the_first_minute_with_the_last(seconds, window):
    """Warm-up in the first seconds is averaged over a minute, and growth in the last minute is not diluted; the
    samples are placed by their time, so a busy loop that samples less often does not stretch the window."""
    level = lambda at: 200.0 if at < window else 220.0 if at >= seconds - window else 300.0  # noqa: E731
    memory = [(at, level(at)) for at in np.arange(0, seconds, 0.5 if seconds > 100 else 1.0)]
    text = report(Stats(), seconds, memory, None, [])
    line = next(line for line in text.splitlines() if "server memory:" in line)
    assert f"200 MB in the first {window} s, 220 MB in the last {window} s (+10.0 %), peak 300 MB" in line
    if seconds == 300:
        assert "server memory by minute (MB): 200, 300, 300, 300, 220" in text


def test_a_request_without_a_response_is_an_error_named_by_the_clients_exception():
    async def refused():
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    stats = Stats()
    assert asyncio.run(timed(stats, "thumbnail", refused())) is None
    text = report(stats, 10, [(0.0, 100.0), (9.0, 100.0)], None, [])
    assert "thumbnail RemoteProtocolError: 1" in text and stats.errors["thumbnail"] == 1


def test_a_server_that_does_not_start_is_reported_in_its_own_words(tmp_path):
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit('No index at /nowhere')"], stderr=sink)
    said = r"serve did not start \(exit status 1; .*serve.log\): No index at /nowhere"
    with pytest.raises(click.ClickException, match=said):
        wait_until_serving(server, log)
