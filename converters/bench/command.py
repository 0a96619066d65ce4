"""`bench`: measured speed, size and memory of every artifact, beside PyTorch and onnxruntime fp32.

    python -m converters bench ViT-B-16
    python -m converters bench tiny-vit --out /tmp/bundle --quick
"""

from __future__ import annotations

from pathlib import Path

import click

from converters.cli import say


def register(group: click.Group) -> None:
    group.add_command(bench_command)


@click.command("bench")
@click.argument("model", metavar="MODEL")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Bundle directory (default: artifacts/MODEL).",
)
@click.option("--quick", is_flag=True, help="Smoke run for CI: few repetitions, 10k vectors for search, no 100k or 1M.")
@click.option("--threads", type=click.IntRange(0), default=0, show_default=True, help="Threads for every runtime (0: all usable cores).")
def bench_command(model: str, out: Path | None, quick: bool, threads: int) -> None:
    """Benchmark every artifact of MODEL's bundle, PyTorch fp32 included, in one run.

    Measures latency and throughput per tower, model sizes, peak memory,
    the conversion's time and memory, and the search engine; checks the
    goals; writes bench.json and bench.md beside the manifest. Needs a
    converted bundle (and parity.json for the goals). Takes minutes for
    full-size models; the timings are only as quiet as the machine.
    """
    from converters.app.layout import BundleLayout, default_bundle_dir
    from converters.bench.markdown import render_markdown
    from converters.bench.run import BenchRequest, run_bench
    from converters.export.config import load_config

    config = load_config(model)
    layout = BundleLayout(out or default_bundle_dir(config.name))
    report = run_bench(BenchRequest(model, layout.root, threads, quick), say)
    click.echo(render_markdown(report))
    say(f"wrote {layout.bench_json} and {layout.bench_md}")
