"""Both tiny architectures through the rewrites and pnnx into ncnn, run in ncnn, compared with PyTorch."""


import numpy as np
import pytest
import torch
from cn_clip.clip import tokenize

from converters.app.runtimes import TowerPair
from converters.app.runtimes.ncnn_runtime import NcnnTower
from converters.errors import ConversionError
from converters.export.checkpoint import random_model
from converters.export.config import load_config
from converters.export.context import StageContext
from converters.export.stages.ncnn_float import NcnnOptions
from converters.app.manifest import Manifest
from converters.export.ncnn.pnnx import convert_with_pnnx
from converters.export.stages import ncnn_float
from converters.export.towers import ModelTower, export_spec

# Per-sample cosine floors; ncnn-fp16 is pnnx's fp16 .bin under ncnn's default Options.
COSINE_MIN = {"ncnn-fp32": 0.99999, "ncnn-fp16": 0.9995}
# ncnn's .bin marks each block of fp16 weights with this tag; fp32 blocks start with 0.
FP16_TAG = (0x01306B47).to_bytes(4, "little")
# 2, 5 and 52 tokens, and one row with padding inside, which cn_clip masks like trailing padding.
TEXTS = ["", "一只猫", "海边的日落" * 20, "一只猫在沙发上睡觉"]


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-rn"])
def tiny(request):
    config = load_config(request.param)
    model = random_model(config)
    size = config.image_resolution
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(7))
    token_ids = tokenize(TEXTS)
    token_ids[3, 3:5] = 0
    with torch.no_grad():
        reference = model.encode_image(pixels).numpy(), model.encode_text(token_ids).numpy()
    return config, model, (pixels.numpy(), token_ids.numpy()), reference


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("stage", list(COSINE_MIN))
def test_ncnn_matches_pytorch(tiny, stage, tmp_path):
    config, model, (pixels, token_ids), (images, texts) = tiny
    context = StageContext(Manifest.load_or_new(tmp_path / "manifest.json", config.name, "0" * 64), tmp_path)
    artifacts = [
        ncnn_float.run(ModelTower(model, config, tower), NcnnOptions(), context, stage=stage) for tower in ("visual", "text")
    ]
    assert all((FP16_TAG in a.files[1].read_bytes()) == (stage == "ncnn-fp16") for a in artifacts)
    embedder = TowerPair(*(NcnnTower(artifact, threads=1) for artifact in artifacts))
    assert cosines(embedder.embed_images(pixels), images).min() >= COSINE_MIN[stage]
    assert cosines(embedder.embed_texts(token_ids), texts).min() >= COSINE_MIN[stage]
    assert not model.training and not model.bert.training


def test_specs_state_what_the_app_feeds():
    config = load_config("tiny-vit")
    text, visual = (export_spec(config, tower, "ncnn").graph for tower in ("text", "visual"))
    assert [(t.name, t.dtype, t.shape, t.role) for t in text.inputs] == [
        ("in0", "int32", ("sequence",), "token_ids"),
        ("in1", "int32", ("sequence",), "position_ids"),
    ]
    assert [(t.name, t.dtype, t.shape) for t in (*visual.inputs, *visual.outputs)] == [
        ("in0", "float32", (3, 32, 32)),
        ("out0", "float32", (32,)),
    ]
    assert ncnn_float.FP32_OPTIONS == {
        "use_fp16_storage": False, "use_fp16_packed": False, "use_fp16_arithmetic": False, "flush_denormals": True
    }


@pytest.mark.parametrize(
    "tower, problem",
    [
        # cn_clip builds the text mask with torch.ne, which ncnn lacks; pnnx still exits 0.
        ("text", r"layer types ncnn does not have: .*torch\.ne"),
        # The sequence-first ViT puts the sequence on ncnn's batch axis; pnnx only warns.
        ("visual", r"binaryop broadcast across batch axis"),
    ],
)
def test_unconvertible_graph_fails_with_the_pnnx_log(tower, problem, tmp_path):
    # cn_clip's own tower, as the ONNX export traces it, without the export-only rewrite.
    config = load_config("tiny-vit")
    example = tokenize(TEXTS[1:2]) if tower == "text" else torch.zeros(1, 3, 32, 32)
    module = export_spec(config, tower, "onnx").module(random_model(config))
    with pytest.raises(ConversionError, match=rf"(?s){problem}.*pnnx log \(tail\).*pass_ncnn") as error:
        convert_with_pnnx(module, (example,), tmp_path / "m.param", tmp_path / "m.bin", fp16=False)
    name, log = error.value.log
    assert name == "m.pnnx.log" and "pass_ncnn" in log


def test_example_inputs_fill_the_dynamic_dim():
    token_ids, position_ids = export_spec(load_config("tiny-vit"), "text", "ncnn").example_inputs(7)
    assert token_ids.shape == position_ids.shape == (1, 7)
    assert token_ids.dtype == torch.int64 and int(token_ids.min()) > 0
    assert position_ids.tolist() == [list(range(7))]
