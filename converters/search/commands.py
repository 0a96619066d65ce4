"""`index` and `search`: the reference photo search engine on the command line.

    python -m converters index ~/Pictures --bundle artifacts/ViT-B-16 --stage ncnn-int8
    python -m converters search "海边的日落" --top 10 --since 2025-01-01 --html results.html
    python -m converters search --image query.jpg --json
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import click
from tqdm import tqdm

from converters.app.bundle import DEFAULT_STAGE, Bundle
from converters.app.fsutil import atomic_write_text
from converters.app.specs import STAGE_NAMES
from converters.console import bundle_option, library_argument, say, threads_option
from converters.errors import Interrupted, UserError
from converters.search.backends import APPROXIMATE_FROM, AUTO, BACKENDS, DEFAULT_BACKEND, HnswScan, backend_for
from converters.search.query import Searcher, TimeRange, image_query, text_query
from converters.search.render import one_line, render_html, render_json, render_table
from converters.search.stamp import weights_warning
from converters.search.store import load_index, read_artifact
from converters.search.updater import DEFAULT_BATCH_SIZE, DEFAULT_INDEX_DIR, IndexUpdater, UpdateReport

BUNDLE_HELP = "Bundle directory, e.g. artifacts/ViT-B-16 (default: the bundle the index was made with)"
index_option = click.option(
    "--index", "index_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_INDEX_DIR,
    show_default=True, help="Index directory (env CNCLIP_INDEX).",
)
bundle_with_old_name = bundle_option(BUNDLE_HELP, old_name="--artifacts")


@click.command("index")
@library_argument
@bundle_with_old_name
@click.option(
    "--stage", type=click.Choice(STAGE_NAMES), default=None,
    help=f"Which of the bundle's artifacts embeds the photos (default: the index's, else {DEFAULT_STAGE}).",
)
@index_option
@click.option(
    "--batch-size", type=click.IntRange(1), default=DEFAULT_BATCH_SIZE, show_default=True, help="Photos per model call."
)
@threads_option(0, "Inference")
def index_command(
    photos: Path | str, bundle: Path | None, stage: str | None, index_dir: Path, batch_size: int, threads: int,
) -> None:
    """Index the photos under PHOTOS (recursively) for `search`: a folder, or a URL fsspec reads
    (s3://bucket/photos, with s3fs installed and credentials where it looks for them; docs/cluster.md).

    A re-run embeds only new or changed files and drops deleted ones; every
    batch is saved as it is embedded, so an interrupted run keeps its progress. Unreadable files are skipped and
    listed at the end. One index can hold several folders, all embedded by
    the same artifact.
    """
    bundle, stage = _indexing_artifact(index_dir, bundle, stage)
    with IndexUpdater(index_dir, bundle, stage, threads) as updater, _stop_signals_interrupt():
        plan = updater.plan(photos)
        say(f"{one_line(plan.root)}: {len(plan.to_embed)} to embed, {plan.unchanged} unchanged, {len(plan.gone)} gone since last time")
        with tqdm(total=len(plan.to_embed), unit="photo", disable=not plan.to_embed) as bar:
            report = updater.run(plan, bar.update, batch_size)
    _report_update(report)
    if backend_for(AUTO, report.total) == HnswScan.name:
        _prepare_graph(index_dir, threads)


def _prepare_graph(index_dir: Path, threads: int) -> None:
    """Build the approximate index now, so that the first search of a large library does not wait for it."""
    from converters.search.hnsw import open_graph

    index = load_index(index_dir)
    say(f"approximate index (HNSW graph) for {len(index):,} photos: search walks it from {APPROXIMATE_FROM:,} photos on")
    with tqdm(total=len(index), unit="photo") as bar:
        open_graph(index, threads, bar.update)


@contextlib.contextmanager
def _stop_signals_interrupt():
    """SIGTERM (what `timeout`, systemd and `docker stop` send) and SIGHUP (a closed terminal) stop
    indexing as Ctrl-C does: the photos embedded so far are saved."""

    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _indexing_artifact(index_dir: Path, bundle: Path | None, stage: str | None) -> tuple[Bundle, str]:
    existing = read_artifact(index_dir)
    if existing is None:
        if bundle is None:
            raise click.UsageError(f"There is no index at {index_dir} yet: give --bundle BUNDLE to create one.")
        return Bundle.open(bundle), stage or DEFAULT_STAGE
    # A --stage other than the index's is refused by IndexUpdater, which compares the artifacts.
    return existing.open_bundle(bundle, index_dir), stage or existing.stage


def _report_update(report: UpdateReport) -> None:
    say(
        f"{one_line(str(report.index_file))}: {report.total} photos ({report.added} added, {report.updated} updated, "
        f"{report.removed} removed, {report.unchanged} unchanged, {len(report.skipped)} skipped)"
    )
    for reason in report.skipped:
        say(f"skipped: {one_line(reason)}")  # a newline in a file name would forge a line


@click.command("search")
@click.argument("text", required=False)
@click.option(
    "--image", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Search by this photo instead of text."
)
@click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True, help="How many photos to show.")
@click.option("--since", default=None, metavar="DATE", help="Only photos taken on or after DATE (YYYY-MM-DD[THH:MM]).")
@click.option(
    "--until", default=None, metavar="DATE", help="Only photos taken up to DATE; a bare date includes that whole day."
)
@index_option
@bundle_with_old_name
@click.option(
    "--backend", type=click.Choice([AUTO, *BACKENDS]), default=DEFAULT_BACKEND, show_default=True,
    help=f"auto: int8 below {APPROXIMATE_FROM:,} photos, hnsw from there on; int8: scan of int8 codes; exact: float32 "
    "over every vector; faiss: needs faiss-cpu; hnsw: approximate graph, built on first use and kept in the index folder.",
)
@threads_option(1, "Scan")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table.")
@click.option(
    "--html", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write a page of thumbnails here."
)
def search_command(
    text: str | None, image: Path | None, top: int, since: str | None, until: str | None, index_dir: Path,
    bundle: Path | None, backend: str, threads: int, as_json: bool, html: Path | None,
) -> None:
    """Find photos by TEXT (Chinese or mixed) or by a photo (--image).

    The date of a photo is its EXIF capture time, else its file's
    modification time; dates without a time zone are local time.
    """
    if (text is None) == (image is None):
        raise click.UsageError("Give either a TEXT query or --image FILE, not both and not neither.")
    time_range = TimeRange.parse(since, until)
    index = load_index(index_dir)
    opened = index.artifact.open_bundle(bundle, index.file)
    embedder = opened.embedder(index.artifact.stage)
    if warning := weights_warning(opened):
        say(f"warning: {warning}")
    query = text_query(opened, embedder, text) if image is None else image_query(opened, embedder, image)
    label = text if image is None else f"image: {image}"
    result = Searcher(index, backend, threads).find(label, query, top, time_range)
    if html is not None:
        try:
            atomic_write_text(html, render_html(result))
        except OSError as error:  # the error names the temporary file beside the target, not the target
            raise UserError(f"Cannot write {html}: {error.strerror or error}. Choose another --html path.") from None
        say(f"wrote {one_line(str(html))}")
    click.echo(render_json(result) if as_json else render_table(result))
    if not index.complete:
        say("this index is from an interrupted `index` run; run it again to finish indexing.")


@click.command("serve")
@index_option
@bundle_with_old_name
@click.option(
    "--host", default="127.0.0.1", show_default=True,
    help="Address to listen on. Loopback (127.0.0.0/8, ::1, localhost) answers this machine only; any other "
    "(0.0.0.0: every interface) needs a password (--password-file or $CNCLIP_PASSWORD) or --no-auth.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to listen on.")
@threads_option(1, "Inference and scan")
@click.option(
    "--password-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="A file whose first line is the password for signing in (else $CNCLIP_PASSWORD). Only a salted hash is kept.",
)
@click.option("--no-auth", is_flag=True, help="Serve a non-loopback address without a password: anyone who reaches it sees every photo.")
@click.option(
    "--allowed-host", "allowed", multiple=True, metavar="NAME",
    help="A Host name the server answers besides loopback and --host (repeatable), e.g. nas.local; with "
    "--host 0.0.0.0 and none given, any name is answered.",
)
def serve_command(index_dir: Path, bundle: Path | None, host: str, port: int, threads: int, password_file: Path | None,
                  no_auth: bool, allowed: tuple[str, ...]) -> None:
    """Serve the index as a web page: search by text or by a dropped photo, dates, "more like this".

    The page, a JSON API under /api (search, search/image, similar, status) and
    the photos' thumbnails; only files inside the indexed folders (or under the indexed URLs) are served.
    A re-run of `index` is picked up without a restart.
    """
    from converters.search.auth import read_password
    from converters.search.library import Library, map_large_blocks_apart
    from converters.search.network import allowed_hosts, check_port, is_loopback, run_server
    from converters.search.serve import Security, create_app

    password = read_password(password_file)
    if password is None and not no_auth and not is_loopback(host):
        raise UserError(
            f"Listening on {host} would let every device that reaches it search and open the indexed photos. "
            "Set a password (--password-file FILE, or the variable CNCLIP_PASSWORD), or pass --no-auth to serve "
            "without one on purpose, or listen on 127.0.0.1."
        )
    map_large_blocks_apart()  # a server runs for months, reloading its index at every commit
    library = Library.open(index_dir, bundle, threads)
    check_port(host, port)
    if password is None and not is_loopback(host):
        say(f"warning: listening on {host} without a password (--no-auth): every device that reaches it can search and open these photos.")
    snapshot = library.current()
    if snapshot.weights_warning:
        say(f"warning: {snapshot.weights_warning}")
    security = Security(password, tuple(allowed_hosts(host, allowed)))
    ready = f"{len(snapshot.index)} photos on http://{_url_host(host)}:{port}/ ({'password required' if password else 'no password'}; Ctrl-C stops)"
    # Bounded: a crowd of slow clients gets 503s instead of exhausting the process's files.
    run_server(create_app(library, security), host, port, ready, limit_concurrency=256)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
