"""`serve`'s JSON API and files, through Starlette's test client on the tiny model's index of the shipped photos
(the `served` fixture: tests/search/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)


@ON_TINY_VIT
def test_the_page_and_the_status(served):
    client, photos = served
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text and "more like this" in page.text
    status = client.get("/api/status").json()
    assert status["photos"] == status["loaded_photos"] == 15 and status["roots"] == [str(photos.resolve())]
    assert status["last_run"]["added"] == 15 and status["last_run"]["finished"]


@ON_TINY_VIT
def test_text_search_gives_hits_with_thumbnails_and_photos(served):
    client, photos = served
    data = client.get("/api/search", params={"q": "草地", "top": 5}).json()
    assert [hit["rank"] for hit in data["hits"]] == [1, 2, 3, 4, 5] and data["stage"] == "onnx-sim"
    first = data["hits"][0]
    thumb = client.get(first["thumb"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"
    assert client.get(first["photo"]).content == Path(first["path"]).read_bytes()
    assert client.get(first["thumb"]).content == thumb.content  # from the cache the second time


@ON_TINY_VIT
def test_an_uploaded_photo_and_more_like_this_find_the_photo_itself_first(served):
    client, photos = served
    with open(photos / "cat_chelsea.jpg", "rb") as handle:
        data = client.post("/api/search/image", files={"image": ("cat.jpg", handle, "image/jpeg")}).json()
    first = data["hits"][0]
    assert first["name"] == "cat_chelsea.jpg" and first["score"] == pytest.approx(1, abs=1e-3)
    like = client.get(first["similar"], params={"top": 3}).json()
    assert like["query"] == "like cat_chelsea.jpg" and len(like["hits"]) == 3
    assert first["id"] not in [hit["id"] for hit in like["hits"]] and like["considered"] == 14  # never itself


@ON_TINY_VIT
def test_the_date_range_filters(served):
    client, _ = served
    data = client.get("/api/search", params={"q": "照片", "until": "2020-12-31"}).json()
    assert data["considered"] == 1 and [hit["name"] for hit in data["hits"]] == ["grass.jpg"]


@ON_TINY_VIT
@pytest.mark.parametrize("request_, status", [
    (("get", "/api/search", {"q": ""}), 400), (("get", "/api/search", {"q": "猫", "since": "yesterday"}), 400),
    (("get", "/api/search", {"q": "猫", "top": "all"}), 400), (("get", "/api/similar/9999", {}), 404),
    (("post", "/api/search/image", {}), 400),
])
def test_bad_requests_get_an_error_not_a_traceback(served, request_, status):
    client, _ = served
    method, url, params = request_
    response = getattr(client, method)(url, params=params)
    assert response.status_code == status and "Traceback" not in response.text
    if status == 400:
        assert response.json()["error"]


@ON_TINY_VIT
def test_a_damaged_upload_is_an_error(served):
    client, _ = served
    response = client.post("/api/search/image", files={"image": ("x.jpg", b"\xff\xd8 not a jpeg", "image/jpeg")})
    assert response.status_code == 400 and "not an image" in response.json()["error"]


@ON_TINY_VIT
@pytest.mark.parametrize("url", [
    "/photo/-1", "/photo/0", "/photo/16", "/thumb/99", "/photo/../../secret.txt", "/photo/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/thumb/..%2F..%2Fsecret.txt", "/photo//etc/passwd", "/photo/1/../../../secret.txt", "/../secret.txt",
])
def test_no_url_reaches_a_file_outside_the_index(served, url):
    client, _ = served
    response = client.get(url)
    assert response.status_code == 404 and b"not for the web" not in response.content


@ON_TINY_VIT
def test_a_photo_replaced_by_a_link_out_of_its_folder_is_not_served(served, tmp_path):
    client, photos = served
    data = client.get("/api/search", params={"q": "猫", "top": 15}).json()
    victim = next(hit for hit in data["hits"] if hit["name"] == "coffee_cup.jpg")
    (photos / "coffee_cup.jpg").unlink()
    (photos / "coffee_cup.jpg").symlink_to(tmp_path / "secret.txt")
    for url in (victim["photo"], victim["thumb"]):
        response = client.get(url)
        assert response.status_code == 404 and b"not for the web" not in response.content


@ON_TINY_VIT
def test_far_dates_and_an_upload_error_are_said_plainly(served):
    client, _ = served
    assert client.get("/api/search", params={"q": "猫", "until": "9999-12-31"}).status_code == 200
    assert client.get("/api/search", params={"q": "猫", "since": "0001-01-01"}).status_code == 200
    error = client.post("/api/search/image", files={"image": ("x.jpg", b"nothing", "image/jpeg")}).json()["error"]
    assert error.startswith("The uploaded file") and "cnclip-upload" not in error


@ON_TINY_VIT
def test_serve_on_a_port_in_use_is_a_user_error(served, tmp_path):
    import socket
    import subprocess
    import sys

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        index = tmp_path / "index"
        result = subprocess.run([sys.executable, "-m", "converters", "serve", "--index", str(index), "--port", str(port)],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"Cannot listen on 127.0.0.1:{port}" in result.stderr and "http://" not in result.stderr
