"""`serve` on a real loopback port under uploads, slow clients and faults: the others are still answered.

No test measures time: each shows order instead (a status answered while an upload is held inside
the model; a refusal sent while the client is still sending).
"""

from __future__ import annotations

import io
import select
import socket
import threading
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from converters.app.runtimes import TowerPair
from converters.search import serve
from converters.search.serve import Library, create_app
from tests.search.conftest import PHOTOS, live

ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
WAIT = 60  # seconds a test waits for something that must happen; a guard against hanging, not a measurement


@pytest.fixture
def base(library):
    with live(create_app(Library.open(library[1], None, 1))) as url:
        yield url


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    connection = socket.create_connection((parts.hostname, parts.port), timeout=WAIT)
    return connection


def status_line(connection: socket.socket) -> str:
    return connection.recv(65536).decode("latin-1").split("\r\n")[0]


def upload(path=PHOTOS / "cat_chelsea.jpg") -> dict:
    return {"image": ("photo.jpg", path.read_bytes(), "image/jpeg")}


@ON_TINY_VIT
def test_an_upload_announced_too_large_is_refused_before_its_body(base):
    connection = connect(base)
    connection.sendall(b"POST /api/search/image HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; "
                       b"boundary=x\r\nContent-Length: 419430400\r\n\r\n")  # 400 MB announced, not a byte sent
    assert status_line(connection) == "HTTP/1.1 413 Request Entity Too Large"
    connection.close()


@ON_TINY_VIT
def test_a_streamed_upload_is_refused_while_it_grows(library, monkeypatch):
    monkeypatch.setattr(serve, "MAX_UPLOAD_BYTES", 2**20)
    with live(create_app(Library.open(library[1], None, 1))) as url:
        connection = connect(url)
        connection.sendall(b"POST /api/search/image HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                           b"Content-Type: multipart/form-data; boundary=x\r\n\r\n")
        head = b'--x\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'
        connection.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        chunk, sent, total = b"\0" * 65536, 0, 64 * 2**20
        while sent < total and not select.select([connection], [], [], 0)[0]:  # until the server answers
            try:
                connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        select.select([connection], [], [], WAIT)
        assert status_line(connection).startswith("HTTP/1.1 413")
        assert sent < total / 2, f"the server read {sent} bytes of a chunked upload over its limit of 1 MB"
        connection.close()


@ON_TINY_VIT
def test_the_status_is_answered_while_an_upload_is_inside_the_model(base, monkeypatch):
    inside, release = threading.Event(), threading.Event()
    embed = TowerPair.embed_images

    def held(self, pixels):
        inside.set()
        release.wait(WAIT)
        return embed(self, pixels)

    monkeypatch.setattr(TowerPair, "embed_images", held)
    answers = {}
    uploader = threading.Thread(target=lambda: answers.update(
        upload=httpx.post(base + "/api/search/image", files=upload(), timeout=WAIT)))
    uploader.start()
    try:
        assert inside.wait(WAIT), "the upload never reached the model"
        status = httpx.get(base + "/api/status", timeout=WAIT)
        assert status.status_code == 200 and not release.is_set() and uploader.is_alive()
        text = httpx.get(base + "/api/search", params={"q": "草地"}, timeout=WAIT)
        assert text.status_code == 200 and uploader.is_alive()
    finally:
        release.set()
        uploader.join(WAIT)
    assert answers["upload"].status_code == 200


@ON_TINY_VIT
def test_a_client_trickling_a_request_holds_no_one_up(base):
    slow = connect(base)
    slow.sendall(b"POST /api/search/image HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                 b"Content-Length: 100000\r\n\r\n--x\r\nContent-Disposition: form-")  # and then nothing more
    half_headers = connect(base)
    half_headers.sendall(b"GET /api/status HTTP/1.1\r\nHost: loc")
    assert httpx.get(base + "/api/search", params={"q": "猫"}, timeout=WAIT).status_code == 200
    assert httpx.post(base + "/api/search/image", files=upload(), timeout=WAIT).status_code == 200
    slow.close()
    half_headers.close()


@ON_TINY_VIT
def test_a_client_leaving_mid_response_harms_no_one(base):
    for url in ("/photo/1", "/api/search?q=%E7%8C%AB&top=200", "/thumb/2"):
        gone = connect(base)
        gone.sendall(f"GET {url} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        gone.recv(10)  # the answer has begun
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")  # close with a reset
        gone.close()
    assert httpx.get(base + "/api/search", params={"q": "猫", "top": 15}, timeout=WAIT).json()["indexed"] == 15


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


@ON_TINY_VIT
def test_a_decompression_bomb_is_a_400_and_a_50_megapixel_photo_is_searched(base):
    bomb = encoded(Image.new("1", (30_000, 30_000)), "PNG")  # 900 megapixels in about 100 KB
    refused = httpx.post(base + "/api/search/image", files={"image": ("bomb.png", bomb, "image/png")}, timeout=WAIT)
    assert refused.status_code == 400 and "above the limit" in refused.json()["error"]
    large = encoded(Image.new("RGB", (8_660, 5_774), (40, 120, 60)), "JPEG", quality=50)  # 50 megapixels
    found = httpx.post(base + "/api/search/image", files={"image": ("large.jpg", large, "image/jpeg")}, timeout=WAIT)
    assert found.status_code == 200 and len(found.json()["hits"]) == 15


@ON_TINY_VIT
@pytest.mark.parametrize("query", [
    "q=" + "猫" * 900, "q=%00%01%02", "q=cat&top=1e999", "q=cat&top=-1", "q=cat&since=" + "9" * 5000,
    "q=cat&until=0000-00-00", "q=cat&since=2020-13-45", "&".join(["q=cat"] * 2000), "q=%ZZ%", "q=cat&top=99999999999999999999",
])
def test_absurd_query_strings_are_answered_without_a_server_error(base, query):
    response = httpx.get(f"{base}/api/search?{query}", timeout=WAIT)
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert 400 <= response.status_code < 500
    assert httpx.get(base + "/api/status", timeout=WAIT).status_code == 200


@ON_TINY_VIT
def test_a_request_line_beyond_the_server_s_limit_harms_no_one(base):
    huge = connect(base)
    try:  # uvicorn drops a request line beyond h11's 16 KB before any route sees it, or answers 400
        huge.sendall(b"GET /api/search?q=" + b"%E7%8C%AB" * 20_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = status_line(huge)
        assert answer == "" or answer.split()[1].startswith("4"), answer
    except (BrokenPipeError, ConnectionResetError):
        pass
    huge.close()
    assert httpx.get(base + "/api/search", params={"q": "猫"}, timeout=WAIT).status_code == 200
