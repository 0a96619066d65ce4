"""Checks every visual-tower rewrite must pass, shared by the per-family test files."""

import torch

from converters.export.towers import export_spec


def rewritten(model, config):
    return export_spec(config, "visual", "ncnn").module(model)


def assert_equals_encode_image(model, config, seed: int) -> None:
    resolution = config.image_resolution
    pixels = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model.encode_image(pixels)
        actual = rewritten(model, config)(pixels)
    assert actual.shape == expected.shape == (1, 32)
    assert (actual - expected).abs().max().item() <= 1e-5


def assert_shares_parameters(model, config, expected_type) -> None:
    module = rewritten(model, config)
    assert isinstance(module, expected_type)
    assert not module.training
    originals = {p.data_ptr() for p in model.visual.parameters()}
    assert {p.data_ptr() for p in module.parameters()} == originals


def assert_leaves_model_untouched(model, config) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rewritten(model, config)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
