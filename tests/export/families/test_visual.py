"""The visual-tower rewrites (batch-first ViT; ModifiedResNet with a first-query attention pool) equal cn_clip."""

import pytest
import torch

from converters.export.checkpoint import random_model
from converters.export.config import load_config
from converters.export.families import resnet, vit
from converters.export.towers import export_spec

# The rewrite each family gets, chosen by the config's family, never by looking at the model.
REWRITES = {"tiny-vit": vit.BatchFirstViT, "tiny-rn": resnet.BatchFirstResNet}


@pytest.fixture(scope="module", params=list(REWRITES))
def tiny(request):
    config = load_config(request.param)
    return config, random_model(config), REWRITES[request.param]


def rewritten(config, model):
    return export_spec(config, "visual", "ncnn").module(model)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_encode_image(tiny, seed):
    config, model, _ = tiny
    size = config.image_resolution
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model.encode_image(pixels)
        actual = rewritten(config, model)(pixels)
    assert actual.shape == expected.shape == (1, 32)
    assert (actual - expected).abs().max().item() <= 1e-5


def test_is_chosen_by_family_and_shares_the_parameters(tiny):
    config, model, expected_type = tiny
    module = rewritten(config, model)
    assert isinstance(module, expected_type) and not module.training
    originals = {p.data_ptr() for p in model.visual.parameters()}
    assert {p.data_ptr() for p in module.parameters()} == originals


def test_leaves_the_model_untouched(tiny):
    config, model, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rewritten(config, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    if config.architecture.vision.family == "vit":
        assert all(not block.attn.batch_first for block in model.visual.transformer.resblocks)
