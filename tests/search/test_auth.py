"""`serve` behind a password: every route closed without it, the cookie and Basic ways in, the delay after
wrong guesses, same-origin POSTs, the headers, and no secret in any output."""

from __future__ import annotations

import base64
import hashlib
import os
import re

import httpx
import pytest
from click.testing import CliRunner
from starlette.routing import Route
from starlette.testclient import TestClient

from converters.cli import cli
from converters.search.auth import Gate, Password, PasswordError, read_password
from converters.search.loadtest import serving
from converters.search.serve import Library, Security, create_app

ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
SECRET = "correct horse battery"


class Delays:
    """Gate's sleep, recorded instead of slept: the test sees each delay without waiting for it."""

    def __init__(self):
        self.asked: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)


@pytest.fixture
def guarded(library):
    delays = Delays()
    gate = Gate(Password.of(SECRET), sleep=delays)
    app = create_app(Library.open(library[1], None, 1), Security(gate.password), gate)
    return TestClient(app, base_url="http://localhost"), delays


def concrete(route: Route) -> str:
    return re.sub(r"\{\w+(:\w+)?\}", "0", route.path)


@ON_TINY_VIT
def test_every_route_is_closed_without_the_password(guarded):
    client, _ = guarded
    checked = 0
    for route in client.app.routes:
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            if route.path == "/login":
                continue
            for accept in ("application/json", "text/html"):
                response = client.request(method, concrete(route), headers={"Accept": accept}, follow_redirects=False)
                closed = response.status_code == 401 or (
                    response.status_code == 303 and response.headers["location"].startswith("/login"))
                assert closed, f"{method} {route.path} answered {response.status_code} without a password"
                assert b"cat_chelsea" not in response.content
                checked += 1
    assert checked >= 2 * 9  # every route of serve.py's table but /login


@ON_TINY_VIT
def test_basic_credentials_open_every_route_and_wrong_ones_do_not(guarded):
    client, _ = guarded
    right = {"Authorization": "Basic " + base64.b64encode(f"me:{SECRET}".encode()).decode()}
    wrong = {"Authorization": "Basic " + base64.b64encode(b"me:guess").decode()}
    assert client.get("/api/search", params={"q": "猫"}, headers=right).status_code == 200
    assert client.get("/thumb/1", headers=right).status_code == 200
    assert client.get("/api/search", params={"q": "猫"}, headers=wrong).status_code == 401
    assert client.get("/api/status", headers={"Authorization": "Basic !!!"}).status_code == 401


@ON_TINY_VIT
def test_signing_in_gives_a_strict_http_only_session_and_signing_out_ends_it(guarded):
    client, _ = guarded
    page = client.get("/", headers={"Accept": "text/html"}, follow_redirects=True)
    assert 'type="password"' in page.text
    signed = client.post("/login", data={"password": SECRET, "next": "/status"}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/status"
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/api/status").status_code == 200 and client.get("/thumb/1").status_code == 200
    client.post("/logout", follow_redirects=False)
    assert client.get("/api/status").status_code == 401


@ON_TINY_VIT
@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example"])
def test_signing_in_never_leads_to_another_site(guarded, target):
    client, _ = guarded
    signed = client.post("/login", data={"password": SECRET, "next": target}, follow_redirects=False)
    assert signed.headers["location"] == "/"


@ON_TINY_VIT
def test_wrong_passwords_are_answered_later_and_later(guarded):
    client, delays = guarded
    for _ in range(3):
        assert client.post("/login", data={"password": "guess"}).status_code == 401
    assert delays.asked == [0.5, 1.0, 2.0]
    assert client.post("/login", data={"password": SECRET}, follow_redirects=False).status_code == 303
    assert delays.asked == [0.5, 1.0, 2.0]  # the right password waits for nothing, and the count starts over
    client.post("/login", data={"password": "guess"})
    assert delays.asked[-1] == 0.5


@ON_TINY_VIT
def test_posts_from_another_site_are_refused(guarded):
    client, _ = guarded
    client.post("/login", data={"password": SECRET})
    evil = {"Origin": "http://evil.example"}
    assert client.post("/login", data={"password": SECRET}, headers=evil).status_code == 403
    with open(__file__, "rb") as handle:
        refused = client.post("/api/search/image", files={"image": ("a.jpg", handle)}, headers=evil)
    assert refused.status_code == 403
    assert client.post("/logout", headers={"Referer": "http://evil.example/page"}).status_code == 403
    assert client.get("/api/status").status_code == 200  # still signed in


@ON_TINY_VIT
def test_pages_carry_a_policy_that_allows_exactly_their_own_scripts(guarded):
    client, _ = guarded
    client.post("/login", data={"password": SECRET})
    for url in ("/", "/status", "/login", "/api/status", "/thumb/1"):
        response = client.get(url)
        assert response.headers["x-content-type-options"] == "nosniff" and response.headers["x-frame-options"] == "DENY"
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
        for script in re.findall(r"<script>(.*?)</script>", response.text, re.S):
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in policy


def test_only_a_salted_hash_is_kept(tmp_path):
    (tmp_path / "password").write_text(SECRET + "\n")
    one, two = read_password(tmp_path / "password", {}), read_password(None, {"CNCLIP_PASSWORD": SECRET})
    assert one.matches(SECRET) and two.matches(SECRET) and not one.matches(SECRET + " ")
    assert one.salt != two.salt and one.digest != two.digest and SECRET not in repr(one)
    assert SECRET.encode() not in one.salt + one.digest
    for bad in ("", "short"):
        (tmp_path / "password").write_text(bad)
        with pytest.raises(PasswordError, match="at least 8"):
            read_password(tmp_path / "password", {})
    with pytest.raises(PasswordError, match="Cannot read the password file"):
        read_password(tmp_path / "missing", {})
    assert read_password(None, {}) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_a_lan_address_without_a_password_refuses_to_start(tmp_path, host):
    result = CliRunner().invoke(cli, ["serve", "--index", str(tmp_path), "--host", host], env={"CNCLIP_PASSWORD": None})
    assert result.exit_code != 0 and "--no-auth" in str(result.exception) and "password" in str(result.exception)


@ON_TINY_VIT
def test_the_password_appears_in_no_output(library, tmp_path):
    log = tmp_path / "serve.log"
    with serving(library[1], log, env={**os.environ, "CNCLIP_PASSWORD": SECRET}) as (base, _):
        assert "password required" in log.read_text()
        assert httpx.post(base + "/login", data={"password": "wrong guess"}, timeout=60).status_code == 401
        assert httpx.get(base + "/api/status", auth=("me", SECRET), timeout=60).status_code == 200
        assert httpx.get(base + "/api/search?q=" + SECRET, auth=("me", SECRET), timeout=60).status_code == 200
    assert SECRET not in log.read_text()
