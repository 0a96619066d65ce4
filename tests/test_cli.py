import subprocess
import sys

import pytest
from click.testing import CliRunner

from converters.cli import cli
from converters.export.config import CONFIG_DIR


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "converters", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("command", [[], ["convert"], ["parity"], ["models"], ["bench"], ["index"], ["search"]])
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_models_lists_the_configs():
    result = CliRunner().invoke(cli, ["models"])
    assert result.output.split() == sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def test_user_error_is_one_paragraph_without_traceback():
    result = run_cli("convert", "ViT-X", "--checkpoint", "random")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Unknown model 'ViT-X'" in result.stderr and "ViT-B-16" in result.stderr


def test_debug_shows_the_traceback():
    result = run_cli("--debug", "convert", "ViT-X", "--checkpoint", "random")
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli("convert", "tiny-vit", "--checkpoint", "random", "--out", str(blocker / "bundle"))
    assert result.returncode == 2 and "Cannot write into" in result.stderr and "Traceback" not in result.stderr


def test_convert_then_parity_failure_exits_3(tmp_path):
    config = tmp_path / "strict.yaml"
    config.write_text((CONFIG_DIR / "tiny-vit.yaml").read_text() + "parity:\n  onnx_int8:\n    cosine_min: 1.0\n")
    out = tmp_path / "bundle"
    result = run_cli("convert", str(config), "--checkpoint", "random", "--out", str(out))
    assert result.returncode == 3, result.stderr
    assert "Parity failed for strict" in result.stderr
    assert "| onnx-int8 | onnxruntime | visual |" in result.stdout and "FAIL" in result.stdout
    assert (out / "parity.json").is_file() and (out / "parity.md").is_file()
    again = run_cli("parity", str(config), "--out", str(out))
    assert again.returncode == 3 and "computing the PyTorch reference" not in again.stderr


def test_full_disk_is_a_clear_error_and_leaves_nothing_listed(tmp_path, monkeypatch, capsys):
    import errno

    from converters.app.layout import BundleLayout
    from converters.app.manifest import Manifest
    from converters.cli import main
    from converters.export import onnx_io

    def full(model, path):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(onnx_io, "save", full)
    out = tmp_path / "bundle"
    monkeypatch.setattr(sys, "argv", ["cnclip", "convert", "tiny-vit", "--checkpoint", "random", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Free space or fix the permissions" in err
    assert Manifest.load(BundleLayout(out).manifest).artifacts == {}
    assert not list(out.glob("*.onnx")) and not any(BundleLayout(out).staging.iterdir())


def test_convert_help_lists_every_stage():
    from converters.app.specs import STAGE_NAMES

    result = CliRunner().invoke(cli, ["convert", "--help"])
    assert ",".join(STAGE_NAMES) in "".join(result.output.split())


@pytest.mark.parametrize("command", ["search", "search-scale"])
def test_cli_start_up_imports_no_converter_library(command):
    """Core commands run on an install without the [convert] extra (pydantic, torch…)."""
    code = (
        "import sys; from click.testing import CliRunner; from converters.cli import cli\n"
        f"assert CliRunner().invoke(cli, ['{command}', '--help']).exit_code == 0\n"
        "loaded = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'cn_clip', 'pnnx', 'onnx', 'pydantic'))\n"
        "assert not loaded, loaded"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr


def test_a_config_given_by_path_names_the_default_bundle_folder_after_the_model(tmp_path, monkeypatch):
    from converters.export.commands import bundle_config

    config = tmp_path / "configs" / "mine.yaml"
    config.parent.mkdir()
    config.write_text((CONFIG_DIR / "tiny-vit.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    loaded, out = bundle_config(str(config), None)
    assert loaded.name == "mine" and out == tmp_path / "artifacts" / "mine"
