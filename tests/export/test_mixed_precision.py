"""Automatic mixed precision: the ranking, the choice, and both int8 stages on the tiny towers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from converters.app.manifest import Manifest
from converters.export.checkpoint import random_model
from converters.export.config import load_config
from converters.export.mixed_precision import FloatFallback, choose_kept_layers
from converters.export.ncnn.model_file import read_model
from converters.export.ncnn.quantize import is_int8
from converters.export.pipeline import ConvertRequest, convert
from converters.validate.fidelity import Fidelity, judge, measure

TARGET = FloatFallback(cosine_min=0.99, cosine_mean=0.995)


class CostProbe:
    """A stand-in for `Probe`: each int8 layer costs a fixed amount of cosine, plus `floor` once any layer is int8."""

    def __init__(self, costs: dict[str, float], floor: float = 0.0):
        self.costs, self.floor, self.trials, self.target = costs, floor, 0, TARGET

    def fidelity(self, kept_layers: frozenset[str]) -> Fidelity:
        self.trials += 1
        int8 = [name for name in self.costs if name not in kept_layers]
        cosine = 1 - sum(self.costs[name] for name in int8) - self.floor * bool(int8)
        measured = Fidelity(16, cosine, cosine, 0.0, 0.0)
        measured.failures = judge(measured, self.target)
        return measured


def test_the_most_harmful_layers_go_back_to_float_and_no_more():
    costs = {f"layer{i}": 0.0005 for i in range(40)} | {"fragile": 0.03, "bad": 0.004}
    probe = CostProbe(costs)
    choice = choose_kept_layers({name: "MatMul" for name in costs}, probe, "test")
    assert [row.layer for row in choice.sensitivity[:2]] == ["fragile", "bad"]
    # 0.004 + 40 x 0.0005 = 0.024 without "fragile": more float layers needed down the ranking, but never all.
    assert choice.kept_layers[:2] == ("fragile", "bad") and choice.target_met
    assert choice.chosen.cosine_mean >= TARGET.cosine_mean
    shorter = frozenset(choice.kept_layers[:-1])
    assert not probe.fidelity(shorter).passed  # the shortest prefix that meets the target
    assert probe.trials < 2 * len(costs)  # one pass for the ranking, then a bisection


def test_a_stage_s_own_ranking_is_bisected_without_measuring_each_layer():
    costs = {f"layer{i}": 0.0005 for i in range(40)} | {"fragile": 0.03, "bad": 0.004}
    probe = CostProbe(costs)
    # The ranking names a layer the tower lacks and leaves most out: those follow in model order.
    ranking = (["bad", "fragile", "no-such-layer"], "a one-pass measure")
    choice = choose_kept_layers({name: "MatMul" for name in costs}, probe, "test", rank=lambda: ranking)
    assert choice.kept_layers[:2] == ("bad", "fragile") and choice.target_met and "no-such-layer" not in choice.kept_layers
    assert choice.sensitivity == () and choice.to_json()["ranked_by"] == "a one-pass measure"
    assert probe.trials <= 1 + math.ceil(math.log2(len(costs)))
    assert not probe.fidelity(frozenset(choice.kept_layers[:-1])).passed


def test_when_plain_int8_meets_the_target_nothing_is_measured_further():
    probe = CostProbe({"a": 0.001, "b": 0.001})
    choice = choose_kept_layers({"a": "Gemm", "b": "Gemm"}, probe, "test")
    assert choice.kept_layers == () and choice.sensitivity == () and probe.trials == 1


def test_an_unreachable_target_keeps_the_best_mix_and_says_so():
    # Any int8 at all costs more than the target allows (as a shared quantizer would): only all-float meets it.
    probe = CostProbe({f"layer{i}": 0.001 * i for i in range(6)}, floor=0.5)
    choice = choose_kept_layers({f"layer{i}": "Gemm" for i in range(6)}, probe, "test")
    assert not choice.target_met and len(choice.kept_layers) < 6
    assert choice.chosen == max((probe.fidelity(frozenset()), choice.chosen), key=lambda f: f.cosine_mean)
    assert choice.to_json()["target_met"] is False


def test_a_non_finite_output_is_as_far_from_the_target_as_it_gets():
    reference = np.ones((3, 4), np.float32)
    broken = reference.copy()
    broken[1, 2] = np.nan
    lenient = FloatFallback(cosine_min=0.01, cosine_mean=0.01, norm_ratio_max=1e9)
    measured = measure(reference, broken, lenient)
    assert not measured.passed and measured.compact() == {"cosine_min": -1.0, "cosine_mean": -1.0, "norm_ratio": np.inf}
    assert measured.rank() < measure(reference, -reference, lenient).rank()  # worse than even the opposite direction
    assert measure(reference, reference * 1.5, lenient).norm_ratio_max == pytest.approx(0.5)


def fragile_checkpoint(path: Path) -> Path:
    """Random tiny-vit weights whose first visual attention output projection is fragile in int8 and exact in fp32:
    the value projection's channel 0 is divided by 1000 and the output projection's input column 0 multiplied by
    1000, so one column dwarfs every other weight of the matrix, and a shared int8 scale keeps none of them."""
    config = load_config("tiny-vit")
    model = random_model(config)
    attention = model.visual.transformer.resblocks[0].attn
    width = attention.embed_dim
    with torch.no_grad():
        attention.in_proj_weight[2 * width] /= 1000
        attention.in_proj_bias[2 * width] /= 1000
        attention.out_proj.weight[:, 0] *= 1000
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def fragile_bundle(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fragile")
    checkpoint = fragile_checkpoint(folder / "fragile.pt")
    stages = ("onnx-fp32", "onnx-sim", "onnx-int8", "ncnn-fp32", "ncnn-int8")
    conversion = convert(ConvertRequest(load_config("tiny-vit"), folder / "bundle", str(checkpoint), folder, stages), [].append)
    return folder / "bundle", conversion


def test_the_sensitivity_table_ranks_the_fragile_layer_first_in_both_int8_stages(fragile_bundle):
    bundle, conversion = fragile_bundle
    manifest = Manifest.load(bundle / "manifest.json")
    onnx_choice = manifest.artifact("visual", "onnx-int8").mixed_precision
    ncnn_choice = manifest.artifact("visual", "ncnn-int8").mixed_precision
    for choice in (onnx_choice, ncnn_choice):
        assert choice["all_quantized"]["cosine_mean"] < TARGET.cosine_mean, choice["all_quantized"]  # plain int8 misses
        assert choice["target_met"] and choice["kept_layers"][0] == choice["sensitivity"][0]["layer"]
    # onnx: the node whose weight carries the huge column; ncnn: the first MultiHeadAttention layer.
    graph = onnx.load(str(bundle / "visual.sim.onnx")).graph
    weights = {tensor.name: np.abs(onnx.numpy_helper.to_array(tensor)).max() for tensor in graph.initializer}
    heaviest = max((n for n in graph.node if n.op_type in ("MatMul", "Gemm")), key=lambda n: max(weights.get(i, 0) for i in n.input))
    assert onnx_choice["sensitivity"][0]["layer"] == heaviest.name
    param = read_model(bundle / "visual.fp32.ncnn.param", bundle / "visual.fp32.ncnn.bin")
    first_attention = next(layer.name for layer in param.layers if layer.type == "MultiHeadAttention")
    assert ncnn_choice["sensitivity"][0]["layer"] == first_attention
    assert conversion.parity.passed


def test_layers_kept_in_float_are_float_in_the_artifacts(fragile_bundle):
    bundle, _ = fragile_bundle
    manifest = Manifest.load(bundle / "manifest.json")
    written = read_model(bundle / "visual.int8.ncnn.param", bundle / "visual.int8.ncnn.bin")
    kept_layers = set(manifest.artifact("visual", "ncnn-int8").mixed_precision["kept_layers"])
    assert kept_layers and all(not is_int8(layer) for layer in written.layers if layer.name in kept_layers)
    assert any(is_int8(layer) for layer in written.layers)
    graph = onnx.load(str(bundle / "visual.int8.onnx")).graph
    quantized = {node.name for node in graph.node if node.op_type == "MatMulInteger"}
    for name in manifest.artifact("visual", "onnx-int8").mixed_precision["kept_layers"]:
        # onnxruntime names a quantized node after the original (a Gemm after its `<name>_MatMul`).
        assert not any(q.startswith(name + "_") or q == name for q in quantized), (name, quantized)
    assert quantized


def test_without_the_fallback_the_fragile_tower_fails_parity(tmp_path):
    config = load_config("tiny-vit")
    stages = config.stages.model_copy(update={
        "ncnn_int8": config.stages.ncnn_int8.model_copy(update={"float_fallback": FloatFallback(enabled=False)}),
    })
    checkpoint = fragile_checkpoint(tmp_path / "fragile.pt")
    request = ConvertRequest(config.model_copy(update={"stages": stages}), tmp_path / "bundle", str(checkpoint), tmp_path,
                             ("ncnn-fp32", "ncnn-int8"))
    report = convert(request, [].append).parity
    int8 = next(stage for stage in report.stages if stage.stage == "ncnn-int8")
    assert not int8.passed
    assert Manifest.load(tmp_path / "bundle" / "manifest.json").artifact("visual", "ncnn-int8").mixed_precision is None


def test_the_report_shows_which_layers_stayed_float(fragile_bundle):
    bundle, _ = fragile_bundle
    section = (bundle / "parity.md").read_text().split("## Quantized layers kept in float")[1]
    rows = {line.split(" | ")[0].strip("| "): line for line in section.splitlines() if line.startswith("| visual.")}
    assert set(rows) == {"visual.onnx-int8", "visual.ncnn-int8"}
    assert all(", met |" in row for row in rows.values())


def test_the_sensitivity_command_writes_the_full_table(fragile_bundle, tmp_path):
    from click.testing import CliRunner

    from converters.cli import cli

    bundle = tmp_path / "bundle"
    shutil.copytree(fragile_bundle[0], bundle)
    result = CliRunner().invoke(cli, ["sensitivity", "--out", str(bundle), "--stage", "ncnn-int8", "--samples", "4"])
    assert result.exit_code == 0, result.output
    table = json.loads((bundle / "sensitivity.json").read_text())
    assert table["stage"] == "ncnn-int8" and table["samples"] == 4 and set(table["towers"]) == {"visual", "text"}
    visual = table["towers"]["visual"]
    assert visual[0]["layer"].startswith("attention") and visual[0]["cosine_mean"] < visual[-1]["cosine_mean"]
    assert len(table["towers"]["text"]) == Manifest.load(bundle / "manifest.json").artifact("text", "ncnn-int8").mixed_precision[
        "quantizable_layers"
    ]
    missing = CliRunner().invoke(cli, ["sensitivity", "--out", str(tmp_path / "nowhere"), "--stage", "onnx-int8"])
    assert missing.exit_code != 0 and "Traceback" not in missing.output
