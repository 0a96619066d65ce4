"""The recipe every vendor toolkit's environment is made by: find the Python it needs, make a virtualenv in its
folder (`converters.app.tool_env`), run the toolkit's own install steps, mark it complete.

A mark written first says the folder is ours, one written last says it is complete: an interrupted build never
looks finished and is redone, a folder we did not make is never deleted, and a lock keeps two builds apart.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from converters.app.fsutil import exclusive
from converters.app.tool_env import COMPLETE_MARK, STARTED_MARK, ToolEnv
from converters.errors import UserError

# Runs one command of an install step; `what` names the step in the error.
Run = Callable[[list[str], str], None]


def find_python(version: str, override: str, why: str) -> Path:
    """A Python of `version` ("3.10") with its venv module: `$override`, pythonX.Y on PATH, or pyenv's."""
    candidates = [os.environ.get(override), shutil.which(f"python{version}"),
                  *sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / f"{version}*" / "bin" / f"python{version}")))]
    wanted = tuple(int(part) for part in version.split("."))
    for candidate in filter(None, candidates):
        try:
            # ensurepip too: without it (a distribution's python lacking its venv package) `-m venv` fails later.
            probe = subprocess.run([candidate, "-c", f"import sys, ensurepip; print(sys.version_info[:2] == {wanted})"],
                                   capture_output=True, text=True)
        except OSError:
            continue
        if probe.stdout.strip() == "True":
            return Path(candidate)
    raise UserError(
        f"{why} needs Python {version} exactly with its venv module, and none was found: not {override}, "
        f"python{version} on PATH, nor ~/.pyenv/versions/{version}.*. Install one (pyenv install {version}, or a "
        f"distribution's python{version} with its venv package) or point {override} at it."
    )


def create(env: ToolEnv, python: Callable[[], Path], install: Callable[[Path, Run], None], recipe: str) -> Path:
    """Make `env` unless it is complete: a virtualenv from `python()`, then `install(root, run)`. Returns its folder."""
    root = env.root()
    root.parent.mkdir(parents=True, exist_ok=True)
    busy = f"Another `{env.make}` is building {root} right now; wait for it to finish."
    with exclusive(root.with_name(root.name + ".lock"), busy):
        if (root / COMPLETE_MARK).is_file():
            return root
        if root.exists():
            if not (root / STARTED_MARK).is_file():
                raise UserError(f"{root} exists but was not made by `{env.make}`, so it is left alone. "
                                f"Point {env.override} at an empty or missing folder.")
            shutil.rmtree(root)  # an interrupted build of ours
        interpreter = python()
        root.mkdir()
        (root / STARTED_MARK).write_text(f"{env.name} {env.version}, made by {recipe}\n")

        def run(command: list[str], what: str) -> None:
            try:
                subprocess.run(command, check=True)
            except (OSError, subprocess.CalledProcessError) as error:
                raise UserError(f"Making the {env.name} environment failed at {what}: {error}. {env.rebuild_hint()}"
                                ) from None

        run([str(interpreter), "-m", "venv", str(root)], "creating the virtualenv")
        install(root, run)
        (root / COMPLETE_MARK).write_text(f"{env.name} {env.key}\n")
    return root


def pip_install(root: Path) -> list[str]:
    """The start of a quiet pip install into the environment at `root`."""
    return [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]


def main(create_env: Callable[[], Path]) -> None:
    """What `python -m` of a recipe does (make's targets run it): make the environment, print its folder."""
    try:
        print(create_env())
    except UserError as error:
        sys.exit(f"error: {error}")
