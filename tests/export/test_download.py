"""The download route, with the network replaced by a local fetch function (there is no network here)."""

import os
import subprocess
import sys

import pytest

from converters.errors import CheckpointError
from converters.export.download import fetch_release

CONTENT = b"checkpoint bytes" * 1000


def complete_fetch(release, staging):
    path = staging / "file.pt"
    path.write_bytes(CONTENT)
    return path


def test_download_lands_in_the_cache_once(tmp_path):
    calls = []

    def fetch(release, staging):
        calls.append(release)
        return complete_fetch(release, staging)

    first = fetch_release("ViT-B-16", "clip_cn_vit-b-16.pt", None, tmp_path, fetch)
    again = fetch_release("ViT-B-16", "clip_cn_vit-b-16.pt", None, tmp_path, fetch)
    assert first == again == tmp_path / "clip_cn_vit-b-16.pt" and first.read_bytes() == CONTENT
    assert calls == ["ViT-B-16"] and not (tmp_path / ".partial" / "ViT-B-16").exists()


def test_interrupted_download_is_never_used_and_is_resumed(tmp_path):
    def interrupted(release, staging):
        (staging / "file.pt.incomplete").write_bytes(CONTENT[:100])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch_release("RN50", "clip_cn_rn50.pt", None, tmp_path, interrupted)
    assert not (tmp_path / "clip_cn_rn50.pt").exists()

    def resume(release, staging):
        partial = staging / "file.pt.incomplete"
        assert partial.read_bytes() == CONTENT[:100]  # the staging folder is kept for the hub to resume from
        partial.write_bytes(CONTENT)
        return partial.rename(staging / "file.pt")

    assert fetch_release("RN50", "clip_cn_rn50.pt", None, tmp_path, resume).read_bytes() == CONTENT


def test_checksum_mismatch_deletes_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="sha256 .* expected 0{64}; it was deleted"):
        fetch_release("RN50", "clip_cn_rn50.pt", "0" * 64, tmp_path, complete_fetch)
    assert not (tmp_path / "clip_cn_rn50.pt").exists()
    good = __import__("hashlib").sha256(CONTENT).hexdigest()
    assert fetch_release("RN50", "clip_cn_rn50.pt", good, tmp_path, complete_fetch).is_file()


def test_no_network_says_how_to_pass_a_local_checkpoint(tmp_path):
    """The real cn_clip → huggingface_hub route, offline."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "converters", "convert", "ViT-B-16", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "b")],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "Could not download the ViT-B-16 checkpoint" in result.stderr and "CKPT=" in result.stderr
    assert "Traceback" not in result.stderr
