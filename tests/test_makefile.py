"""The Makefile as a newcomer meets it: `make help` names every target, and mistakes stop before anything runs.

Run with `make -n` (print, never run) from the repository, so nothing is installed or converted.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from converters.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]


def make(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *arguments], capture_output=True, text=True, cwd=REPO)


def phony_targets() -> list[str]:
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    (line,) = re.findall(r"^\.PHONY:(.*)$", text, re.MULTILINE)
    return line.split()


def test_help_names_every_target_and_every_command():
    shown = make("help").stdout
    named = set(re.findall(r"(?:make|\|) ([a-z-]+)", shown))
    assert set(phony_targets()) - {"help"} <= named, set(phony_targets()) - named
    # Each CLI command has its make target, except `models`, whose answer help prints itself.
    assert set(COMMANDS) - {"models"} <= named and "\nmodels: " in shown and "tiny-vit" in shown


@pytest.mark.parametrize("weights", ["Random", "rand", "random stress"])
def test_unknown_weights_are_an_error_naming_the_allowed_values(weights):
    result = make("-n", "convert", f"WEIGHTS={weights}")
    assert result.returncode != 0 and result.stdout == ""
    assert f"WEIGHTS='{weights}' is unknown" in result.stderr and "WEIGHTS=random or WEIGHTS=stress" in result.stderr


def test_the_readme_first_command_converts_random_weights():
    # -B: what a fresh machine runs, whatever this checkout has installed already.
    commands = make("-n", "-B", "convert", "MODEL=ViT-B-16", "WEIGHTS=random").stdout.splitlines()
    assert commands[-1].split() == [".venv/bin/python", "-m", "converters", "convert", "ViT-B-16", "--checkpoint", "random"]
    assert any("pip install --quiet -e '.[convert]'" in line for line in commands)
    assert not any("[convert,test]" in line or "[dev]" in line for line in commands), "convert installs the test tools"


def test_test_core_leaves_out_exactly_the_markers_it_says_other_targets_run():
    markers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    described = dict(line.split(":", 1) for line in markers)
    (pytest_line,) = [line for line in make("-n", "test-core").stdout.splitlines() if "-m pytest" in line]
    left_out = set(re.findall(r"not (\w+)", pytest_line))
    assert left_out == {name for name, text in described.items() if "make test-core" not in text}
    for name in left_out:
        assert f"make test-{name}" in described[name] and f"test-{name}" in phony_targets()
