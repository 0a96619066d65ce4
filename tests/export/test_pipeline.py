import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.app.tool_env import ToolEnv
from converters.errors import UserError
from converters.export import onnx_io, pipeline
from converters.export.pipeline import DEFAULT_STAGES, parse_stages
from converters.export.stages import registered
from converters.progress import StageStep
from tests.conftest import TINY_BUNDLE_STAGES, convert_random


def steps(events: list, state: str) -> list[str]:
    """The `tower.stage` of each step event in `state` ("running", "up to date" or "not built")."""
    return [e.key for e in events if isinstance(e, StageStep) and e.state == state]


# The ONNX branch alone, where a test is about the pipeline's bookkeeping, not a runtime.
ONNX_STAGES = ("onnx-fp32", "onnx-sim", "onnx-int8")


def test_every_stage_writes_both_towers(tiny_bundle):
    manifest = Manifest.load(BundleLayout(tiny_bundle).manifest)
    assert sorted(manifest.artifacts) == sorted(f"{t}.{s}" for t in ("visual", "text") for s in TINY_BUNDLE_STAGES)
    for entry in manifest.artifacts.values():
        manifest.verify(entry.files)


def test_rerun_skips_everything_and_rewrites_nothing(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    before = {p.name: p.stat().st_mtime_ns for p in bundle.glob("*.onnx")}
    messages = []
    convert_random(Manifest.load(BundleLayout(bundle).manifest).model, bundle, messages)
    assert steps(messages, "running") == []
    assert {p.name: p.stat().st_mtime_ns for p in bundle.glob("*.onnx")} == before


def test_changed_artifact_is_rebuilt(tmp_path):
    out = tmp_path / "bundle"
    convert_random("tiny-vit", out, stages=ONNX_STAGES)
    layout = BundleLayout(out)
    layout.model_files("text", "onnx-sim")[0].write_bytes(b"tampered")
    messages = []
    convert_random("tiny-vit", out, messages, stages=ONNX_STAGES)
    # Rebuilding a stage drops its descendants, so text.int8 follows; nothing of the visual tower runs.
    assert steps(messages, "running") == ["text.onnx-sim", "text.onnx-int8"]
    assert "visual.onnx-sim" in steps(messages, "up to date")
    Manifest.load(layout.manifest).artifact("text", "onnx-sim")  # verifies sha256


def test_interrupted_stage_leaves_nothing_listed_and_rerun_finishes(tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    def interrupted(parent, options, context):
        (context.workdir / "half-written.onnx").write_bytes(b"partial")
        raise KeyboardInterrupt

    stages = {**registered(), "onnx-int8": replace(registered()["onnx-int8"], run=interrupted)}
    monkeypatch.setattr(pipeline, "registered", lambda: stages)  # the registry itself is read-only
    with pytest.raises(KeyboardInterrupt):
        convert_random("tiny-vit", out, stages=ONNX_STAGES)
    manifest = Manifest.load(BundleLayout(out).manifest)
    assert "onnx-int8" not in manifest.stages() and "onnx-sim" in manifest.stages()
    assert not list(out.glob("*int8*")) and not list(out.rglob("half-written.onnx"))

    monkeypatch.undo()
    messages = []
    convert_random("tiny-vit", out, messages, stages=ONNX_STAGES)
    assert steps(messages, "running") == ["visual.onnx-int8", "text.onnx-int8"]


def test_rebuilding_a_stage_drops_its_stale_descendants(tmp_path):
    out = tmp_path / "bundle"
    convert_random("tiny-vit", out, stages=ONNX_STAGES)
    layout = BundleLayout(out)
    layout.model_files("visual", "onnx-fp32")[0].unlink()
    convert_random("tiny-vit", out, stages=("onnx-fp32",))
    assert "visual.onnx-sim" not in Manifest.load(layout.manifest).artifacts
    assert "text.onnx-sim" in Manifest.load(layout.manifest).artifacts


def test_external_data_flows_through_every_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_ABOVE_BYTES", 0)
    out = tmp_path / "bundle"
    convert_random("tiny-vit", out, stages=ONNX_STAGES)
    manifest = Manifest.load(BundleLayout(out).manifest)
    onnx_entries = [e for e in manifest.artifacts.values() if e.artifact.stage.startswith("onnx-")]
    assert len(onnx_entries) == 6
    for entry in onnx_entries:
        assert [f.path for f in entry.files][1:] == [entry.files[0].path + ".data"]
    from converters.export.config import load_config
    from converters.progress import ignore
    from converters.export.bundle_parity import run_parity

    assert run_parity(load_config("tiny-vit"), BundleLayout(out), ignore).passed


def test_stage_selection_is_validated_and_ordered():
    assert parse_stages("onnx-int8,onnx-fp32") == ("onnx-fp32", "onnx-int8")
    with pytest.raises(UserError, match="Unknown stage.*ncnn-fp64"):
        parse_stages("onnx,ncnn-fp64")


def test_stage_without_its_parent_says_what_to_run(tmp_path):
    with pytest.raises(UserError, match="'onnx-int8' needs the 'onnx-sim' artifact.*--stages onnx-fp32,onnx-sim,onnx-int8"):
        convert_random("tiny-vit", tmp_path / "bundle", stages=("onnx-int8",))


def test_second_conversion_into_the_same_directory_is_refused(tmp_path):
    from filelock import FileLock

    out = tmp_path / "bundle"
    out.mkdir()
    with FileLock(BundleLayout(out).lock):
        with pytest.raises(UserError, match="Another conversion or parity check is writing"):
            convert_random("tiny-vit", out)


def test_manifest_describes_the_contract(tiny_bundle):
    data = json.loads(BundleLayout(tiny_bundle).manifest.read_text())
    assert data["schema_version"] == 2
    assert data["checkpoint"]["source"] == "random" and len(data["checkpoint"]["sha256"]) == 64
    assert data["embedding"]["normalized"] is False and data["embedding"]["logit_scale"] > 0
    text = data["artifacts"]["text.onnx-int8"]
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
        if manifest_path.is_file() and "visual.onnx-fp32" in json.loads(manifest_path.read_text()).get("artifacts", {}):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    listed = set(Manifest.load(manifest_path).artifacts)
    assert "visual.onnx-fp32" in listed and len(listed) < 2 * len(DEFAULT_STAGES), "the run was not killed mid-way; nothing to test"

    messages = []
    convert_random("tiny-rn", out, messages, stages=DEFAULT_STAGES)
    assert "visual.onnx-fp32" in steps(messages, "up to date")
    assert not BundleLayout(out).staging.exists()
    manifest = Manifest.load(manifest_path)
    assert len(manifest.artifacts) == 2 * len(DEFAULT_STAGES)
    for entry in manifest.artifacts.values():
        manifest.verify(entry.files)


def test_bundle_files_are_readable_by_others(tiny_bundle):
    import stat

    for path in tiny_bundle.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            assert path.stat().st_mode & stat.S_IROTH, path


def test_a_failed_pnnx_run_leaves_its_log_in_the_bundle(tmp_path, monkeypatch):
    from converters.errors import ConversionError
    from converters.export.ncnn import pnnx

    monkeypatch.setattr(pnnx, "_run", lambda command: (1, "pnnx: the whole log of a failed conversion\n"))
    out = tmp_path / "bundle"
    with pytest.raises(ConversionError, match="pnnx exited with status 1") as error:
        convert_random("tiny-vit", out, stages=("ncnn-fp32",))
    log = BundleLayout(out).logs / "visual.fp32.ncnn.pnnx.log"
    assert f"Full log: {log}" in str(error.value)
    assert log.read_text() == "pnnx: the whole log of a failed conversion\n"


def test_a_finished_conversion_leaves_no_staging_folder(tiny_bundle):
    assert not BundleLayout(tiny_bundle).staging.exists()


def test_a_rebuild_without_parity_drops_the_old_report_and_golden_vectors(tmp_path):
    out = tmp_path / "bundle"
    convert_random("tiny-vit", out, stages=ONNX_STAGES)
    layout = BundleLayout(out)
    assert layout.parity_json.is_file() and "golden" in Manifest.load(layout.manifest).files
    layout.model_files("text", "onnx-int8")[0].unlink()
    convert_random("tiny-vit", out, stages=ONNX_STAGES, parity=False)
    assert not layout.parity_json.exists() and not layout.golden.exists()
    assert not [role for role in Manifest.load(layout.manifest).files if role.startswith("golden")]


@pytest.mark.parametrize("checkpoint, message", [("folder", "a folder without config.json"), ("hf:", "names no repository")])
def test_a_refused_checkpoint_leaves_no_folder_behind(tmp_path, checkpoint, message):
    from converters.export.config import load_config
    from converters.export.pipeline import ConvertRequest, convert
    from converters.progress import ignore

    (tmp_path / "folder").mkdir()
    target = str(tmp_path / "folder") if checkpoint == "folder" else checkpoint
    with pytest.raises(UserError, match=message):
        convert(ConvertRequest(load_config("tiny-vit"), tmp_path / "out", target, tmp_path / "cache"), ignore)
    assert not (tmp_path / "out").exists()



# tiny-vit's ncnn-fp16 stage, random weights, as `convert` of 0.4.0 (commit b90b575) wrote it.
BUNDLE_0_4_0 = Path(__file__).resolve().parents[1] / "data" / "bundle-0.4.0-tiny-vit"


def test_a_bundle_made_by_0_4_0_is_read_checked_and_rebuilt_by_convert(tmp_path):
    """0.5.0 changed the code's shape, not the bundle: 0.4.0's own files open, run, pass parity from the reference
    they cached, and convert rebuilds them (the converter's version is part of every stage's digest)."""
    from converters.app.bundle import Bundle
    from converters.export.bundle_parity import run_parity
    from converters.export.config import load_config
    from converters.progress import ignore

    out = tmp_path / "bundle"
    shutil.copytree(BUNDLE_0_4_0, out)
    assert json.loads(BundleLayout(out).manifest.read_text())["created_by"] == "cnclip-converters 0.4.0"
    bundle = Bundle.open(out)
    assert bundle.embedder("ncnn-fp16").embed_texts(bundle.token_ids(["海边的日落"])).shape == (1, bundle.embedding_dim)
    assert run_parity(load_config("tiny-vit"), BundleLayout(out), ignore).passed
    messages = []
    convert_random("tiny-vit", out, messages, stages=("ncnn-fp16",))
    assert sorted(steps(messages, "running")) == ["text.ncnn-fp16", "visual.ncnn-fp16"]


@pytest.mark.parametrize("change", [{"revision": 2}, {"version": "1.1"}])
def test_a_new_tool_environment_rebuilds_what_the_older_one_made(change, tmp_path, monkeypatch):
    """A vendor stage's files are checked by rebuilding them in today's tool environment: one made by an older
    would be "up to date" for convert and refused by parity."""
    out = tmp_path / "bundle"
    tool = ToolEnv("a-toolkit", "1.0", "CNCLIP_A_TOOLKIT_ENV", "make a-toolkit-env", "nothing")
    int8 = registered()["onnx-int8"]
    monkeypatch.setattr(pipeline, "registered", lambda: {**registered(), "onnx-int8": replace(int8, tool_env=tool)})
    convert_random("tiny-vit", out, stages=ONNX_STAGES)
    messages = []
    convert_random("tiny-vit", out, messages, stages=ONNX_STAGES)
    assert steps(messages, "running") == []
    newer = replace(tool, **change)
    monkeypatch.setattr(pipeline, "registered", lambda: {**registered(), "onnx-int8": replace(int8, tool_env=newer)})
    messages = []
    convert_random("tiny-vit", out, messages, stages=ONNX_STAGES)
    assert steps(messages, "running") == ["visual.onnx-int8", "text.onnx-int8"]
