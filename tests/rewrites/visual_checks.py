"""Checks every visual-tower rewrite must pass, shared by the per-family test files."""

import torch

from converters.rewrites import export_module


def assert_equals_encode_image(model, resolution: int, seed: int) -> None:
    pixels = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model.encode_image(pixels)
        actual = export_module(model, "visual")(pixels)
    assert actual.shape == expected.shape == (1, 32)
    assert (actual - expected).abs().max().item() <= 1e-5


def assert_shares_parameters(model, expected_type) -> None:
    module = export_module(model, "visual")
    assert isinstance(module, expected_type)
    assert not module.training
    originals = {p.data_ptr() for p in model.visual.parameters()}
    assert {p.data_ptr() for p in module.parameters()} == originals


def assert_leaves_model_untouched(model) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_module(model, "visual")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
