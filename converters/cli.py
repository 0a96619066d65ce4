"""Command line: `python -m converters …` or `cnclip-convert …`.

Commands live beside what they drive and are imported only when run (or
listed), so `search` never loads the converter's libraries. Every command
prints user errors as one paragraph and exits non-zero; the traceback appears
only with `--debug`.
"""

from __future__ import annotations

import importlib
import re
import sys
import traceback
import warnings
from importlib import metadata

import click

from converters.console import say
from converters.errors import Interrupted, UserError

# name → ("module:attribute" of its click command, the extra it needs beyond the core install or None).
COMMANDS = {
    "models": ("converters.export.commands:models_command", "convert"),
    "convert": ("converters.export.commands:convert_command", "convert"),
    "sensitivity": ("converters.export.commands:sensitivity_command", "convert"),
    "levers": ("converters.export.commands:levers_command", "convert"),
    "parity": ("converters.export.commands:parity_command", "convert"),
    "immich": ("converters.export.commands:immich_command", "convert"),
    "bench": ("converters.bench.command:bench_command", "convert"),
    "search-scale": ("converters.bench.scale_command:search_scale_command", None),
    "index": ("converters.search.commands:index_command", None),
    "search": ("converters.search.commands:search_command", None),
    "serve": ("converters.search.commands:serve_command", None),
    "immich-serve": ("converters.search.immich_command:immich_serve_command", None),
    "embed": ("converters.cluster.commands:embed_command", "cluster"),
}
DISTRIBUTION = "cnclip-converters"


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, extra = COMMANDS[name]
        missing = missing_requirements(extra)
        if missing:
            return _needs_extra(name, extra, missing)
        module, attribute = target.split(":")
        return getattr(importlib.import_module(module), attribute)


def missing_requirements(extra: str | None) -> list[str]:
    """The distributions of an extra that are not installed, read from the package's own metadata
    (none where there is no metadata to read, as when run from a source tree never installed)."""
    if extra is None:
        return []
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []
    wanted = [re.match(r"[\w.-]+", r).group() for r in requirements if re.search(rf"extra\s*==\s*['\"]{extra}['\"]", r)]
    return [name for name in wanted if not _installed(name)]


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def _needs_extra(name: str, extra: str, missing: list[str]) -> click.Command:
    """A stand-in for a command whose extra is missing: listed in --help, and refusing with the install line when run
    (rather than a ModuleNotFoundError traceback from deep inside the converter)."""
    message = (f"{name} needs the [{extra}] extra: pip install '{DISTRIBUTION}[{extra}]' "
               f"(not installed: {', '.join(missing)}).")

    def refuse() -> None:
        raise UserError(message)

    return click.Command(
        name, callback=refuse, help=message, short_help=f"(needs the [{extra}] extra)", add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-paragraph errors.")
def cli(debug: bool) -> None:
    """Convert Chinese-CLIP checkpoints into verified ONNX, int8 and ncnn artifacts, and search photos with them.

    MODEL is a config name (see `models`) or a path to a config YAML file.
    """


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    say(f"warning: {message}")


def main() -> None:
    debug = "--debug" in sys.argv
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning
        _run(debug)


def _run(debug: bool) -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort as abort:
        say("interrupted; finished work is kept and a re-run continues from it.")
        cause = abort.__cause__
        sys.exit(128 + cause.signum if isinstance(cause, Interrupted) else 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        say(f"error: {exc}")
        sys.exit(exc.exit_code)
    except OSError as exc:
        # A full disk or a permission change mid-run: staging folders are removed
        # on the way out and the manifest lists only what was finished.
        if debug:
            traceback.print_exc()
        where = f" ({exc.filename})" if exc.filename else ""
        say(f"error: {exc.strerror or exc}{where}. Free space or fix the permissions, then run the same command again.")
        sys.exit(2)
