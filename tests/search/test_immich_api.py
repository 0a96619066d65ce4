"""The Immich-compatible endpoint answers requests shaped exactly as Immich's server sends them
(server/src/repositories/machine-learning.repository.ts: a FormData of `entries` and `text`, or of `entries` and
an `image` Blob, which Node's fetch sends as below) with embeddings within tolerance of PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from starlette.testclient import TestClient

from converters.app.bundle import Bundle
from converters.app.layout import BundleLayout
from converters.data import PARITY_SET_DIR
from converters.search.immich_api import create_immich_app
from converters.validate.fidelity import DEFAULT_TARGETS, measure, normalized

NAME = "ViT-B-16__openai"
STAGE = "onnx-int8"
BOUNDARY = "----formdata-undici-031415926535"  # the boundary form of Node's fetch (undici)


def immich_body(entries: dict, field: str, value: bytes) -> tuple[bytes, dict]:
    """A /predict request byte for byte as Immich's server sends it: JSON.stringify'd entries, then the input."""
    disposition = 'name="text"' if field == "text" else 'name="image"; filename="blob"\r\nContent-Type: application/octet-stream'
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="entries"\r\n\r\n'
        f"{json.dumps(entries, separators=(',', ':'), ensure_ascii=False)}\r\n"
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n"
    ).encode() + value + f"\r\n--{BOUNDARY}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


TEXT_ENTRIES = {"clip": {"textual": {"modelName": NAME, "options": {"language": "zh-CN"}}}}
IMAGE_ENTRIES = {"clip": {"visual": {"modelName": NAME}}}


@pytest.fixture(scope="module")
def served(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    with TestClient(create_immich_app(bundle, bundle.embedder(STAGE, 1), NAME)) as client:
        with np.load(BundleLayout(tiny_bundle).reference) as reference:  # PyTorch on the parity set
            yield client, reference["images"], reference["texts"]


def test_ping_answers_pong(served):
    client, _, _ = served
    response = client.get("/ping")
    assert response.status_code == 200 and response.text == "pong"


def test_text_requests_get_normalized_embeddings_within_tolerance_of_pytorch(served):
    client, _, texts = served
    captions = [entry["text"] for entry in json.loads((PARITY_SET_DIR / "captions.json").read_text("utf-8"))]
    vectors = []
    for caption in captions:
        body, headers = immich_body(TEXT_ENTRIES, "text", caption.encode())
        response = client.post("/predict", content=body, headers=headers)
        assert response.status_code == 200 and set(response.json()) == {"clip"}
        assert isinstance(response.json()["clip"], str)  # a string holding the list, as Immich's service answers
        vectors.append(json.loads(response.json()["clip"]))
    vectors = np.array(vectors, dtype=np.float32)
    measured = measure(normalized(texts), vectors, DEFAULT_TARGETS["int8"])
    assert measured.passed, measured.failures  # the norm check holds them to unit length
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_image_requests_get_embeddings_and_the_photos_size(served):
    client, images, _ = served
    files = sorted(p for p in (PARITY_SET_DIR / "images").iterdir() if p.suffix == ".jpg")
    vectors = []
    for path in files:
        body, headers = immich_body(IMAGE_ENTRIES, "image", path.read_bytes())
        answer = client.post("/predict", content=body, headers=headers).json()
        assert set(answer) == {"clip", "imageHeight", "imageWidth"}
        vectors.append(json.loads(answer["clip"]))
    assert (answer["imageHeight"], answer["imageWidth"]) == _size(files[-1])
    measured = measure(normalized(images), np.array(vectors, dtype=np.float32), DEFAULT_TARGETS["int8"])
    assert len(vectors) == len(images) and measured.passed, measured.failures


def _size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.height, image.width


def test_a_face_request_is_refused_with_a_clear_error(served):
    client, _, _ = served
    entries = {"facial-recognition": {"detection": {"modelName": "buffalo_l", "options": {"minScore": 0.7}},
                                      "recognition": {"modelName": "buffalo_l"}}}
    body, headers = immich_body(entries, "image", (PARITY_SET_DIR / "images" / "astronaut.jpg").read_bytes())
    response = client.post("/predict", content=body, headers=headers)
    assert response.status_code == 400
    assert "CLIP (smart search) requests only, not facial-recognition" in response.json()["detail"]


def test_another_model_name_and_malformed_entries_are_refused(served):
    client, _, _ = served
    entries = {"clip": {"textual": {"modelName": "ViT-L-14__openai"}}}
    body, headers = immich_body(entries, "text", b"cat")
    response = client.post("/predict", content=body, headers=headers)
    assert response.status_code == 400 and f"This server serves {NAME}" in response.json()["detail"]
    response = client.post("/predict", data={"entries": "{not json", "text": "cat"})
    assert response.status_code == 422
    response = client.post("/predict", data={"entries": json.dumps(TEXT_ENTRIES)})
    assert response.status_code == 400 and "needs a 'text' field" in response.json()["detail"]


def test_listening_beyond_loopback_needs_no_auth_said_on_purpose(tiny_bundle):
    """Immich's server sends no password, so an address other devices reach is refused unless --no-auth says so."""
    from click.testing import CliRunner

    from converters.cli import cli

    result = CliRunner().invoke(cli, ["immich-serve", "--bundle", str(tiny_bundle), "--host", "0.0.0.0"])
    assert result.exit_code != 0 and "--no-auth" in str(result.exception)
