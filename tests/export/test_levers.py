"""The lever study measures each quantization setting the way parity measures artifacts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from converters.app.layout import BundleLayout
from converters.errors import UserError
from converters.export.config import load_config
from converters.export.mixed_precision import FloatFallback
from converters.export.levers import LEVERS, measure_levers
from converters.export.pipeline import ConvertRequest, convert
from converters.progress import ignore

STAGES = ("onnx-int8", "ncnn-int8", "onnx-int4")


@pytest.fixture(scope="module")
def plain_int8(tmp_path_factory):
    """tiny-vit with stress weights, its float parents, and an onnx-int8 tower without float fallback."""
    config = load_config("tiny-vit")
    stages = config.stages.model_copy(update={"onnx_int8": config.stages.onnx_int8.model_copy(
        update={"float_fallback": FloatFallback(enabled=False)})})
    config = config.model_copy(update={"stages": stages})
    out = tmp_path_factory.mktemp("levers") / "bundle"
    conversion = convert(ConvertRequest(config, out, "stress", out / "cache",
                                        ("onnx-fp32", "onnx-sim", "onnx-int8", "ncnn-fp32")), ignore)
    rows = measure_levers(config, BundleLayout(out), ignore, STAGES)
    return conversion, rows, out


def test_every_lever_is_measured_on_its_towers_and_written(plain_int8):
    _, rows, out = plain_int8
    expected = [(lever.stage, lever.name, tower) for lever in LEVERS for tower in lever.towers]
    assert [(row.stage, row.lever, row.tower) for row in rows] == expected
    written = json.loads(BundleLayout(out).levers_json.read_text(encoding="utf-8"))
    assert written["weights"].startswith("stress weights") and len(written["rows"]) == len(rows)
    assert all(row.megabytes > 0 and -1 <= row.held_out.cosine_min <= 1 for row in rows)


def test_the_config_row_is_the_artifact_parity_checked(plain_int8):
    conversion, rows, _ = plain_int8
    (checked,) = [stage for stage in conversion.parity.stages if stage.stage == "onnx-int8"]
    for tower in ("visual", "text"):
        (row,) = [r for r in rows if (r.stage, r.lever, r.tower) == ("onnx-int8", "config", tower)]
        assert row.parity.cosine_min == pytest.approx(getattr(checked, tower).cosine_min, abs=1e-6)
        assert row.parity.cosine_mean == pytest.approx(getattr(checked, tower).cosine_mean, abs=1e-6)


def test_sizes_follow_the_settings(plain_int8):
    _, rows, _ = plain_int8
    size = {(r.stage, r.lever, r.tower): r.megabytes for r in rows}
    for tower in ("visual", "text"):
        # A scale per output channel costs bytes; 4-bit weights take half of 8-bit ones (the text tower's word
        # table dominates it; the tiny visual tower's widths are below most block sizes, which then stay float).
        assert size[("onnx-int8", "per-tensor weights", tower)] <= size[("onnx-int8", "config", tower)]
    assert size[("onnx-int4", "block 32", "text")] < 0.7 * size[("onnx-int8", "config", "text")]


def test_without_the_float_parent_it_says_which_stage_to_convert(tmp_path):
    config = load_config("tiny-vit")
    out = tmp_path / "bundle"
    convert(ConvertRequest(config, out, "random", tmp_path, ("onnx-fp32", "onnx-sim")), ignore)
    with pytest.raises(UserError, match="no ncnn-fp32 artifact.*--stages ncnn-fp32"):
        measure_levers(config, BundleLayout(out), ignore, ("ncnn-int8",))


def test_smoothed_parents_of_other_weights_are_refused(plain_int8):
    """The smoothed rows are built from the weights the converter makes now; a bundle of other weights would be
    compared with a reference of its own, silently."""
    _, _, out = plain_int8
    config = load_config("tiny-vit")
    other = config.model_copy(update={"stress": config.stress.model_copy(update={"seed": 7})})
    with pytest.raises(UserError, match="are not the ones this converter makes.*convert the bundle again"):
        measure_levers(other, BundleLayout(out), ignore, ("onnx-int8",))


def test_an_unknown_stage_is_a_usage_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "converters", "levers", "tiny-vit", "--out", str(tmp_path),
                             "--stages", "ncnn-fp16"], capture_output=True, text=True)
    assert result.returncode == 2 and "choose among onnx-int8, ncnn-int8, onnx-int4" in result.stderr
