"""The fp32 ONNX towers against PyTorch: padded batches, unpadded sequences, dynamic batch."""

import numpy as np
import onnx
import pytest
import torch
from cn_clip.clip import tokenize

from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.app.runtimes import open_tower
from converters.app.runtimes.onnx_runtime import trim_padding
from converters.export import checkpoint
from converters.export.config import load_config

TEXTS = ["猫", "海边的日落", "a photo of a cat，一张猫的照片", "2025年的iPhone 16 Pro Max拍摄的夜景" * 3]


@pytest.fixture()
def reference(tiny_bundle):
    config = load_config(Manifest.load(BundleLayout(tiny_bundle).manifest).model)
    return config, checkpoint.random_model(config)


@pytest.mark.parametrize("stage", ["onnx-fp32", "onnx-sim"])
def test_text_tower_padded_batch(tiny_bundle, reference, stage):
    config, model = reference
    ids = tokenize(TEXTS, context_length=config.context_length)
    session = open_tower(Manifest.load(BundleLayout(tiny_bundle).manifest).artifact("text", stage)).session
    got = session.run(None, {"token_ids": ids.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model.encode_text(ids).numpy(), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("length", [2, 3, 17, 52])
def test_text_tower_unpadded_sequence_of_any_length(tiny_bundle, reference, length):
    config, model = reference
    ids = tokenize(["海" * 60], context_length=config.context_length)[:, :length].clone()
    ids[0, -1] = 102  # [SEP] closes every tokenized sequence
    padded = torch.zeros(1, config.context_length, dtype=torch.long)
    padded[:, :length] = ids
    session = open_tower(Manifest.load(BundleLayout(tiny_bundle).manifest).artifact("text", "onnx-fp32")).session
    got = session.run(None, {"token_ids": ids.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model.encode_text(padded).numpy(), atol=2e-5, rtol=1e-4)


def test_visual_tower_dynamic_batch(tiny_bundle, reference):
    config, model = reference
    runner = open_tower(Manifest.load(BundleLayout(tiny_bundle).manifest).artifact("visual", "onnx-fp32"))
    for batch in (1, 3):
        pixels = np.random.default_rng(batch).standard_normal((batch, 3, config.image_resolution, config.image_resolution)).astype(np.float32)
        with torch.no_grad():
            np.testing.assert_allclose(runner.embed(pixels), model.encode_image(torch.from_numpy(pixels)).numpy(), atol=2e-5, rtol=1e-4)


def test_graph_declares_symbolic_dims(tiny_bundle):
    model = onnx.load(str(BundleLayout(tiny_bundle).model_files("text", "onnx-fp32")[0]))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]


def test_trim_padding_keeps_the_longest_row():
    ids = np.array([[101, 5, 102, 0, 0], [101, 102, 0, 0, 0]])
    assert trim_padding(ids).tolist() == [[101, 5, 102], [101, 102, 0]]
