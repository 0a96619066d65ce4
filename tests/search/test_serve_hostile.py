"""The `serve` defects a hostile-user pass found (issue 26), each reproduced as found, through the test client."""

from __future__ import annotations

import json
import shutil

import pytest
from starlette.testclient import TestClient

from converters.search.loadtest import serving
from converters.search.serve import Library, create_app
from tests.search.conftest import PHOTOS, index

ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)


def names(client: TestClient, text: str = "猫") -> list[str]:
    response = client.get("/api/search", params={"q": text, "top": 200})
    assert response.status_code == 200, response.text
    return [hit["name"] for hit in response.json()["hits"]]


@ON_TINY_VIT
def test_a_reindex_is_searched_without_a_restart(served, library):
    client, photos = served
    assert "coffee_cup.jpg" in names(client)
    (photos / "coffee_cup.jpg").unlink()
    shutil.copy(PHOTOS / "grass.jpg", photos / "new_grass.jpg")
    index(photos, library[1])
    found = names(client)
    assert "coffee_cup.jpg" not in found and "new_grass.jpg" in found and len(found) == 15
    status = client.get("/api/status").json()
    assert status["photos"] == status["loaded_photos"] == 15


@ON_TINY_VIT
def test_a_rebuilt_index_file_is_noticed(served, library):
    client, photos = served
    _, index_dir, bundle = library
    shutil.rmtree(index_dir)
    (photos / "rocket_launch.jpg").unlink()
    index(photos, index_dir, bundle)
    assert "rocket_launch.jpg" not in names(client) and len(names(client)) == 14


@ON_TINY_VIT
def test_a_bundle_replaced_by_another_artifact_is_refused_until_restored(served, library):
    client, _ = served
    manifest = library[2] / "manifest.json"
    original = manifest.read_text()
    data = json.loads(original)
    for tower in ("visual", "text"):  # a re-conversion: other files under the same stage name
        data["artifacts"][f"{tower}.onnx-sim"]["files"] = data["artifacts"][f"{tower}.onnx-fp32"]["files"]
    manifest.write_text(json.dumps(data))
    refused = client.get("/api/search", params={"q": "猫"})
    assert refused.status_code == 409 and "changed while serving" in refused.json()["error"]
    assert "changed while serving" in client.get("/api/status").json()["problem"]
    manifest.write_text(original)
    assert len(names(client)) == 15 and client.get("/api/status").json()["problem"] is None


@ON_TINY_VIT
@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:8000", "192.168.1.20"])
def test_a_foreign_host_header_is_refused(served, host):
    client, _ = served
    for url in ("/", "/api/status", "/api/search?q=猫", "/thumb/0"):
        assert client.get(url, headers={"Host": host}).status_code == 400


@ON_TINY_VIT
@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000"])
def test_loopback_host_headers_are_answered(served, host):
    client, _ = served
    assert client.get("/api/status", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("127.255.0.9", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("192.168.1.2", False), ("nas.local", False)])
def test_the_whole_of_127_0_0_0_8_is_loopback(host, loopback):
    from converters.search.network import is_loopback

    assert is_loopback(host) is loopback


@ON_TINY_VIT
def test_serving_on_127_0_0_2_gives_no_lan_warning(library, tmp_path):
    log = tmp_path / "serve.log"
    with serving(library[1], log, host="127.0.0.2"):
        said = log.read_text()
    assert "photos on http://127.0.0.2" in said and "warning: listening" not in said, said


@ON_TINY_VIT
def test_a_query_of_only_unknown_characters_is_a_400_naming_it(served):
    client, _ = served
    response = client.get("/api/search", params={"q": "😀"})
    assert response.status_code == 400 and "😀" in response.json()["error"]


@ON_TINY_VIT
def test_random_weights_are_said_in_the_status(served):
    client, _ = served
    assert "random weights" in client.get("/api/status").json()["weights_warning"]


@ON_TINY_VIT
def test_api_errors_name_the_parameters_not_cli_options(served):
    client, _ = served
    for params in ({"q": "猫", "since": "yesterday"}, {"q": "猫", "since": "2022-01-01", "until": "2021-01-01"}):
        error = client.get("/api/search", params=params).json()["error"]
        assert "--" not in error and "since" in error


@ON_TINY_VIT
@pytest.mark.parametrize("body, content_type", [
    (b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n", "multipart/form-data; boundary=x"),
    (b"garbage", "multipart/form-data"),
    (b"garbage", "multipart/form-data; boundary=" + "b" * 5000),
])
def test_malformed_multipart_is_a_json_4xx(served, body, content_type):
    client, _ = served
    response = client.post("/api/search/image", content=body, headers={"Content-Type": content_type})
    assert 400 <= response.status_code < 500 and response.json()["error"]
    assert client.get("/api/status").status_code == 200


@ON_TINY_VIT
def test_an_empty_index_is_served_with_what_to_do(tiny_bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    index(tmp_path / "empty", tmp_path / "index", tiny_bundle)
    client = TestClient(create_app(Library.open(tmp_path / "index", None, 1)), base_url="http://localhost")
    assert client.get("/api/status").json()["photos"] == 0
    error = client.get("/api/search", params={"q": "猫"}).json()["error"]
    assert "holds no photos" in error and "index PHOTOS --index" in error
    assert "The index holds no photos yet" in client.get("/").text
