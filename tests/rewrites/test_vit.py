"""The batch-first ViT rewrite equals cn_clip's encode_image."""

import pytest
import torch

from converters.config import load_config
from converters.rewrites import export_module, vit
from converters.stages.checkpoint import random_model


@pytest.fixture(scope="module")
def model():
    return random_model(load_config("tiny-vit"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_encode_image(model, seed):
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model.encode_image(pixels)
        actual = export_module(model, "visual")(pixels)
    assert actual.shape == expected.shape == (1, 32)
    assert (actual - expected).abs().max().item() <= 1e-5


def test_is_chosen_for_a_vit_and_shares_its_parameters(model):
    module = export_module(model, "visual")
    assert isinstance(module, vit.BatchFirstViT)
    assert not module.training
    originals = {p.data_ptr() for p in model.visual.parameters()}
    assert {p.data_ptr() for p in module.parameters()} == originals


def test_leaves_the_model_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_module(model, "visual")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not block.attn.batch_first for block in model.visual.transformer.resblocks)
