"""Stress weights carry the outliers of trained towers, stay finite, and convert through the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from converters.app.preprocess import Transform
from converters.data.calibration_set import calibration_pixels
from converters.export.checkpoint import random_model, resolve, run
from converters.export.config import StressOptions, load_config
from converters.export.stress import activation_outliers, stress_model
from tests.conftest import convert_random


def forward(model, config):
    pixels = torch.randn(4, 3, config.image_resolution, config.image_resolution, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[101, 2769, 4263, 3300, 4638, 102] + [0] * 46, [101, 3862, 6804, 4638, 3189, 5862, 102] + [0] * 45])
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(ids)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stress_weights_put_a_few_huge_channels_into_every_matmul_and_stay_in_float16_range(name, seed):
    config = load_config(name).model_copy(update={"stress": StressOptions(seed=seed)})
    stressed, plain = stress_model(config, random_model(config)), random_model(config)
    inputs = {label: activation_outliers(m, lambda m=m: forward(m, config)) for label, m in (("stress", stressed), ("random", plain))}
    # Largest channel over the median channel at each matmul or convolution input, median over the layers.
    ratios = {label: np.median([row.ratio for row in rows]) for label, rows in inputs.items()}
    assert ratios["stress"] >= 15 and ratios["random"] <= 6, ratios
    # Trained towers run under float16 autocast, so theirs fit; stress weights that did not would model no trained tower.
    assert max(row.peak for row in inputs["stress"]) < 65504 / 8
    assert all(torch.isfinite(e).all() for e in forward(stressed, config))


def float16_rounding_cosine(stress: StressOptions) -> float:
    """The lowest cosine between a stress tiny-rn's visual embeddings and those with weights and activations
    rounded to float16, on the calibration photos."""
    config = load_config("tiny-rn").model_copy(update={"stress": stress})
    visual = stress_model(config, random_model(config)).visual
    photos = torch.from_numpy(calibration_pixels(8, Transform(config.image_resolution)))
    with torch.no_grad():
        exact = visual(photos)
        for parameter in visual.parameters():
            parameter.copy_(parameter.half().float())
        for module in visual.modules():
            if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Linear, nn.AvgPool2d)):
                module.register_forward_hook(lambda module, inputs, output: output.half().float())
        rounded = visual(photos)
    return float(torch.nn.functional.cosine_similarity(exact, rounded).min())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_stress_resnet_is_not_chaotic_float16_rounding_leaves_its_embedding_in_place(seed):
    """Trained ResNets run in float16 unharmed; a trunk that amplifies rounding would fail every float16 and int8
    stage for a reason no trained checkpoint has."""
    assert float16_rounding_cosine(StressOptions(seed=seed)) > 0.9999


def test_unit_gain_residual_branches_make_the_trunk_chaotic():
    """The guard above can fail: without the small residual branches of trained ResNets, rounding moves it."""
    assert float16_rounding_cosine(StressOptions(seed=1, branch_gain=1.0)) < 0.9995


def test_the_stress_digest_follows_the_photos_its_batch_norm_statistics_come_from(tmp_path, monkeypatch):
    from converters.export import checkpoint

    config = load_config("tiny-rn")
    before = {name: resolve(config, name, tmp_path).digest for name in ("stress", "random")}
    monkeypatch.setattr(checkpoint, "photos_digest", lambda: "other photos")
    after = {name: resolve(config, name, tmp_path).digest for name in ("stress", "random")}
    assert after["stress"] != before["stress"] and after["random"] == before["random"]


def test_stress_batch_norm_statistics_are_measured_so_that_gains_do_not_compound():
    config = load_config("tiny-rn")
    stressed = stress_model(config, random_model(config))
    norm = stressed.visual.layer1[0].bn1
    assert not torch.equal(norm.running_var, torch.ones_like(norm.running_var))  # measured, not the initial 1
    assert not stressed.visual.training and norm.momentum == 0.1  # left as it was found: eval mode, default momentum


def test_stress_weight_matrices_are_heavy_tailed():
    config = load_config("tiny-vit")
    weight = stress_model(config, random_model(config)).bert.encoder.layer[0].intermediate.dense.weight.detach().flatten().double()
    standardized = (weight - weight.mean()) / weight.std()
    assert float((standardized**4).mean()) > 4.5  # a Gaussian has kurtosis 3; Student-t with 5 degrees of freedom, 9


def test_stress_is_its_own_weights_and_converts(tmp_path):
    config = load_config("tiny-vit")
    stress, random = (resolve(config, name, tmp_path) for name in ("stress", "random"))
    assert stress.digest != random.digest and "stress weights" in stress.description
    layer = "bert.encoder.layer.0.intermediate.dense.weight"
    assert not torch.equal(run(config, stress).model.state_dict()[layer], run(config, random).model.state_dict()[layer])
    conversion = convert_random("tiny-vit", tmp_path / "bundle", stages=("onnx-fp32", "onnx-sim"))
    assert conversion.parity.passed  # the plain conversion as the baseline of the next line
    from converters.export.pipeline import ConvertRequest, convert
    from converters.progress import ignore

    stressed = convert(ConvertRequest(config, tmp_path / "stressed", "stress", tmp_path, ("onnx-fp32", "onnx-sim")), ignore)
    assert stressed.manifest.checkpoint.description.startswith("stress weights")
    assert all(stage.passed for stage in stressed.parity.stages)  # fp32 conversion is exact on stress weights too


def test_a_stress_bundle_is_checked_again_from_its_manifest(tmp_path):
    import subprocess
    import sys

    from converters.export.pipeline import ConvertRequest, convert
    from converters.progress import ignore

    out = tmp_path / "stressed"
    convert(ConvertRequest(load_config("tiny-vit"), out, "stress", tmp_path, ("onnx-fp32",)), ignore)
    (out / "reference.npz").unlink()  # parity must rebuild the stress model from what the manifest records
    result = subprocess.run([sys.executable, "-m", "converters", "parity", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-rn"])
def stress_int8(request, tmp_path_factory):
    from converters.export.pipeline import ConvertRequest, convert
    from converters.progress import ignore

    out = tmp_path_factory.mktemp(f"{request.param}-stress") / "bundle"
    stages = ("onnx-fp32", "onnx-sim", "onnx-int8", "ncnn-fp32", "ncnn-fp16", "ncnn-int8")
    return convert(ConvertRequest(load_config(request.param), out, "stress", out / "cache", stages), ignore)


def test_every_int8_artifact_of_a_stress_tower_passes_parity(stress_int8):
    """`make convert MODEL=… WEIGHTS=stress` in miniature: the float fallback and aciq together hold the tolerance."""
    assert stress_int8.parity.passed, [f for stage in stress_int8.parity.stages for f in stage.failures]


def test_aciq_keeps_the_outlier_channels_that_kl_clips(stress_int8):
    """ncnn-int8's default thresholds leave a stress text tower all-int8 at the fallback's target; with kl its
    projection (reading the last LayerNorm's outlier dimensions) had to go back to float (tiny-vit: cosine 0.81)."""
    choice = stress_int8.manifest.artifact("text", "ncnn-int8").mixed_precision
    assert choice["all_quantized"]["cosine_min"] >= choice["target"]["cosine_min"] and not choice["kept_layers"]
