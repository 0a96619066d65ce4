import json
import os
import shutil

import pytest

from converters import onnx_io
from converters.errors import UserError
from converters.layout import BundleLayout
from converters.manifest import Manifest
from converters.pipeline import STAGES, parse_stages
from converters.stages import int8
from tests.conftest import convert_random

def steps(messages: list[str], state: str) -> list[str]:
    """The `tower.stage` of each progress message that ends in `state` ("running" or "up to date")."""
    return [m.split("] ")[1].split(":")[0] for m in messages if m.endswith(f": {state}")]


# The ONNX branch alone, where a test is about the pipeline's bookkeeping, not a runtime.
ONNX_STAGES = ("onnx", "simplify", "int8")


def test_every_stage_writes_both_towers(tiny_bundle):
    manifest = Manifest.load(BundleLayout(tiny_bundle).manifest)
    assert sorted(manifest.artifacts) == sorted(f"{t}.{s}" for t in ("visual", "text") for s in STAGES)
    for entry in manifest.artifacts.values():
        manifest.verify(entry)


def test_rerun_skips_everything_and_rewrites_nothing(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    before = {p.name: p.stat().st_mtime_ns for p in bundle.glob("*.onnx")}
    messages = []
    convert_random(Manifest.load(BundleLayout(bundle).manifest).data["model"], bundle, messages)
    assert steps(messages, "running") == []
    assert {p.name: p.stat().st_mtime_ns for p in bundle.glob("*.onnx")} == before


def test_changed_artifact_is_rebuilt(tmp_path):
    out = tmp_path / "bundle"
    convert_random("tiny-vit", out, stages=ONNX_STAGES)
    layout = BundleLayout(out)
    layout.onnx_model("text", "sim").write_bytes(b"tampered")
    messages = []
    convert_random("tiny-vit", out, messages, stages=ONNX_STAGES)
    # Rebuilding a stage drops its descendants, so text.int8 follows; nothing of the visual tower runs.
    assert steps(messages, "running") == ["text.simplify", "text.int8"]
    assert "visual.simplify" in steps(messages, "up to date")
    Manifest.load(layout.manifest).artifact("text", "simplify")  # verifies sha256


def test_interrupted_stage_leaves_nothing_listed_and_rerun_finishes(tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    real_run = int8.run

    def interrupted(parent, options, workdir):
        (workdir / "half-written.onnx").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(int8, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_random("tiny-vit", out, stages=ONNX_STAGES)
    manifest = Manifest.load(BundleLayout(out).manifest)
    assert "int8" not in manifest.stages() and "simplify" in manifest.stages()
    assert not list(out.glob("*int8*")) and not list(out.rglob("half-written.onnx"))

    monkeypatch.setattr(int8, "run", real_run)
    messages = []
    convert_random("tiny-vit", out, messages, stages=ONNX_STAGES)
    assert steps(messages, "running") == ["visual.int8", "text.int8"]


def test_rebuilding_a_stage_drops_its_stale_descendants(tmp_path):
    out = tmp_path / "bundle"
    convert_random("tiny-vit", out, stages=ONNX_STAGES)
    layout = BundleLayout(out)
    layout.onnx_model("visual", "fp32").unlink()
    convert_random("tiny-vit", out, stages=("onnx",))
    assert "visual.simplify" not in Manifest.load(layout.manifest).artifacts
    assert "text.simplify" in Manifest.load(layout.manifest).artifacts


def test_external_data_flows_through_every_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_ABOVE_BYTES", 0)
    out = tmp_path / "bundle"
    convert_random("tiny-vit", out, stages=ONNX_STAGES)
    manifest = Manifest.load(BundleLayout(out).manifest)
    onnx_entries = [e for e in manifest.artifacts.values() if e["runtime"] == "onnxruntime"]
    assert len(onnx_entries) == 6
    for entry in onnx_entries:
        assert [f["path"] for f in entry["files"]][1:] == [entry["files"][0]["path"] + ".data"]
    from converters.verify import run_parity
    from converters.config import load_config

    assert run_parity(load_config("tiny-vit"), BundleLayout(out), lambda _: None).passed


def test_stage_selection_is_validated_and_ordered():
    assert parse_stages("int8,onnx") == ("onnx", "int8")
    with pytest.raises(UserError, match="Unknown stage.*ncnn-fp64"):
        parse_stages("onnx,ncnn-fp64")


def test_stage_without_its_parent_says_what_to_run(tmp_path):
    with pytest.raises(UserError, match="'int8' needs the 'simplify' artifact"):
        convert_random("tiny-vit", tmp_path / "bundle", stages=("int8",))


def test_second_conversion_into_the_same_directory_is_refused(tmp_path):
    from filelock import FileLock

    out = tmp_path / "bundle"
    out.mkdir()
    with FileLock(BundleLayout(out).lock):
        with pytest.raises(UserError, match="Another conversion is writing"):
            convert_random("tiny-vit", out)


def test_manifest_describes_the_contract(tiny_bundle):
    data = json.loads(BundleLayout(tiny_bundle).manifest.read_text())
    assert data["schema_version"] == 1
    assert data["checkpoint"]["source"] == "random" and len(data["checkpoint"]["sha256"]) == 64
    assert data["embedding"]["normalized"] is False and data["embedding"]["logit_scale"] > 0
    text = data["artifacts"]["text.int8"]
    assert text["inputs"] == [{"name": "token_ids", "dtype": "int64", "shape": ["batch", "sequence"], "role": "token_ids"}]
    assert text["outputs"][0]["role"] == "embedding"
    for entry in data["artifacts"].values():
        for file in entry["files"]:
            assert os.path.getsize(tiny_bundle / file["path"]) == file["bytes"]


def test_killed_conversion_is_finished_by_a_rerun(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "bundle"
    command = [sys.executable, "-m", "converters", "convert", "tiny-rn", "--checkpoint", "random", "--out", str(out), "--no-parity"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest_path = BundleLayout(out).manifest
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if manifest_path.is_file() and "visual.onnx" in json.loads(manifest_path.read_text()).get("artifacts", {}):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    listed = set(Manifest.load(manifest_path).artifacts)
    assert "visual.onnx" in listed and len(listed) < 2 * len(STAGES), "the run was not killed mid-way; nothing to test"

    messages = []
    convert_random("tiny-rn", out, messages)
    assert "visual.onnx" in steps(messages, "up to date")
    assert not any(BundleLayout(out).staging.iterdir())
    manifest = Manifest.load(manifest_path)
    assert len(manifest.artifacts) == 2 * len(STAGES)
    for entry in manifest.artifacts.values():
        manifest.verify(entry)


def test_bundle_files_are_readable_by_others(tiny_bundle):
    import stat

    for path in tiny_bundle.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            assert path.stat().st_mode & stat.S_IROTH, path
