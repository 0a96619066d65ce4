import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from converters.app.bundle import Bundle
from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.data import PARITY_SET_DIR
from converters.errors import ArtifactError

FORBIDDEN_ON_THE_APP_SIDE = ("torch", "torchvision", "cn_clip", "pydantic", "yaml", "onnx", "pnnx")


def test_the_app_side_imports_no_converter_library(tiny_bundle):
    """Every module of converters.app, and running both towers in both runtimes, in a fresh interpreter."""
    code = (
        "import pkgutil, importlib, sys, converters.app; from converters.app.bundle import Bundle; from PIL import Image\n"
        "for m in pkgutil.walk_packages(converters.app.__path__, 'converters.app.'): importlib.import_module(m.name)\n"
        f"b = Bundle.open({str(tiny_bundle)!r})\n"
        "for stage in ('onnx-int8', 'ncnn-fp16'):\n"
        "    m = b.embedder(stage); m.embed_texts(b.token_ids(['海边的日落']))\n"
        f"    m.embed_images(b.pixels([Image.open({str(next((PARITY_SET_DIR / 'images').iterdir()))!r})]))\n"
        f"loaded = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN_ON_THE_APP_SIDE!r})\n"
        "assert not loaded, loaded"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr


@pytest.mark.parametrize("stage", ["onnx-sim", "onnx-int8"])
def test_embeddings_match_the_golden_vectors(tiny_bundle, stage):
    bundle = Bundle.open(tiny_bundle)
    golden = json.loads(BundleLayout(tiny_bundle).golden.read_text())
    model = bundle.embedder(stage)
    images = [Image.open(tiny_bundle / image["file"]) for image in golden["images"]]
    texts = bundle.token_ids([caption["text"] for caption in golden["captions"]])
    assert texts.tolist() == [caption["token_ids"] for caption in golden["captions"]]
    # One sample per call, as golden.json was made (see parity.BATCH).
    got_images = np.concatenate([model.embed_images(bundle.pixels([image])) for image in images])
    got_texts = np.concatenate([model.embed_texts(ids[None]) for ids in texts])
    np.testing.assert_allclose(got_images, golden["embeddings"][stage]["images"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got_texts, golden["embeddings"][stage]["texts"], atol=1e-5, rtol=1e-5)


def test_golden_pixel_checksums_are_reproducible(tiny_bundle):
    import hashlib

    bundle = Bundle.open(tiny_bundle)
    for image in json.loads(BundleLayout(tiny_bundle).golden.read_text())["images"]:
        pixels = bundle.pixels([Image.open(tiny_bundle / image["file"])])[0]
        assert hashlib.sha256(pixels.astype("<f4").tobytes()).hexdigest() == image["pixels_sha256"]


def test_stages_and_identity(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    assert {"onnx-sim", "onnx-int8"} <= set(bundle.stages())
    assert bundle.artifact_id("onnx-sim") != bundle.artifact_id("onnx-int8")
    with pytest.raises(ArtifactError, match="no complete 'tflite' artifacts"):
        bundle.embedder("tflite")


@pytest.mark.parametrize("text", ["", "   ", "\x00\u200b"])
def test_query_that_tokenizes_to_nothing_is_refused(tiny_bundle, text):
    from converters.app.bundle import QueryError

    with pytest.raises(QueryError, match="no words once tokenized"):
        Bundle.open(tiny_bundle).token_ids([text])


def test_over_long_text_is_cut_with_a_warning(tiny_bundle):
    from converters.app.bundle import TruncationWarning

    bundle = Bundle.open(tiny_bundle)
    with pytest.warns(TruncationWarning, match="only the first 50"):
        ids = bundle.token_ids(["海" * 80])
    assert ids.shape == (1, 52) and ids[0, -1] == 102


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


@pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
def test_a_stage_with_one_tower_is_not_offered(tiny_bundle, tmp_path):
    """A conversion killed between visual.X and text.X leaves X half-built: no app may pick it."""
    bundle = copy_of(tiny_bundle, tmp_path)
    manifest = Manifest.load(BundleLayout(bundle).manifest)
    manifest.forget("text.onnx-int8")
    manifest.save()
    opened = Bundle.open(bundle)
    assert "onnx-int8" not in opened.stages() and "onnx-sim" in opened.stages()
    with pytest.raises(ArtifactError, match="no complete 'onnx-int8' artifacts"):
        opened.embedder("onnx-int8")


@pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
def test_a_swapped_vocabulary_line_is_refused(tiny_bundle, tmp_path):
    """Two swapped lines (猫 and 狗) would encode every query wrong without a word: the sha256 catches it."""
    bundle = copy_of(tiny_bundle, tmp_path)
    vocab = BundleLayout(bundle).vocab
    lines = vocab.read_text(encoding="utf-8").split("\n")
    cat, dog = lines.index("猫"), lines.index("狗")
    lines[cat], lines[dog] = lines[dog], lines[cat]
    vocab.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ArtifactError, match="vocab.txt changed after conversion"):
        Bundle.open(bundle)


@pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
def test_a_listed_file_that_is_no_model_is_one_error(tiny_bundle, tmp_path):
    """Even with a matching sha256 (a hostile manifest can state any), a text file is not run as a model."""
    bundle = copy_of(tiny_bundle, tmp_path)
    manifest = Manifest.load(BundleLayout(bundle).manifest)
    artifact = manifest.artifact("visual", "onnx-sim")
    artifact.model_file.write_text("not a model")
    manifest.record(artifact, manifest.entry("visual", "onnx-sim").inputs_digest)
    manifest.save()
    with pytest.raises(ArtifactError, match="onnxruntime cannot load .*visual.sim.onnx"):
        Bundle.open(bundle).embedder("onnx-sim")
