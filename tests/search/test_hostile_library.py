"""A photo library as it comes from old phones and Windows disks: odd files, odd names, odd dates, and stop signals."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from converters.app.bundle import Bundle
from converters.cli import cli
from converters.data import PARITY_SET_DIR
from converters.search.store import load_index
from converters.search.updater import IndexUpdater
from tests.search.helpers import indexed_rows, integrity

PHOTOS = PARITY_SET_DIR / "images"
ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
# "照片" in GBK, the encoding of file names on old Chinese Windows systems: not valid UTF-8.
GBK_NAME = "照片".encode("gbk") + b".jpg"


def update(index_dir: Path, photos: Path, bundle: Bundle):
    with IndexUpdater(index_dir, bundle, "onnx-sim") as updater:
        return updater.run(updater.plan(photos))


def encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


@pytest.fixture
def library(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(PHOTOS / "grass.jpg", folder / "grass.jpg")
    return folder


@ON_TINY_VIT
def test_files_pillow_opens_but_cannot_decode_are_skipped(tiny_bundle, library, tmp_path):
    small = Image.open(PHOTOS / "grass.jpg").convert("RGB").resize((16, 16))
    (library / "ppm.png").write_bytes(encoded(small, "PPM")[:40])  # identified as PPM, then cut short
    (library / "sgi.png").write_bytes(encoded(small, "SGI")[:600])
    (library / "tga.png").write_bytes(b"\x00\x00\x0a" + bytes(15) + b"\xff" * 30)  # run-length TGA, garbage
    report = update(tmp_path / "index", library, Bundle.open(tiny_bundle))
    assert report.total == 1
    assert sorted(Path(reason.split(" ")[0].rstrip(":")).name for reason in report.skipped) == ["ppm.png", "sgi.png", "tga.png"]


@ON_TINY_VIT
def test_a_fifo_is_left_out_and_never_read(tiny_bundle, library, tmp_path):
    os.mkfifo(library / "pipe.jpg")
    code = (
        "import sys; from pathlib import Path; from converters.app.bundle import Bundle; "
        "from converters.search.updater import IndexUpdater\n"
        f"with IndexUpdater(Path({str(tmp_path / 'index')!r}), Bundle.open({str(tiny_bundle)!r}), 'onnx-sim') as u:\n"
        f"    report = u.run(u.plan(Path({str(library)!r})))\n"
        "print(report.total, report.skipped)"
    )
    # In a child with a deadline: the bug this guards against is a read that blocks forever.
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("1 ") and "pipe.jpg: not a regular file" in child.stdout


@ON_TINY_VIT
def test_symlinked_folders_are_named_not_followed(tiny_bundle, library, tmp_path):
    (library / "loop").symlink_to(library)
    report = update(tmp_path / "index", library, Bundle.open(tiny_bundle))
    assert report.total == 1
    assert any("loop: a symlinked folder, not followed" in reason for reason in report.skipped)


@ON_TINY_VIT
def test_a_modification_time_after_2262_is_indexed(tiny_bundle, library, tmp_path):
    far = int(time.mktime((2300, 1, 1, 0, 0, 0, 0, 0, -1)))
    os.utime(library / "grass.jpg", (far, far))
    assert update(tmp_path / "index", library, Bundle.open(tiny_bundle)).total == 1
    again = update(tmp_path / "index", library, Bundle.open(tiny_bundle))
    assert (again.unchanged, again.added) == (1, 0)


@ON_TINY_VIT
def test_names_that_are_not_utf8_come_out_as_valid_text(tiny_bundle, library, tmp_path):
    os.rename(library / "grass.jpg", os.path.join(os.fsencode(library), GBK_NAME))
    shutil.copy(PHOTOS / "cat_chelsea.jpg", library / "two\nlines.jpg")
    index = tmp_path / "index"
    runner = CliRunner()
    assert runner.invoke(cli, ["index", str(library), "--artifacts", str(tiny_bundle), "--index", str(index)]).exit_code == 0
    as_json = runner.invoke(cli, ["search", "草", "--index", str(index), "--json", "--html", str(tmp_path / "r.html")])
    assert as_json.exit_code == 0, as_json.output
    hits = {Path(hit["path"]).name: hit for hit in json.loads(as_json.stdout_bytes.decode("utf-8"))["hits"]}
    odd = next(hit for name, hit in hits.items() if name.startswith("\\x"))
    # d5 d5 is no UTF-8 sequence (each byte shown as \xNN); c6 ac happens to be one, U+01AC.
    assert odd["path"].endswith("\\xd5\\xd5\u01ac.jpg")
    import base64

    assert base64.b64decode(odd["path_base64"]).endswith(GBK_NAME)
    assert "two\nlines.jpg" in hits and "path_base64" not in hits["two\nlines.jpg"]
    (tmp_path / "r.html").read_text(encoding="utf-8")  # valid UTF-8
    table = runner.invoke(cli, ["search", "草", "--index", str(index)])
    assert table.exit_code == 0
    rows = table.stdout_bytes.decode("utf-8").splitlines()
    assert any(row.endswith("two\\nlines.jpg") for row in rows) and not any(row == "lines.jpg" for row in rows)


@ON_TINY_VIT
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_saves_the_progress_made(tiny_bundle, tmp_path, signum):
    photos = tmp_path / "photos"
    photos.mkdir()
    for copy in range(40):
        for photo in PHOTOS.glob("*.jpg"):
            shutil.copy(photo, photos / f"{copy:02d}-{photo.name}")
    index = tmp_path / "index"
    command = [sys.executable, "-m", "converters", "index", str(photos), "--artifacts", str(tiny_bundle),
               "--index", str(index), "--batch-size", "4"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while indexed_rows(index) < 8 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    saved = load_index(index)
    assert not saved.complete and 0 < len(saved) < 40 * len(list(PHOTOS.iterdir())), "the run was not stopped mid-way; nothing to test"
    assert "interrupted" in stderr and "Traceback" not in stderr and integrity(index) == "ok"


@ON_TINY_VIT
def test_a_link_to_a_photo_outside_the_folder_is_left_out(tiny_bundle, library, tmp_path):
    shutil.copy(PHOTOS / "cat_chelsea.jpg", tmp_path / "elsewhere.jpg")
    (library / "link.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    report = update(tmp_path / "index", library, Bundle.open(tiny_bundle))
    assert report.total == 1 and any("link.jpg: a link to a file outside" in reason for reason in report.skipped)
