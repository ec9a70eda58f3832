"""Access control for the operator page: optional token or basic auth, and CSRF tokens.

A token is accepted as ``Authorization: Bearer TOKEN`` (scripts, Prometheus) or as the
password of HTTP basic auth with any user name (browsers prompt for it natively).
``/healthz`` stays open so load balancers and supervisors can probe it; it reveals only
liveness. CSRF: each browser gets a random cookie, and forms carry an HMAC of it under
a per-process secret, so a page on another origin can neither read nor forge the field.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Final

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from osteoflag.config import WebSettings

OPEN_PATHS: Final = frozenset({"/healthz"})
CSRF_COOKIE: Final = "osteoflag_csrf"
CSRF_FIELD: Final = "csrf_token"
REALM: Final = 'Basic realm="osteoflag", charset="UTF-8"'


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _basic(credentials: str) -> tuple[str, str] | None:
    """(user, password) of HTTP basic credentials, or None when they are not base64 of UTF-8
    (``b64decode`` raises ValueError for text that is not ASCII, binascii.Error for the rest)."""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors too
        return None
    user, _, password = decoded.partition(":")
    return user, password


def _identity(settings: WebSettings, authorization: str | None) -> str | None:
    """Who the header's credentials are: ``token`` for the token (as a bearer token or as a
    basic-auth password, whatever user name came with it), the user name for the configured
    user and password, None for anything else."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer":
        token = settings.token is not None and _equal(credentials.strip(), settings.token)
        return "token" if token else None
    basic = _basic(credentials) if scheme.lower() == "basic" else None
    if basic is None:
        return None
    user, password = basic
    if settings.token is not None and _equal(password, settings.token):
        return "token"
    if (
        settings.username is not None
        and settings.password is not None
        and _equal(user, settings.username)
        and _equal(password, settings.password)
    ):
        return settings.username
    return None


def authorised(settings: WebSettings, authorization: str | None) -> bool:
    """True when no protection is configured or the header carries the right credentials."""
    return not settings.protected or _identity(settings, authorization) is not None


def user_name(settings: WebSettings, authorization: str | None) -> str | None:
    """Who an authorised request is: the configured user, or ``token`` for the token (the
    user name typed beside it is not checked, so it names nobody: a token holder cannot
    record a reading under a radiologist's name); None when the page is not protected."""
    if not settings.protected:
        return None
    return _identity(settings, authorization)


class AuthMiddleware:
    """Answer 401 (with a basic-auth challenge) to unauthenticated requests."""

    def __init__(self, app: ASGIApp, settings: WebSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            request = Request(scope)
            if not authorised(self.settings, request.headers.get("authorization")):
                response: Response = PlainTextResponse(
                    "authentication required", status_code=401, headers={"WWW-Authenticate": REALM}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Csrf:
    """Issue and check CSRF form tokens bound to a per-browser cookie."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def token_for(self, cookie: str) -> str:
        """The form token that goes with ``cookie``."""
        return hmac.new(self._secret, cookie.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def cookie(request: Request) -> str:
        """The browser's CSRF cookie, or a fresh value to set (see :meth:`remember`)."""
        return request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)

    @staticmethod
    def remember(response: Response, cookie: str) -> None:
        """Set the cookie on a page that carries a form."""
        response.set_cookie(CSRF_COOKIE, cookie, httponly=True, samesite="strict")

    def valid(self, request: Request, token: object) -> bool:
        """True when ``token`` (the form field) matches the request's cookie."""
        cookie = request.cookies.get(CSRF_COOKIE)
        if not cookie or not isinstance(token, str):
            return False
        return _equal(token, self.token_for(cookie))


SECURITY_HEADERS: Final = (
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)


class SecurityHeadersMiddleware:
    """No framing, no sniffing, no referrer, no caching of pages about patients' images."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)
