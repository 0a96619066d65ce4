"""What `serve` checks of every request before it reaches a page: who it is addressed to, how large its
body is, where a state-changing request comes from; and the headers every answer carries.

    Host header    Starlette's TrustedHostMiddleware: loopback names and the address served on, so
                   that DNS rebinding (evil.example resolving to 127.0.0.1) finds nothing
    body size      refused by Content-Length before a byte is read, and while streaming, so a
                   400 MB upload never reaches the disk
    same origin    a POST whose Origin (or Referer) names another site is refused
    headers        nosniff, no framing, no referrer to other sites, the pages' content security policy
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from converters.console import say
from converters.errors import UserError
from converters.search.pages import content_security_policy

# Starlette keeps an IPv6 Host header's brackets ("[::1]:8000" → "[::1]").
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_loopback(host: str) -> bool:
    """The whole of 127.0.0.0/8 and ::1, and localhost: only this machine reaches them."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_every_interface(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def allowed_hosts(host: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The Host headers answered. Listening on every interface (0.0.0.0) the names people use for the box
    are not known: any is answered unless --allowed-host lists them, and the password guards it."""
    if is_every_interface(host) and not extra:
        return ["*"]
    bare = host.strip("[]")
    return list(dict.fromkeys([*LOOPBACK_NAMES, f"[{bare}]" if ":" in bare else bare, *extra]))


class BodyTooLarge(UserError):
    status_code = 413


class BodyLimit:
    """Refuses request bodies over a limit, per path (the upload route) or by default."""

    def __init__(self, app: ASGIApp, limits: dict[str, int], default: int):
        self.app, self.limits, self.default = app, limits, default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            # Answered before reading: the client learns at once, and nothing is written anywhere.
            await JSONResponse({"error": too_large(limit)}, status_code=413, headers={"Connection": "close"})(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body has no Content-Length: stop it as it grows
                    raise BodyTooLarge(too_large(limit))
            return message

        await self.app(scope, counted, send)


def too_large(limit: int) -> str:
    return f"The request is over {limit / 2**20:.0f} MB; send a smaller photo (at most {limit // 2**20} MB)."


class SameOrigin:
    """A state-changing request must come from the page itself: another site's form or script carries its own
    Origin. Requests without Origin or Referer (curl, apps) pass; the sign-in still guards them."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = Headers(scope=scope)
            source = headers.get("origin") or headers.get("referer")
            if source is not None and urlsplit(source).netloc.lower() != headers.get("host", "").lower():
                refused = JSONResponse({"error": "Refused: this request came from another site than this server's page."},
                                       status_code=403)
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Headers on every answer: the pages' content security policy, nosniff, no framing, no cross-site use."""

    HEADERS = {
        "Content-Security-Policy": content_security_policy(),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in self.HEADERS.items():
                    headers.setdefault(key, value)
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def check_port(host: str, port: int) -> None:
    """Fail as a user error before announcing anything: uvicorn would log the error and exit 3, parity's status."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        raise UserError(f"Cannot listen on {host}:{port}: {error.strerror or error}. Choose another --port or --host.") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a server started next (the load test's, the tests')."""
    with socket.create_server((host, 0)) as probe:
        return probe.getsockname()[1]


# A connection idle this long is closed; a client that keeps connections must let go of them sooner.
KEEP_ALIVE_SECONDS = 5


def run_server(app: ASGIApp, host: str, port: int, ready: str, **options) -> None:
    """Serve `app` with uvicorn until stopped, saying `ready` once the socket listens: a click on the printed
    address, or a script waiting for the line, then never meets a refused connection."""
    import uvicorn  # the server alone: the checks above are imported by tests and pages without it

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                say(ready)

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_keep_alive=KEEP_ALIVE_SECONDS,
                            **options)
    AnnouncingServer(config).run()
