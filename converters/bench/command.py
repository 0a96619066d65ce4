"""`bench`: measured speed, size and memory of every artifact, beside PyTorch and onnxruntime fp32.

    python -m converters bench ViT-B-16
    python -m converters bench tiny-vit --out /tmp/bundle --quick

`search-scale`: the search engine alone at sizes no photo folder here reaches, on synthetic vectors.

    python -m converters search-scale --sizes 1000000,5000000,10000000
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from converters.bench.search_scale import VECTOR_KINDS
from converters.console import THREADS, bundle_option, optional_model_argument, say
from converters.export.commands import BUNDLE_HELP, bundle_config
from converters.search.backends import BACKENDS


@click.command("bench")
@optional_model_argument
@bundle_option(BUNDLE_HELP)
@click.option("--quick", is_flag=True, help="Smoke run for CI: few repetitions, 10k vectors for search, no 100k or 1M.")
@click.option("--threads", type=THREADS, default=0, show_default=True, help="Threads for every runtime (0: all usable cores).")
def bench_command(model: str | None, bundle: Path | None, quick: bool, threads: int) -> None:
    """Benchmark every artifact of MODEL's bundle (or the bundle at --bundle), PyTorch fp32 included, in one run.

    Measures latency and throughput per tower, model sizes, peak memory,
    the conversion's time and memory, and the search engine; checks the
    goals; writes bench.json and bench.md beside the manifest. Needs a
    converted bundle (and parity.json for the goals). Takes minutes for
    full-size models; the timings are only as quiet as the machine.
    """
    from converters.app.bundle import Bundle
    from converters.app.layout import BundleLayout
    from converters.bench.markdown import render_markdown
    from converters.bench.run import BenchRequest, run_bench

    config, out = bundle_config(model, bundle)
    layout = BundleLayout(out)
    Bundle.open(layout.root).manifest.require_model(config.name)  # before minutes of measuring, not after
    with layout.exclusive():  # a conversion into the bundle meanwhile would change what is measured
        report = run_bench(BenchRequest(config, layout.root, threads, quick), say)
    click.echo(render_markdown(report))
    say(f"wrote {layout.bench_json} and {layout.bench_md}")


def _sizes(context: click.Context, parameter: click.Parameter, text: str) -> list[int]:
    try:
        sizes = [int(size.replace("_", "")) for size in text.split(",")]
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
    from converters.bench.search_scale import measure_topk
    from converters.cpu import cpu_description

    threads = threads or len(os.sched_getaffinity(0))
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
