"""`bench`: measured speed, size and memory of every artifact, beside PyTorch and onnxruntime fp32.

    python -m converters bench ViT-B-16
    python -m converters bench tiny-vit --out /tmp/bundle --quick
"""

from __future__ import annotations

from pathlib import Path

import click

from converters.console import THREADS, bundle_option, optional_model_argument, say
from converters.export.commands import BUNDLE_HELP, bundle_config


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

