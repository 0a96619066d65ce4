"""Hugging Face ChineseCLIPModel folders as input: one conversion path, parity against transformers itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    BertTokenizer,
    ChineseCLIPConfig,
    ChineseCLIPImageProcessor,
    ChineseCLIPModel,
    ChineseCLIPProcessor,
)

from converters.app.preprocess import Transform, load_image
from converters.data import PARITY_SET_DIR
from converters.errors import CheckpointError
from converters.export import huggingface
from converters.export.checkpoint import cn_clip_vocab, resolve, run
from converters.export.config import load_config
from converters.export.pipeline import ConvertRequest, convert
from converters.progress import ignore
from converters.validate.report import render_markdown
from tests.conftest import TINY_BUNDLE_STAGES

# The tiny-vit architecture (converters/export/configs/tiny-vit.yaml) in transformers' terms.
TINY = ChineseCLIPConfig(
    text_config=dict(vocab_size=21128, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                     max_position_embeddings=64, hidden_act="gelu"),
    vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                       patch_size=8),
    projection_dim=32,
)


def save_tiny(folder: Path, safe_serialization: bool = True, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = ChineseCLIPModel(TINY).eval()
    model.save_pretrained(folder, safe_serialization=safe_serialization)
    image_processor = ChineseCLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ChineseCLIPProcessor(image_processor=image_processor, tokenizer=BertTokenizer(str(cn_clip_vocab()))).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("hf") / "tiny-chinese-clip")


@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_a_saved_chinese_clip_model_converts_through_every_stage_with_parity_against_transformers(tmp_path, safe_serialization):
    folder = save_tiny(tmp_path / "hf", safe_serialization)
    config = huggingface.infer_config(folder)
    assert config.name == "tiny-vit"  # the folder's architecture is a known model's
    request = ConvertRequest(config, tmp_path / "bundle", str(folder), tmp_path / "cache", stages=TINY_BUNDLE_STAGES)
    conversion = convert(request, ignore)
    assert conversion.parity.passed, render_markdown(conversion.parity)
    assert [s.stage for s in conversion.parity.stages][-1] == "ncnn-int8"
    manifest = conversion.manifest
    assert manifest.preprocess["resize_mode"] == "shortest_edge_center_crop" and manifest.preprocess["shortest_edge"] == 32
    assert manifest.checkpoint.source == str(folder) and "Hugging Face" in manifest.checkpoint.description


def test_the_weights_map_onto_cn_clip_exactly(hf_folder):
    """The mapped cn_clip model computes transformers' features: same pixels and ids in, same vectors out."""
    config = load_config("tiny-vit")
    model = run(config, resolve(config, str(hf_folder), hf_folder)).model
    reference = ChineseCLIPModel.from_pretrained(str(hf_folder)).eval()
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[101, 2769, 4263, 102, 0, 0], [101, 3862, 6804, 4638, 3189, 102]])

    def features(output):
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), features(reference.get_image_features(pixel_values=pixels)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            model.encode_text(ids), features(reference.get_text_features(input_ids=ids, attention_mask=(ids != 0).long())),
            rtol=1e-5, atol=1e-5,
        )


def test_the_bundles_preprocessing_is_the_processors(hf_folder):
    """The torch-free transform the bundle ships equals ChineseCLIPImageProcessor (Pillow backend) on every parity photo."""
    from transformers import ChineseCLIPImageProcessorPil

    processor = ChineseCLIPImageProcessorPil.from_pretrained(str(hf_folder))
    transform = huggingface.transform(hf_folder, 32)
    assert transform == Transform(32, resize="shortest_edge_center_crop", shortest_edge=32)
    for path in sorted((PARITY_SET_DIR / "images").iterdir()):
        image = load_image(path)
        expected = processor(images=image, return_tensors="np")["pixel_values"][0]
        assert abs(transform.pixels(image) - expected).max() <= 1e-5, path.name


def test_a_model_that_does_not_match_names_the_fields(hf_folder, tmp_path):
    with pytest.raises(CheckpointError, match=r"not model 'RN50'.*vision\.layers: \[3, 4, 6, 3\] in model 'RN50', 2 in the checkpoint"):
        resolve(load_config("RN50"), str(hf_folder), tmp_path)


def test_a_folder_without_weights_says_what_it_needs(hf_folder, tmp_path):
    folder = tmp_path / "no-weights"
    shutil.copytree(hf_folder, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no weights: neither model.safetensors nor pytorch_model.bin"):
        resolve(load_config("tiny-vit"), str(folder), tmp_path)


def test_a_corrupted_safetensors_file_is_one_error(hf_folder, tmp_path):
    folder = tmp_path / "corrupt"
    shutil.copytree(hf_folder, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    config = load_config("tiny-vit")
    with pytest.raises(CheckpointError, match="model.safetensors cannot be read .* truncated or corrupt"):
        run(config, resolve(config, str(folder), tmp_path))


def test_no_hub_access_says_how_to_pass_a_folder(tmp_path):
    """In a child with the hub offline (set before huggingface_hub loads): no request leaves the machine."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run(
        [sys.executable, "-m", "converters", "convert", "--checkpoint", "hf:OFA-Sys/chinese-clip-vit-base-patch16",
         "--out", str(tmp_path / "bundle")],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Could not get OFA-Sys/chinese-clip-vit-base-patch16" in result.stderr and "--checkpoint DIR" in result.stderr


def test_without_model_or_folder_convert_asks_for_a_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "converters", "convert", "--checkpoint", "random"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "Give MODEL" in result.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["vision_config"].update(num_hidden_layers=2_000_000_000), "less than or equal to 256"),
    (lambda c: c["vision_config"].update(num_attention_heads=0), "num_attention_heads must be a positive"),
    (lambda c: c.pop("projection_dim"), "lacks or mistypes 'projection_dim'"),
    (lambda c: c["text_config"].update(hidden_size="big"), "lacks or mistypes|not a valid model config"),
])
def test_a_hostile_config_json_is_one_error(hf_folder, tmp_path, edit, message):
    import json

    from converters.errors import UserError

    folder = tmp_path / "hostile"
    shutil.copytree(hf_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=message):
        huggingface.infer_config(folder)


@pytest.mark.parametrize("settings, expected", [
    ({"size": 40, "crop_size": 32, "do_center_crop": True}, Transform(32, resize="shortest_edge_center_crop", shortest_edge=40)),
    ({"size": {"height": 32, "width": 32}, "do_center_crop": False}, Transform(32)),
])
def test_processor_sizes_as_transformers_reads_them(tmp_path, settings, expected):
    import json

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))
    assert huggingface.transform(tmp_path, 32) == expected


@pytest.mark.parametrize("settings", [{"image_std": [0.2, 0, 0.2]}, {"do_resize": False}, {"size": {"shortest_edge": 16}, "crop_size": 32, "do_center_crop": True}])
def test_processor_settings_that_cannot_feed_the_model_are_refused(tmp_path, settings):
    import json

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))
    with pytest.raises(CheckpointError, match="preprocessor_config.json"):
        huggingface.transform(tmp_path, 32)
