"""Dependencies point one way and the torch-free side stays torch-free: import-linter's contracts in
pyproject.toml ([tool.importlinter]), checked on the real import graph; modules stay small; and the suite keeps
no folder an example to its end."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    return subprocess.run([command, "--no-cache"], capture_output=True, text=True, cwd=cwd)


def test_the_import_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def test_an_import_against_the_layers_breaks_a_contract(tmp_path):
    """The check can fail: a copy of the package in which the app side imports the export side is refused."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "converters", copy / "converters", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    layout = copy / "converters" / "app" / "layout.py"
    layout.write_text(layout.read_text() + "\nfrom converters.export import pipeline  # noqa\n")
    result = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, '.'); "
                             "from importlinter.cli import lint_imports_command; lint_imports_command()", "--no-cache"],
                            capture_output=True, text=True, cwd=copy)
    assert result.returncode != 0 and "converters.app.layout -> converters.export.pipeline" in result.stdout, result.stdout[-3000:]


def test_no_module_of_the_package_is_over_300_lines():
    """Small files: a module past this has grown more than one concern (split it by concern)."""
    long = {str(path.relative_to(REPO)): n for path in (REPO / "converters").rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 300}
    assert not long, long


def session_folders_per_example(source: str) -> list[str]:
    """The hypothesis tests in source that take tmp_path_factory: each example's mktemp folder lives to the
    session's end (1,100 of them, 4.4 GB, filled CI's disk once)."""
    return [node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)
            and any(isinstance(d, ast.Call) and getattr(d.func, "id", None) == "given" for d in node.decorator_list)
            and "tmp_path_factory" in [arg.arg for arg in node.args.args]]


def test_no_hypothesis_test_keeps_a_folder_an_example_to_the_sessions_end():
    found = {str(path.relative_to(REPO)): names for path in (REPO / "tests").rglob("*.py")
             if (names := session_folders_per_example(path.read_text(encoding="utf-8")))}
    assert not found, f"use tempfile.TemporaryDirectory() inside the example: {found}"
    assert session_folders_per_example("@given(x=st.none())\ndef test_x(tmp_path_factory, x):\n    pass\n") == ["test_x"]
