"""`search-scale`: the search engine alone at sizes no photo folder here reaches, on synthetic vectors. A core
command: it needs none of the converter's libraries.

    python -m converters search-scale --sizes 1000000,5000000,10000000
"""

from __future__ import annotations

import os

import click

from converters.bench.search_scale import VECTOR_KINDS
from converters.console import THREADS, say
from converters.search.backends import BACKENDS


def _sizes(context: click.Context, parameter: click.Parameter, text: str) -> list[int]:
    try:
        sizes = [int(size) for size in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of whole numbers, e.g. 1000000,5000000")
    if not all(1_000 <= size <= 100_000_000 for size in sizes):
        raise click.BadParameter("each size is between 1,000 and 100,000,000 vectors")
    return sizes


@click.command("search-scale")
@click.option("--sizes", callback=_sizes, default="1000000", show_default=True, help="Vector counts, comma-separated.")
@click.option("--backend", type=click.Choice(BACKENDS), default="int8", show_default=True)
@click.option("--vectors", type=click.Choice(VECTOR_KINDS), default="clustered", show_default=True,
              help="clustered: groups in a subspace, a stand-in for photo embeddings; random: no structure at all.")
@click.option("--dim", type=click.IntRange(8, 4096), default=512, show_default=True)
@click.option("--queries", type=click.IntRange(2, 10_000), default=50, show_default=True)
@click.option("--threads", type=THREADS, default=0, show_default=True, help="Search threads (0: all usable cores).")
@click.option("--stored", is_flag=True, help="Write each index to disk and read it back as `search` opens one, "
                                             "instead of holding it in memory (hours for ten million on two cores).")
def search_scale_command(sizes: list[int], backend: str, vectors: str, dim: int, queries: int, threads: int,
                         stored: bool) -> None:
    """Time single top-10 searches over synthetic unit vectors at each size and print latency, memory and recall@10
    against an exact float32 search, naming the CPU. Held in memory, a million 512-d vectors took 1.7 GB
    (docs/cluster.md): mind the sizes asked for."""
    from converters.bench.processes import usable_cores
    from converters.bench.search_scale import measure_topk
    from converters.cpu import cpu_description

    threads = threads or usable_cores()
    held = "written to disk and read back" if stored else "held in memory"
    click.echo(f"CPU: {cpu_description()}, {os.cpu_count()} cores; {threads} threads; {dim}-d {vectors} vectors; "
               f"index {held}; {queries} queries\n")
    click.echo("| vectors | backend | p50 ms | p99 ms | CPU ms per query | open s | memory MB | recall@10 |")
    click.echo("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        say(f"search-scale: {n:,} {vectors} vectors, {backend}")
        measured = measure_topk(n, dim, backend, vectors, 10, queries, threads, stored=stored)
        click.echo(f"| {n:,} | {backend} | {measured.median_ms} | {measured.p99_ms} | {measured.median_cpu_ms} | "
                   f"{measured.open_seconds} | {measured.resident_mb} | {measured.recall} |")
