"""Access control for the operator page: optional token or basic auth, and CSRF tokens.

A token is accepted as ``Authorization: Bearer TOKEN`` (scripts, Prometheus) or as the
password of HTTP basic auth with any user name (browsers prompt for it natively).
``/healthz`` stays open so load balancers and supervisors can probe it; it reveals only
liveness. CSRF: each browser gets a random cookie, and forms carry an HMAC of it under
a per-process secret, so a page on another origin can neither read nor forge the field.
"""

from __future__ import annotations

import base64
import binascii
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


def authorised(settings: WebSettings, authorization: str | None) -> bool:
    """True when no protection is configured or the header carries the right credentials."""
    if not settings.protected:
        return True
    if not authorization:
        return False
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return settings.token is not None and _equal(credentials.strip(), settings.token)
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, _, password = decoded.partition(":")
    if settings.token is not None and _equal(password, settings.token):
        return True
    return (
        settings.username is not None
        and settings.password is not None
        and _equal(user, settings.username)
        and _equal(password, settings.password)
    )


def user_name(settings: WebSettings, authorization: str | None) -> str | None:
    """Who an authorised request is: the basic-auth user name (``token`` for a bearer token),
    or None when the page is not protected and nobody is authenticated."""
    if not settings.protected or not authorised(settings, authorization) or not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return "token"
    user = base64.b64decode(credentials.strip()).decode("utf-8").partition(":")[0].strip()
    return user or "token"


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
