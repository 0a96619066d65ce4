"""Command line: `python -m converters …` or `cnclip-convert …`.

Commands live beside what they drive and are imported only when run (or
listed), so `search` never loads the converter's libraries. Every command
prints user errors as one paragraph and exits non-zero; the traceback appears
only with `--debug`.
"""

from __future__ import annotations

import importlib
import sys
import traceback
import warnings

import click

from converters.console import say
from converters.errors import Interrupted, UserError

# name → "module:attribute" of its click command.
COMMANDS = {
    "models": "converters.export.commands:models_command",
    "convert": "converters.export.commands:convert_command",
    "sensitivity": "converters.export.commands:sensitivity_command",
    "levers": "converters.export.commands:levers_command",
    "parity": "converters.export.commands:parity_command",
    "bench": "converters.bench.command:bench_command",
    "index": "converters.search.commands:index_command",
    "search": "converters.search.commands:search_command",
    "serve": "converters.search.commands:serve_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attribute)


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
