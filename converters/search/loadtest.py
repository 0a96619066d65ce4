"""A bounded load run against `serve` on loopback (issue 26): simulated household users on an asyncio httpx client.

    python -m converters.search.loadtest --bundle BUNDLE --photos 100000 --users 32 --seconds 120
    python -m converters.search.loadtest --bundle BUNDLE --photos 100000 --users 8 --seconds 60 --no-pause

It builds a library in --workdir: --photos hard links to the shipped test photos (real files, so
thumbnails are real work) and an index of them with synthetic unit embeddings made for the bundle's
artifact, starts `serve` on a free loopback port, and runs the users for --seconds: text searches,
uploads, "more like this", thumbnails, status, each user pausing 1–3 s between actions (none with
--no-pause, which finds the saturation throughput). With --with-index, `index` adds and removes a
batch of photos in the same library in a loop meanwhile, at a lower CPU priority (nice 10). The report: requests/s, p50/p95/p99 per
route, errors, the server's memory over the run, the CPU, and a sample of the text searches' answers
checked against an exact single-threaded scan of the committed state that gave them (the command
fails when one differs). Only loopback; bounded in time and users.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import click
import httpx
import numpy as np

from converters.app.bundle import DEFAULT_STAGE, Bundle
from converters.cpu import cpu_description
from converters.data import PARITY_SET_DIR
from converters.search.network import KEEP_ALIVE_SECONDS, free_port
from converters.search.photos import PhotoRow
from converters.search.query import text_query
from converters.search.stamp import ArtifactStamp
from converters.search.store import IndexDatabase, load_index
from converters.search.vectors import normalize_rows

MAX_USERS, MAX_SECONDS = 64, 900
TEXTS = ("猫", "海边的日落", "草地", "一杯咖啡", "火箭发射", "宇航员", "雪山", "生日蛋糕", "a dog", "孩子在公园")
ACTIONS = {"search": 0.5, "thumbs": 0.2, "similar": 0.1, "upload": 0.1, "status": 0.1}
SAMPLED, MAX_SAMPLES = 0.2, 2_000  # the share of text searches whose answers are checked after the run
INDEX_BATCH = 16  # photos `index_loop` adds and removes per run, and `index`'s batch: one commit each
# `index` runs at the CPU priority the household page's unit gives it (Nice=10): on a box with two cores the
# server's requests then come first, and the indexing takes what they leave.
INDEX_NICENESS = 10
MEMORY_WINDOW = 60  # seconds averaged at each end of the run: the first and last minute


def build_library(workdir: Path, bundle: Path, count: int, seed: int = 0) -> tuple[Path, Path]:
    """(photos folder, index folder): `count` hard links to the shipped photos, indexed with synthetic vectors."""
    photos, index_dir = workdir / "photos", workdir / "index"
    shutil.rmtree(workdir, ignore_errors=True)
    photos.mkdir(parents=True)
    sources = sorted(PARITY_SET_DIR.joinpath("images").glob("*.jpg"))
    opened = Bundle.open(bundle)
    stamp = ArtifactStamp.of(opened, DEFAULT_STAGE)
    database = IndexDatabase(index_dir, create_for=stamp)
    run = database.start_run(str(photos.resolve()))
    rng = np.random.default_rng(seed)
    for start in range(0, count, 10_000):
        rows = []
        vectors = normalize_rows(rng.standard_normal((min(10_000, count - start), stamp.dim))).astype(np.float16)
        for i, vector in enumerate(vectors):
            path = photos.resolve() / f"{(start + i) // 1000:03d}" / f"{start + i:06d}.jpg"
            path.parent.mkdir(exist_ok=True)
            os.link(sources[(start + i) % len(sources)], path)
            info = path.stat()
            rows.append(PhotoRow(str(path), info.st_size, info.st_mtime_ns, int(info.st_mtime), False, 1, 1, 0, vector))
        database.write(run, str(photos.resolve()), rows, [], [])
    database.finish_run(run)
    database.close()
    return photos, index_dir


class Stats:
    def __init__(self):
        self.latency, self.statuses, self.errors = defaultdict(list), defaultdict(int), defaultdict(int)
        self.answers: list[tuple[str, dict]] = []  # (query, the JSON answer) of sampled text searches

    def record(self, route: str, started: float, status: int | str) -> None:
        """`status`: the HTTP status, or the name of the client's error when there was no response."""
        self.latency[route].append(time.perf_counter() - started)
        self.statuses[(route, status)] += 1
        if isinstance(status, str) or status >= 500:
            self.errors[route] += 1


async def timed(stats: Stats, route: str, request) -> httpx.Response | None:
    started = time.perf_counter()
    try:
        response = await request
    except httpx.HTTPError as error:
        stats.record(route, started, type(error).__name__)
        return None
    stats.record(route, started, response.status_code)
    return response


async def user(client: httpx.AsyncClient, stats: Stats, deadline: float, pace: bool, rng: random.Random,
               sampling: random.Random, upload: bytes) -> None:
    """`rng` draws the actions, `sampling` which answers are kept for the check: runs with one seed do the same."""
    ids: list[int] = []
    while time.perf_counter() < deadline:
        action = rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
        if action in ("thumbs", "similar") and not ids:
            action = "search"
        if action == "search":
            text = rng.choice(TEXTS)
            answer = await timed(stats, "text search", client.get("/api/search", params={"q": text}))
            if answer is not None and answer.status_code == 200:
                found = answer.json()
                ids = [hit["id"] for hit in found["hits"]]
                if sampling.random() < SAMPLED and len(stats.answers) < MAX_SAMPLES:
                    stats.answers.append((text, found))
        elif action == "thumbs":
            for photo_id in ids[:8]:
                await timed(stats, "thumbnail", client.get(f"/thumb/{photo_id}"))
        elif action == "similar":
            await timed(stats, "more like this", client.get(f"/api/similar/{rng.choice(ids)}"))
        elif action == "upload":
            await timed(stats, "image search", client.post("/api/search/image", files={"image": ("q.jpg", upload, "image/jpeg")}))
        else:
            await timed(stats, "status", client.get("/api/status"))
        if pace:
            await asyncio.sleep(rng.uniform(1, 3))


async def drive(base: str, users: int, seconds: float, pace: bool, seed: int) -> Stats:
    stats, deadline = Stats(), time.perf_counter() + seconds
    upload = PARITY_SET_DIR.joinpath("images", "cat_chelsea.jpg").read_bytes()
    # httpx's default keep-alive expiry was serve's own: a request sent on a connection the server was closing
    # that moment got no response (RemoteProtocolError, 1 in 15,000 requests at saturation).
    limits = httpx.Limits(max_connections=users, keepalive_expiry=KEEP_ALIVE_SECONDS - 1)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        await asyncio.gather(*(user(client, stats, deadline, pace, random.Random(seed + i), random.Random(f"answers {seed + i}"), upload) for i in range(users)))
    return stats


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def index_loop(photos: Path, index_dir: Path, stop: float) -> int:
    """Adds INDEX_BATCH photos and removes the previous run's per `index` run, until `stop`; returns the runs made.
    Every run adds copies of the same files: each commit leaves the library alone or the library and those."""
    sources, runs = sorted(PARITY_SET_DIR.joinpath("images").glob("*.jpg")), 0
    incoming = photos / "incoming"
    incoming.mkdir(exist_ok=True)
    while time.perf_counter() < stop:
        for i in range(INDEX_BATCH):
            shutil.copy(sources[i % len(sources)], incoming / f"run{runs:04d}-{i:02d}.jpg")
        for old in sorted(incoming.glob(f"run{runs - 1:04d}-*.jpg")):
            old.unlink()
        subprocess.run(["nice", "-n", str(INDEX_NICENESS), sys.executable, "-m", "converters", "index", str(photos),
                        "--index", str(index_dir), "--threads", "1", "--batch-size", str(INDEX_BATCH)],
                       check=True, capture_output=True)
        runs += 1
    return runs


def check_answers(index_dir: Path, bundle: Path, answers: list[tuple[str, dict]], library: int) -> list[str]:
    """What is wrong with each sampled answer, compared with an exact single-threaded scan of the state that gave it.

    `index_loop` removes the previous run's photos before it adds copies of the same files, which SQLite gives the
    ids it gave the removed ones (a removed last row's rowid is reused): so the index is only ever in two states,
    the first `library` photos alone or with those copies, told apart by the answer's photo count, and the final
    index holds both. The server ranks its int8 scan's candidates: an exact top-k it missed counts as wrong."""
    index = load_index(index_dir)
    opened = Bundle.open(bundle)
    embedder = opened.embedder(index.artifact.stage, 1)
    vectors = index.vectors.astype(np.float32)
    states = {library: library, len(index): len(index)}
    queries = {text: text_query(opened, embedder, text)[0] for text in {text for text, _ in answers}}
    wrong = []
    for text, answer in answers:
        rows = states.get(answer["indexed"])
        if rows is None:
            wrong.append(f"{text}: from no committed state ({answer['indexed']} photos)")
            continue
        scores = vectors[:rows] @ queries[text]
        best = np.argsort(-scores, kind="stable")[: len(answer["hits"])]
        ids = [hit["id"] for hit in answer["hits"]]
        given = index.rows_of(np.array(ids, np.int64))
        # Equal scores may come in either order; anything else is a wrong answer.
        if np.any((given < 0) | (given >= rows)) or not np.allclose(scores[given], scores[best], rtol=0, atol=1e-6):
            wrong.append(f"{text}: ids {ids}, exact scan {index.rowids[best].tolist()}")
    return wrong


def report(stats: Stats, seconds: float, memory: list[tuple[float, float]], runs: int | None, wrong: list[str]) -> str:
    """`memory`: (seconds into the run, resident MB) samples, about one a second (fewer when the loop is busy)."""
    total = sum(len(v) for v in stats.latency.values())
    lines = [f"CPU: {cpu_description()}, {os.cpu_count()} cores", f"{total} requests in {seconds:.0f} s: {total / seconds:.1f}/s",
             "| route | requests | req/s | p50 ms | p95 ms | p99 ms | errors (5xx or failed) |", "|---|---|---|---|---|---|---|"]
    for route, values in sorted(stats.latency.items()):
        p50, p95, p99 = np.percentile(np.array(values) * 1000, [50, 95, 99])
        lines.append(f"| {route} | {len(values)} | {len(values) / seconds:.1f} | {p50:.0f} | {p95:.0f} | {p99:.0f} | {stats.errors[route]} |")
    lines.append("statuses: " + ", ".join(f"{route} {status}: {n}" for (route, status), n in sorted(stats.statuses.items(), key=str)))
    # The first minute against the last (a third of a shorter run each); one sample a second.
    window = min(MEMORY_WINDOW, seconds / 3)
    first = np.mean([mb for at, mb in memory if at < window] or [memory[0][1]])
    last = np.mean([mb for at, mb in memory if at > seconds - window] or [memory[-1][1]])
    lines.append(f"server memory: {first:.0f} MB in the first {window:.0f} s, {last:.0f} MB in the last {window:.0f} s "
                 f"({(last / first - 1) * 100:+.1f} %), peak {max(mb for _, mb in memory):.0f} MB")
    # Growth that levels off is warm-up; growth that goes on with the requests is a leak.
    minutes = [[mb for at, mb in memory if start <= at < start + MEMORY_WINDOW]
               for start in range(0, int(seconds), MEMORY_WINDOW)]
    lines.append("server memory by minute (MB): " + ", ".join(f"{np.mean(mbs):.0f}" for mbs in minutes if mbs))
    if runs is not None:
        lines.append(f"`index` runs meanwhile ({INDEX_BATCH} added, {INDEX_BATCH} removed each): {runs}")
    lines.append(f"text search answers checked against an exact single-threaded scan of the committed state that gave "
                 f"them: {len(stats.answers)}, wrong: {len(wrong)}")
    lines.extend(f"  wrong: {line}" for line in wrong[:10])
    return "\n".join(lines)


@contextlib.contextmanager
def serving(index_dir: Path, log: Path, host: str = "127.0.0.1", env: dict | None = None, python: str | Path = sys.executable,
            cwd: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """The `serve` command of `python` in a process of its own on a free port of `host`; yields its base URL and the
    process once it says it is ready. Its messages go to `log`, not to a pipe nobody reads once it has started (a
    full pipe would stop it)."""
    port = free_port(host)
    with log.open("w") as sink:
        server = subprocess.Popen([python, "-m", "converters", "serve", "--index", str(index_dir), "--host", host,
                                   "--port", str(port)], stdout=sink, stderr=sink, env=env, cwd=cwd)
    try:
        wait_until_serving(server, log)
        yield f"http://{host}:{port}", server
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_until_serving(server: subprocess.Popen, log: Path, seconds: float = 300) -> None:
    """Wait for serve's ready line in its log (loading a large index takes a while)."""
    deadline = time.monotonic() + seconds
    while "photos on http://" not in (text := log.read_text(errors="replace")):
        if server.poll() is not None or time.monotonic() > deadline:
            said = text.strip()[-1000:] or "nothing"
            state = (f"exit status {server.returncode}" if server.returncode is not None
                     else f"not ready after {seconds:.0f} s")
            raise click.ClickException(f"serve did not start ({state}; {log}): {said}")
        time.sleep(0.1)


@click.command()
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--photos", "count", type=click.IntRange(1, 1_000_000), default=100_000, show_default=True)
@click.option("--users", type=click.IntRange(1, MAX_USERS), default=32, show_default=True)
@click.option("--seconds", type=click.IntRange(5, MAX_SECONDS), default=120, show_default=True)
@click.option("--no-pause", is_flag=True, help="No pause between actions: the saturation run.")
@click.option("--with-index", is_flag=True, help="Run `index` adding and removing photos meanwhile.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("/tmp/cnclip-load"), show_default=True)
def main(bundle: Path, count: int, users: int, seconds: int, no_pause: bool, with_index: bool, workdir: Path) -> None:
    photos, index_dir = build_library(workdir, bundle, count)
    log = workdir / "serve.log"
    with serving(index_dir, log) as (base, server):
        started = len(log.read_text(errors="replace"))
        memory, runs = [], None

        async def sample(until: float) -> None:
            start = until - seconds
            while (now := time.perf_counter()) < until:
                memory.append((now - start, resident_mb(server.pid)))
                await asyncio.sleep(1)

        async def everything() -> tuple[Stats, int | None]:
            until = time.perf_counter() + seconds
            indexing = asyncio.to_thread(index_loop, photos, index_dir, until) if with_index else asyncio.sleep(0, None)
            stats, _, made = await asyncio.gather(drive(base, users, seconds, not no_pause, 0),
                                                  sample(until), indexing)
            return stats, made

        stats, runs = asyncio.run(everything())
        wrong = check_answers(index_dir, bundle, stats.answers, count)
        said = log.read_text(errors="replace")[started:].splitlines()
        click.echo(report(stats, seconds, memory, runs, wrong))
        click.echo(f"serve's messages during the run: {len(said)} ({log})" + "".join(f"\n  {line}" for line in said[:10]))
        if wrong:
            raise click.ClickException(f"{len(wrong)} sampled answers differ from an exact scan of their index state.")


if __name__ == "__main__":
    main()
