"""Activation smoothing computes the same towers, shrinks the activations' largest channels, and parity checks it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converters.app.preprocess import Transform
from converters.export import smoothing
from converters.export.checkpoint import random_model
from converters.export.families import Site, family, resnet
from converters.export.config import Smoothing, load_config
from converters.export.pipeline import ConvertRequest, convert
from converters.export.stress import activation_outliers, stress_model
from converters.progress import ignore

ON = Smoothing(enabled=True)


def smoothing_on(config, options=ON):
    return config.model_copy(update={"smoothing": options})


def stressed(name: str):
    config = load_config(name)
    return config, stress_model(config, random_model(config))


def photos(config) -> torch.Tensor:
    return torch.randn(4, 3, config.image_resolution, config.image_resolution, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_smoothing_leaves_the_embedding_and_shrinks_the_largest_channels_at_its_sites(name):
    config, model = stressed(name)
    smoothed = smoothing.smooth(model, smoothing_on(config), Transform(config.image_resolution))
    assert smoothed is not model  # a copy: the reference the artifacts are checked against stays the checkpoint's
    pixels = photos(config)
    with torch.no_grad():
        before, after = model.encode_image(pixels), smoothed.encode_image(pixels)
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4 * before.abs().max().item())

    def channel_ratios(m):  # largest channel over the median channel at each site's input, median over the sites
        consumers = [site.consumer for site in family(config, "visual").smoothing_sites(m.visual)]
        return np.median([row.ratio for row in activation_outliers(m, lambda: m.encode_image(pixels), consumers)])

    assert channel_ratios(smoothed) < channel_ratios(model) / 2


def test_the_text_tower_and_a_disabled_option_are_left_alone():
    config, model = stressed("tiny-vit")
    assert smoothing.smooth(model, smoothing_on(config, Smoothing()), Transform(config.image_resolution)) is model
    smoothed = smoothing.smooth(model, smoothing_on(config), Transform(config.image_resolution))
    for name, parameter in model.bert.named_parameters():
        assert torch.equal(parameter, dict(smoothed.bert.named_parameters())[name]), name


def test_stress_outliers_are_what_smoothing_finds_at_its_sites():
    config, model = stressed("tiny-rn")
    assert len(family(config, "visual").smoothing_sites(model.visual)) == 2 + 2 * 4  # the stem's two pairs and two per bottleneck
    assert np.median([row.ratio for row in activation_outliers(model.visual, lambda: model.visual(photos(config)))]) > 15


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_a_smoothed_conversion_passes_fp32_parity_against_the_unsmoothed_checkpoint(tmp_path, name):
    config = load_config(name).model_copy(update={"smoothing": ON})
    request = ConvertRequest(config, tmp_path / "bundle", "stress", tmp_path, ("onnx-fp32", "ncnn-fp32"))
    report = convert(request, ignore).parity
    assert report.passed


def test_a_rescaling_that_is_not_exact_fails_fp32_parity(tmp_path, monkeypatch):
    """The guard: parity compares with the unsmoothed checkpoint, so a site whose weight is not compensated shows."""
    sites = resnet.smoothing_sites

    def uncompensated(visual):
        found = sites(visual)
        return [Site(site.norm, site.consumer, torch.nn.Parameter(site.weight.detach().clone())) for site in found]

    monkeypatch.setattr(resnet, "smoothing_sites", uncompensated)
    config = load_config("tiny-rn").model_copy(update={"smoothing": ON})
    report = convert(ConvertRequest(config, tmp_path / "bundle", "stress", tmp_path, ("onnx-fp32",)), ignore).parity
    assert not report.passed
