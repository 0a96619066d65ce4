import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from converters.bundle import Bundle
from converters.errors import ArtifactError
from converters.layout import PARITY_SET_DIR, BundleLayout


def test_bundle_api_does_not_import_torch(tiny_bundle):
    code = (
        "import sys; from converters.bundle import Bundle; from PIL import Image; "
        f"b = Bundle.open({str(tiny_bundle)!r}); m = b.embedder('onnx-int8'); "
        "m.embed_texts(b.token_ids(['海边的日落'])); "
        f"m.embed_images(b.pixels([Image.open({str(next((PARITY_SET_DIR / 'images').iterdir()))!r})])); "
        "assert 'torch' not in sys.modules and 'cn_clip' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_embeddings_match_the_golden_vectors(tiny_bundle, runtime):
    bundle = Bundle.open(tiny_bundle)
    golden = json.loads(BundleLayout(tiny_bundle).golden.read_text())
    stage = {"onnx": "simplify", "onnx-int8": "int8"}[runtime]
    model = bundle.embedder(runtime)
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


def test_runtimes_and_identity(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    assert {"onnx", "onnx-int8"} <= set(bundle.runtimes())
    assert bundle.artifact_id("onnx") != bundle.artifact_id("onnx-int8")
    with pytest.raises(ArtifactError, match="no 'tflite' artifacts"):
        bundle.embedder("tflite")


@pytest.mark.parametrize("text", ["", "   ", "\x00\u200b"])
def test_query_that_tokenizes_to_nothing_is_refused(tiny_bundle, text):
    from converters.bundle import QueryError

    with pytest.raises(QueryError, match="no words once tokenized"):
        Bundle.open(tiny_bundle).token_ids([text])


def test_over_long_text_is_cut_with_a_warning(tiny_bundle):
    from converters.bundle import TruncationWarning

    bundle = Bundle.open(tiny_bundle)
    with pytest.warns(TruncationWarning, match="only the first 50"):
        ids = bundle.token_ids(["海" * 80])
    assert ids.shape == (1, 52) and ids[0, -1] == 102
