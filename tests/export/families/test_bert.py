"""The unpadded BERT rewrite gives cn_clip's encode_text [CLS] embedding of the padded, masked ids."""

import pytest
import torch
from cn_clip.clip import tokenize

from converters.export.checkpoint import random_model
from converters.export.config import load_config
from converters.export.families import bert
from converters.export.towers import export_spec

# Token counts with [CLS] and [SEP]: 2 (empty text), 5, and 52 (truncated to the context length).
TEXTS = {2: "", 5: "一只猫", 52: "海边的日落" * 20}


CONFIG = load_config("tiny-vit")


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIG)


def export_module(model):
    return export_spec(CONFIG, "text", "ncnn").module(model)


def unpadded(row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    positions = row.nonzero().flatten()
    return row[positions][None], positions[None]


def test_texts_have_the_lengths_they_claim():
    assert [int(row.count_nonzero()) for row in tokenize(list(TEXTS.values()))] == list(TEXTS)


@pytest.mark.parametrize("batch", [1, len(TEXTS)])
def test_equals_encode_text_on_padded_ids(model, batch):
    ids = tokenize(list(TEXTS.values())[-batch:])
    module = export_module(model)
    with torch.no_grad():
        expected = model.encode_text(ids)
        actual = torch.cat([module(*unpadded(row)) for row in ids])
    assert actual.shape == expected.shape == (batch, 32)
    assert (actual - expected).abs().max().item() <= 1e-5


def test_padding_inside_the_row_is_masked_like_cn_clip(model):
    # cn_clip masks every 0 id, wherever it is; the rewrite keeps the other ids at their positions.
    ids = tokenize([TEXTS[52]])
    ids[0, 10:20] = 0
    with torch.no_grad():
        expected = model.encode_text(ids)
        actual = export_module(model)(*unpadded(ids[0]))
    assert (actual - expected).abs().max().item() <= 1e-5


def test_is_chosen_for_text_and_shares_the_parameters(model):
    module = export_module(model)
    assert isinstance(module, bert.UnpaddedBert)
    assert not module.training
    originals = {p.data_ptr() for p in model.parameters()}
    assert {p.data_ptr() for p in module.parameters()} <= originals
