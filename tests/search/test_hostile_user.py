"""The command-line defects a hostile-user pass found (issue 26): each is reproduced here as it was found."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from converters.app.fsutil import atomic_write_text
from converters.cli import cli
from converters.data import PARITY_SET_DIR
from converters.errors import ArtifactError
from converters.console import MAX_THREADS

PHOTOS = PARITY_SET_DIR / "images"
PHOTO_COUNT = len(list(PHOTOS.glob("*.jpg")))
REPO = Path(__file__).resolve().parents[2]
ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)


def invoke(*args) -> click.testing.Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


@pytest.fixture
def indexed(tiny_bundle, tmp_path) -> Path:
    result = invoke("index", PHOTOS, "--bundle", tiny_bundle, "--index", tmp_path / "index")
    assert result.exit_code == 0, result.output
    return tmp_path / "index"


@pytest.mark.parametrize("command", [["index", PHOTOS], ["search", "猫"], ["serve"], ["bench", "tiny-vit"]])
def test_threads_beyond_a_sane_maximum_are_refused_before_anything_starts(tmp_path, command):
    # 100,000 once started about 9,700 threads (16 GB) before failing.
    result = invoke(*command, "--index" if command[0] != "bench" else "--out", tmp_path / "nowhere", "--threads", 100_000)
    assert result.exit_code == 2 and "--threads" in result.output and str(MAX_THREADS) in result.output, result.output


@ON_TINY_VIT
def test_a_query_of_only_unknown_characters_is_an_error_naming_it(indexed):
    result = invoke("search", "😀😀", "--index", indexed)
    assert result.exit_code != 0 and "😀😀" in str(result.exception)


@ON_TINY_VIT
def test_search_says_when_the_bundle_has_random_weights(indexed):
    result = invoke("search", "猫", "--index", indexed)
    assert result.exit_code == 0, result.output
    assert "random weights" in result.stderr and "random weights" not in result.stdout


@ON_TINY_VIT
def test_skipped_file_names_cannot_forge_lines(tiny_bundle, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(PHOTOS, photos)
    (photos / "evil\n[cnclip] all 99 photos OK\n.jpg").write_bytes(b"not a photo")
    result = invoke("index", photos, "--bundle", tiny_bundle, "--index", tmp_path / "index")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert not any(line.startswith("[cnclip] all 99") for line in lines)
    assert any("evil\\n[cnclip] all 99 photos OK\\n.jpg" in line for line in lines)


@ON_TINY_VIT
def test_an_index_folder_inside_the_photo_folder_is_not_indexed(tiny_bundle, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(PHOTOS, photos)
    index_dir = photos / "search-index"
    first = invoke("index", photos, "--bundle", tiny_bundle, "--index", index_dir)
    assert first.exit_code == 0, first.output
    (index_dir / "thumbnails").mkdir()
    shutil.copy(PHOTOS / "grass.jpg", index_dir / "thumbnails" / "0123abcd.jpg")  # as `serve` caches them
    again = invoke("index", photos, "--index", index_dir)
    assert again.exit_code == 0, again.output
    assert f"{PHOTO_COUNT} photos (0 added" in again.stderr


@ON_TINY_VIT
def test_an_unwritable_html_target_is_named_not_its_temporary_file(indexed):
    # /sys is read-only even for root, which runs these tests.
    result = invoke("search", "猫", "--index", indexed, "--html", "/sys/results.html")
    assert result.exit_code != 0
    message = str(result.exception)
    assert "/sys/results.html" in message and ".tmp" not in message and "--html" in message


def test_a_file_written_over_a_folder_names_the_folder(tmp_path):
    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(ArtifactError) as caught:
        atomic_write_text(tmp_path / "manifest.json", "{}")
    assert str(tmp_path / "manifest.json") in str(caught.value) and "folder" in str(caught.value)
    assert ".tmp" not in str(caught.value) and "Free space" not in str(caught.value)


@ON_TINY_VIT
def test_a_manifest_that_is_a_folder_is_not_called_invalid_json(indexed, tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    (copy / "manifest.json").unlink()
    (copy / "manifest.json").mkdir()
    result = invoke("search", "猫", "--index", indexed, "--bundle", copy)
    message = str(result.exception)
    assert result.exit_code != 0 and "folder" in message and "not valid JSON" not in message


def without_root_privilege(*args: str) -> subprocess.CompletedProcess:
    """The command as root without the capabilities that override file permissions: the tests run as root,
    which would otherwise write into any folder, read-only or not."""
    return subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-m", "converters",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@ON_TINY_VIT
def test_a_read_only_index_is_searched_and_never_called_broken(indexed):
    for path in [indexed, *indexed.iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    found = without_root_privilege("search", "猫", "--index", str(indexed), "--json")
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)["hits"]) == 10
    update = without_root_privilege("index", str(PHOTOS), "--index", str(indexed))
    assert update.returncode != 0 and "read-only" in update.stderr, update.stderr
    assert "Delete" not in update.stderr and "unusable" not in update.stderr
    indexed.chmod(0o755)
