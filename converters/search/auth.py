"""`serve`'s sign-in: one household password, for the browser (a session cookie) and for programs (HTTP Basic).

The password is read from a file or the environment, never the command line (`ps` shows that),
and only its salted scrypt hash is kept. Every path but /login needs a session or Basic
credentials: RequireSignIn sits in front of the whole app rather than on each route, so a route
added later cannot be left open (tests/search/test_auth.py walks the route table). Wrong
passwords are answered late, one check at a time, with a delay that doubles per failure of that
client up to MAX_DELAY; sessions live in this process's memory and end when it stops.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, SimpleUser
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from converters.errors import UserError

PASSWORD_ENV = "CNCLIP_PASSWORD"
MIN_PASSWORD = 8
SESSION_COOKIE = "cnclip_session"
SESSION_SECONDS = 30 * 24 * 3600
MAX_SESSIONS = 1000
FIRST_DELAY, MAX_DELAY = 0.5, 30.0
OPEN_PATHS = frozenset({"/login"})
# scrypt's interactive parameters (16 MB, about 50 ms here): slow to guess offline, quick enough per sign-in.
SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class PasswordError(UserError):
    """The password file or variable is missing, unreadable or too short."""


@dataclass(frozen=True, repr=False)
class Password:
    """A salted scrypt hash; the password itself is not kept."""

    salt: bytes
    digest: bytes

    @classmethod
    def of(cls, secret: str) -> "Password":
        salt = os.urandom(16)
        return cls(salt, hashlib.scrypt(secret.encode("utf-8"), salt=salt, **SCRYPT))

    def matches(self, attempt: str) -> bool:
        return hmac.compare_digest(hashlib.scrypt(attempt.encode("utf-8"), salt=self.salt, **SCRYPT), self.digest)

    def __repr__(self) -> str:
        return "Password(<salted scrypt hash>)"


def read_password(file: Path | None, environ: dict[str, str] = os.environ) -> Password | None:
    """The password from `file` (its first line), else from $CNCLIP_PASSWORD; None when neither is given."""
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise PasswordError(f"Cannot read the password file {file}: {getattr(error, 'strerror', None) or error}. "
                                "Give a readable text file whose first line is the password.") from None
        secret, where = (lines[0] if lines else ""), f"the first line of {file}"
    elif environ.get(PASSWORD_ENV) is not None:
        secret, where = environ[PASSWORD_ENV], f"${PASSWORD_ENV}"
    else:
        return None
    if len(secret) < MIN_PASSWORD:
        raise PasswordError(f"The password ({where}) has {len(secret)} characters; use at least {MIN_PASSWORD}.")
    return Password.of(secret)


class Sessions:
    """Random session ids in memory, each with its expiry."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock, self.expiry = clock, {}

    def start(self) -> str:
        now = self.clock()
        self.expiry = {token: end for token, end in self.expiry.items() if end > now}
        while len(self.expiry) >= MAX_SESSIONS:  # the oldest gives way
            self.expiry.pop(next(iter(self.expiry)))
        token = secrets.token_urlsafe(32)
        self.expiry[token] = now + SESSION_SECONDS
        return token

    def valid(self, token: str | None) -> bool:
        return token is not None and self.expiry.get(token, 0) > self.clock()

    def end(self, token: str | None) -> None:
        self.expiry.pop(token or "", None)


@dataclass
class Gate:
    """The password, the sessions, and the delay after failures, shared by the sign-in page and Basic."""

    password: Password
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    sessions: Sessions = field(default_factory=Sessions)
    failures: dict[str, int] = field(default_factory=dict)
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    async def check(self, attempt: str, client: str) -> bool:
        """Whether `attempt` is the password; a failure is answered after a delay, and checks take turns, so
        parallel guesses gain nothing."""
        async with self.lock:
            if await anyio.to_thread.run_sync(self.password.matches, attempt):
                self.failures.pop(client, None)
                return True
            count = self.failures[client] = self.failures.get(client, 0) + 1
            await self.sleep(min(FIRST_DELAY * 2 ** (count - 1), MAX_DELAY))
            return False


class PasswordBackend(AuthenticationBackend):
    """Starlette's authentication: a valid session cookie, or HTTP Basic with the password (any user name)."""

    def __init__(self, gate: Gate):
        self.gate = gate

    async def authenticate(self, conn: HTTPConnection):
        if self.gate.sessions.valid(conn.cookies.get(SESSION_COOKIE)):
            return AuthCredentials(["household"]), SimpleUser("household")
        scheme, _, encoded = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            _, _, attempt = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationError("Malformed Basic credentials.") from None
        if not await self.gate.check(attempt, client_of(conn)):
            raise AuthenticationError("Wrong password.")
        return AuthCredentials(["household"]), SimpleUser("household")


def client_of(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


def refused(conn: HTTPConnection, error: Exception | None = None) -> JSONResponse:
    """401 for programs; a Basic challenge only to a client without a session cookie, so that the page's
    own requests with an expired session go to the sign-in page instead of a browser dialog."""
    headers = {} if SESSION_COOKIE in conn.cookies else {"WWW-Authenticate": 'Basic realm="cnclip photos", charset="UTF-8"'}
    return JSONResponse({"error": f"{error or 'Sign in first'}: open /login, or send the password with HTTP Basic."},
                        status_code=401, headers=headers)


class RequireSignIn:
    """Everything but OPEN_PATHS needs a signed-in user; a browser asking for a page is sent to /login."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or (user is not None and user.is_authenticated):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        if scope["method"] == "GET" and "text/html" in conn.headers.get("accept", ""):
            response = RedirectResponse(f"/login?next={scope['path']}", status_code=303)
        else:
            response = refused(conn)
        await response(scope, receive, send)
