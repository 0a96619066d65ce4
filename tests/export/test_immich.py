"""The Immich folder of a tiny bundle, loaded as Immich's machine-learning service loads it: it passes, and each
broken folder (built broken on purpose) fails the check for its own reason."""

from __future__ import annotations

import functools
import importlib.resources
import json
import random
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from cn_clip.clip import tokenize as cn_clip_tokenize
from onnx import TensorProto

from converters.app.immich import MARKER, ImmichFolder, immich_name
from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.cli import cli
from converters.errors import UserError
from converters.export import immich
from converters.export.checkpoint import load_recorded
from converters.export.config import load_config
from converters.export.immich_check import TOKEN_SAMPLES, check_folder
from converters.validate.immich_loader import ImmichTextual

NAME = "ViT-B-16__openai"  # a tiny model's 32 dims fit no allow-listed name; the check does not mind


def write(bundle, root, stage="onnx-sim") -> tuple[ImmichFolder, Manifest]:
    manifest = Manifest.load(BundleLayout(bundle).manifest)
    return immich.write_folder(manifest, stage, NAME, root), manifest


def check(folder: ImmichFolder, manifest: Manifest, stage="onnx-sim"):
    config = load_config(manifest.model)
    model = functools.cache(lambda: load_recorded(config, manifest))
    return check_folder(folder, manifest, config, stage, NAME, model, lambda event: None)


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    """A copy: the check may write the bundle's reference cache."""
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


@pytest.mark.parametrize("stage", ["onnx-sim", "onnx-fp16", "onnx-int8"])
def test_a_tiny_models_folder_passes_as_immich_loads_it(bundle, tmp_path, stage):
    folder, manifest = write(bundle, tmp_path / "immich", stage)
    result = check(folder, manifest, stage)
    assert result.passed, result.failures
    assert set(result.visual) == {"shortest", "squash"}  # the crop every version does, the squash newer ones do
    assert result.token_ids_differing == [] and result.token_texts == result.captions + len(TOKEN_SAMPLES)
    assert 0 < result.crop_cost["cosine_mean"] <= 1
    text = onnx.load(str(folder.text_model)).graph
    assert text.input[0].name == "text" and text.input[0].type.tensor_type.elem_type == TensorProto.INT32
    assert [d.dim_value for d in text.input[0].type.tensor_type.shape.dim] == [1, manifest.tokenizer["context_length"]]
    assert json.loads(folder.tokenizer_config.read_text())["pad_token"] == "[PAD]"


def broken(bundle, tmp_path, damage) -> list[str]:
    folder, manifest = write(bundle, tmp_path / "immich")
    damage(folder)
    result = check(folder, manifest)
    assert not result.passed
    return result.failures


def test_a_wrong_tokenizer_file_fails(bundle, tmp_path):
    def swap_two_caption_characters(folder):
        data = json.loads(folder.tokenizer.read_text("utf-8"))
        vocab = data["model"]["vocab"]
        vocab["猫"], vocab["狗"] = vocab["狗"], vocab["猫"]
        folder.tokenizer.write_text(json.dumps(data, ensure_ascii=False), "utf-8")

    failures = broken(bundle, tmp_path, swap_two_caption_characters)
    assert any("token ids differ from cn_clip's" in f for f in failures), failures


def test_an_int64_text_input_fails(bundle, tmp_path):
    def int64_input(folder):
        model = onnx.load(str(folder.text_model))
        model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64  # the bundle's own input type
        onnx.save(model, str(folder.text_model))

    failures = broken(bundle, tmp_path, int64_input)
    assert any("fails on Immich's input text int32" in f for f in failures), failures


def test_an_unnormalized_output_fails(bundle, tmp_path):
    def drop_normalization(folder):
        model = onnx.load(str(folder.visual_model))
        node = next(n for n in model.graph.node if n.op_type == "LpNormalization")
        node.op_type = "Identity"
        del node.attribute[:]
        onnx.save(model, str(folder.visual_model))

    failures = broken(bundle, tmp_path, drop_normalization)
    assert any(f.startswith("visual (shortest): embedding norm off by") for f in failures), failures


def test_a_missing_pad_token_fails(bundle, tmp_path):
    def no_pad_token(folder):
        config = json.loads(folder.tokenizer_config.read_text())
        del config["pad_token"]
        folder.tokenizer_config.write_text(json.dumps(config))

    failures = broken(bundle, tmp_path, no_pad_token)
    assert any("has no pad_token" in f for f in failures), failures


@pytest.fixture(scope="module")
def immich_textual(tiny_bundle, tmp_path_factory) -> ImmichTextual:
    folder, _ = write(tiny_bundle, tmp_path_factory.mktemp("immich") / "folder")
    return ImmichTextual(folder)


def test_immichs_token_ids_are_cn_clips_on_the_tokenizer_corpus(immich_textual):
    """The corpus of tests/app/test_tokenizer.py: jieba's words and sentences built from them."""
    dictionary = importlib.resources.files("jieba") / "dict.txt"
    words = [line.split(" ")[0] for line in dictionary.read_text("utf-8").splitlines()]
    rng = random.Random(1)
    separators = ["", "", " ", "，", "。", "！", "、", " and ", "2025年", "ABC", "…", "\n"]
    sentences = ["".join(rng.choice(words) + rng.choice(separators) for _ in range(rng.randint(1, 40)))
                 for _ in range(2_000)]
    texts = [*random.Random(0).sample(words, 20_000), *sentences]
    expected = cn_clip_tokenize(texts, context_length=52).numpy()
    got = np.concatenate([immich_textual.token_ids(text) for text in texts])
    differing = [text for text, a, b in zip(texts, got, expected) if not np.array_equal(a, b)]
    assert got.dtype == np.int32 and not differing, differing[:5]


def test_immichs_path_differs_from_cn_clip_where_the_hf_file_does(immich_textual):
    """Private-use characters: cn_clip gives [UNK], tokenizers' BertNormalizer drops them (docs/immich.md)."""
    assert list(cn_clip_tokenize(["猫\ue000狗"]).numpy()[0][:5]) == [101, 4344, 100, 4318, 102]
    assert list(immich_textual.token_ids("猫\ue000狗")[0][:4]) == [101, 4344, 4318, 102]


def test_the_command_writes_checks_and_installs_without_overwriting_what_it_did_not_write(bundle, tmp_path):
    out, cache = tmp_path / "folder", tmp_path / "cache"
    foreign = cache / "clip" / NAME
    foreign.mkdir(parents=True)
    (foreign / "model.onnx").write_text("Immich's own download")
    args = ["immich", "--bundle", str(bundle), "--name", NAME, "--out", str(out), "--install", str(cache)]
    result = CliRunner().invoke(cli, args)
    assert "PASSED" in result.output and (out / "immich-check.md").is_file() and (out / MARKER).is_file()
    assert isinstance(result.exception, UserError) and "was not written by this tool" in str(result.exception)
    assert (foreign / "model.onnx").read_text() == "Immich's own download"
    shutil.rmtree(foreign)
    immich.install(out, cache, NAME)
    immich.install(out, cache, NAME)  # again: the first copy is kept as the backup
    assert (cache / "clip" / NAME / MARKER).is_file() and (cache / "clip" / f"{NAME}.cnclip-previous" / MARKER).is_file()


def test_names_follow_the_embedding_size_and_refuse_multilingual_ones():
    assert immich_name(512, 224) == "ViT-B-16__openai" and immich_name(768, 336) == "ViT-L-14-336__openai"
    assert immich_name(1024, 224) == "RN50__openai"
    with pytest.raises(UserError, match="multilingual"):
        immich_name(512, 224, "nllb-clip-base-siglip__v1")
    with pytest.raises(UserError, match="give --name"):
        immich_name(32, 32)


def test_a_folder_failing_the_check_is_set_aside_and_the_command_exits_3(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(immich, "_normalized_output", lambda graph, dim: None)  # the towers' raw embeddings
    out = tmp_path / "folder"
    result = CliRunner().invoke(cli, ["immich", "--bundle", str(bundle), "--name", NAME, "--out", str(out)])
    assert result.exit_code == 3 or getattr(result.exception, "exit_code", None) == 3, result.output
    assert "FAILED" in result.output and "embedding norm off by" in result.output
    assert not out.exists() and (tmp_path / "folder.failed" / "immich-check.md").is_file()
