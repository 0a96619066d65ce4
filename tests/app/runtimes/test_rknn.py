"""The RKNN runtime's plumbing: its tool environment, the worker, and canonical builds (the environment is made on
first use by the rknn stages, or by `make rknn-env`)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.app.runtimes.rknn import REBUILD_ATTEMPTS
from converters.app.runtimes.rknn.build import CALIBRATION_LIST, RknnWorker, canonical_build, stage_inputs
from converters.app.runtimes.rknn.env import RKNN_ENV
from converters.app.tool_env import COMPLETE_MARK
from converters.errors import ArtifactError, UserError
from converters.export.rknn_env import create_rknn_env


def test_a_missing_tool_environment_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CNCLIP_RKNN_ENV", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"rknn-toolkit2 2\.5\.0 tool environment is not installed.*make rknn-env.*CNCLIP_RKNN_ENV"):
        RKNN_ENV.python()


def tiny_onnx(folder: Path, scale: float = 1.0) -> Path:
    weights = np.random.RandomState(0).randn(4, 3, 3, 3).astype(np.float32) * scale
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [numpy_helper.from_array(weights, "w")])
    path = folder / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


SPEC = {"onnx": "tiny.onnx", "input": "x", "shape": [1, 3, 8, 8], "quantize": False, "algorithm": None, "method": None,
        "kept": [], "platform": "rk3588"}


@pytest.mark.rknn
@pytest.mark.parametrize("platform", ["rk3588", "rk3568", "rk3566"])
def test_a_canonical_build_is_byte_identical_and_simulates_what_it_built(platform, tmp_path):
    """Rebuilt until a build equals the first, within the attempts the runner's proof allows itself
    (REBUILD_ATTEMPTS): a tiny rk3588 rebuild differed once in CI on 2026-12-07, after passing in every run before."""
    create_rknn_env()
    model = tiny_onnx(tmp_path)
    hashes = []
    for attempt in range(1 + REBUILD_ATTEMPTS):
        worker, answer = canonical_build({**SPEC, "platform": platform}, [model], None, tmp_path / f"{attempt}.rknn")
        with worker:
            hashes.append(answer["sha256"])
            x = np.random.RandomState(1).randn(1, 3, 8, 8).astype(np.float32)
            out = worker.run(x)
        assert out.shape == (1, 4, 8, 8) and np.all(out >= 0)
        if attempt and hashes[-1] == hashes[0]:
            break
    assert hashes[-1] == hashes[0], hashes
    assert (tmp_path / "0.rknn").read_bytes() == (tmp_path / f"{len(hashes) - 1}.rknn").read_bytes()
    changed = tiny_onnx(tmp_path, scale=1.5)
    worker, answer = canonical_build({**SPEC, "platform": platform}, [changed], None, tmp_path / "changed.rknn")
    worker.close()
    assert answer["sha256"] != hashes[0]


@pytest.mark.rknn
def test_a_canonical_build_runs_on_a_stopped_clock(tmp_path):
    """The toolkit's timings move the heap pointers it writes into the file: full-size int8 rebuilds differed
    without the stopped clock, which a tiny tower does not show, so the clock itself is checked."""
    create_rknn_env()
    worker, _ = canonical_build(SPEC, [tiny_onnx(tmp_path)], None, tmp_path / "model.rknn")
    with worker:
        maps = Path(f"/proc/{worker.process.pid}/maps").read_text()
        environ = Path(f"/proc/{worker.process.pid}/environ").read_bytes().split(b"\0")
    assert "libfaketime.so.1" in maps, "the stopped clock's library is not loaded in the canonical worker"
    assert b"FAKETIME=2000-01-01 00:00:00" in environ


def test_an_environment_of_an_older_revision_is_refused(tmp_path, monkeypatch):
    """One made before the stopped clock would build files a later rebuild cannot match: not used, with advice that
    removes nothing but that environment."""
    old = tmp_path / "old-env"
    (old / "bin").mkdir(parents=True)
    (old / "bin" / "python").symlink_to(sys.executable)
    (old / COMPLETE_MARK).write_text("rknn-toolkit2 2.5.0\n")
    monkeypatch.setenv("CNCLIP_RKNN_ENV", str(old))
    with pytest.raises(UserError, match=rf"made for rknn-toolkit2 2\.5\.0, not 2\.5\.0-rev2.*rm -rf {old}\).*make rknn-env"):
        RKNN_ENV.python()
    (old / COMPLETE_MARK).write_text("rknn-toolkit2 2.5.0-rev2\n")
    assert RKNN_ENV.python() == old / "bin" / "python"


@pytest.mark.rknn
def test_the_worker_reports_a_failed_build_and_answers_the_next(tmp_path, monkeypatch):
    create_rknn_env()
    tiny_onnx(tmp_path)
    outer = tmp_path / "system-tmp"
    outer.mkdir()
    monkeypatch.setenv("TMPDIR", str(outer))
    with RknnWorker(tmp_path, canonical=False) as worker:
        with pytest.raises(ArtifactError, match="missing.onnx not exists"):
            worker.build({**SPEC, "onnx": "missing.onnx"})
        answer = worker.build({**SPEC, "verbose": True})
        assert {row["op"] for row in answer["layers"]} >= {"Conv"} or {row["op"] for row in answer["layers"]} >= {"ConvRelu"}
        assert worker.process.poll() is None
    # The toolkit's own temporary folders (it removes none) stay in the worker's folder, not the system's.
    assert not list(outer.iterdir()) and list((tmp_path / "tmp").iterdir())


def projection_onnx(folder: Path, opset: int, external: bool) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """y = W x, 16 → 8: weak for most inputs, strong (along an uneven direction) for those that follow its one
    large component, as a photo whose embedding's norm is many times the calibration photos'. Its files."""
    rng = np.random.RandomState(0)
    along, direction = np.sign(rng.randn(16)).astype(np.float32), np.array([3, 2, 1, 1, -1, -1, -2, -3], np.float32)
    weights = (np.outer(direction, along) + rng.randn(8, 16) * 0.5).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "projection",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                              [numpy_helper.from_array(weights.T.copy(), "w")])
    path = folder / "projection.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path,
              save_as_external_data=external, location="projection.data", size_threshold=0)
    return [path, folder / "projection.data"] if external else [path], weights, along


@pytest.mark.rknn
@pytest.mark.parametrize("opset, external", [(17, False), (18, True)])  # ReduceMean's axes: attribute, input
def test_a_normalized_int8_output_holds_an_embedding_far_beyond_the_calibration_range(opset, external, tmp_path):
    """An int8 output has one range, the calibration samples': an embedding many times their norm clips there
    (RN50's stress weights, a parity photo at 2.5 times the calibration range). L2-normalized, with the tensor
    before the normalization kept in float16, it does not."""
    create_rknn_env()
    files, weights, along = projection_onnx(tmp_path, opset, external)
    folder = tmp_path / "worker"
    folder.mkdir()
    stage_inputs(folder, files, np.random.RandomState(1).uniform(-1, 1, (16, 16)).astype(np.float32))
    strong = along[None]  # ±1: inside the range the input was calibrated to
    expected = strong @ weights.T
    spec = {**SPEC, "onnx": files[0].name, "shape": [1, 16], "quantize": True, "algorithm": "normal", "method": "layer",
            "dataset": CALIBRATION_LIST}
    with RknnWorker(folder, canonical=False) as worker:
        worker.build(spec)
        clipped = worker.run(strong).astype(np.float64)
        worker.build({**spec, "normalize": True})
        unit = worker.run(strong).astype(np.float64)
    assert np.linalg.norm(clipped) < 0.5 * np.linalg.norm(expected), "the unnormalized output did not clip"
    cosine = float(unit.ravel() @ expected.ravel() / np.linalg.norm(unit) / np.linalg.norm(expected))
    assert cosine > 0.999 and abs(np.linalg.norm(unit) - 1) < 0.01


@pytest.mark.rknn
def test_an_output_without_a_fixed_size_is_not_normalized_but_refused_by_name(tmp_path):
    create_rknn_env()
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "free",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "width"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "width"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "free.onnx")
    with RknnWorker(tmp_path, canonical=False) as worker:
        refusal = "free.onnx: the output to normalize must be one tensor whose last dimension has a fixed size"
        with pytest.raises(ArtifactError, match=refusal):
            worker.build({**SPEC, "onnx": "free.onnx", "shape": [1, 4], "normalize": True})
