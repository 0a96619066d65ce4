"""The batch-first ViT rewrite equals cn_clip's encode_image."""

import pytest
from tests.export.rewrites.visual_checks import (
    assert_equals_encode_image,
    assert_leaves_model_untouched,
    assert_shares_parameters,
)

from converters.export.checkpoint import random_model
from converters.export.config import load_config
from converters.export.rewrites import vit


CONFIG = load_config("tiny-vit")


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIG)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_encode_image(model, seed):
    assert_equals_encode_image(model, CONFIG, seed)


def test_is_chosen_for_a_vit_and_shares_its_parameters(model):
    assert_shares_parameters(model, CONFIG, vit.BatchFirstViT)


def test_leaves_the_model_untouched(model):
    assert_leaves_model_untouched(model, CONFIG)
    assert all(not block.attn.batch_first for block in model.visual.transformer.resblocks)
