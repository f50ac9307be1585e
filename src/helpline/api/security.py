"""The hardened public surface: security headers, a strict CORS allow-list, CSRF on cookie requests, secrets.

* Security headers on every response: a CSP without inline script for our pages (the API docs get a looser one,
  they are FastAPI's page, not ours), nosniff, frame-ancestors limited to us and the allowed store origins, a
  same-origin referrer policy, and ``Cache-Control: no-store`` on the API (answers and conversations are private).
* CORS: only ``HELPLINE_CORS_ORIGINS`` (exact origins, no wildcard); empty means no cross-origin access. Never with
  credentials: the widget authenticates with a bearer key or nothing, so a cross-site page cannot ride a cookie.
* CSRF: a state-changing request that carries a cookie must come from our own origin or an allowed one (Origin,
  else Referer). Browsers send Origin on every cross-site POST, and no page can forge it. There are no cookies yet;
  this is armed for the admin dashboard, which will use one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from helpline.api.middleware import current_request_id

if TYPE_CHECKING:
    from helpline.config import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
DEFAULT_PORTS = {"http": 80, "https": 443}
EXPOSED_HEADERS = [
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "Retry-After",
    "X-Request-ID",
    "X-Cache",
]


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison; both sides are hashed first so not even the length leaks through timing."""
    return hmac.compare_digest(
        hashlib.sha256(given.encode("utf-8")).digest(), hashlib.sha256(expected.encode("utf-8")).digest()
    )


def normalise_origin(value: str) -> str | None:
    """``scheme://host[:port]`` in lower case without a default port; None when ``value`` is not an origin."""
    parts = urlsplit(value.strip())
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    suffix = f":{port}" if port is not None and port != DEFAULT_PORTS[parts.scheme] else ""
    return f"{parts.scheme}://{host}{suffix}"


def parse_origins(text: str) -> tuple[str, ...]:
    """``HELPLINE_CORS_ORIGINS``: comma-separated exact origins. A wildcard or a URL with a path is refused."""
    origins: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        origin = normalise_origin(item)
        if origin is None:
            raise ValueError(f"CORS_ORIGINS: {item!r} is not an origin like https://shop.example (no '*', no path)")
        origins.append(origin)
    return tuple(dict.fromkeys(origins))


def content_security_policy(frame_ancestors: Sequence[str]) -> str:
    ancestors = " ".join(["'self'", *frame_ancestors])
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        f"font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors {ancestors}"
    )


# FastAPI's Swagger UI and ReDoc pages load from jsDelivr and bootstrap with an inline script.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src 'self' https://fonts.gstatic.com; "
    "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class SecurityHeadersMiddleware:
    """Adds the headers to every response; a header the route already set (a page's own CSP) is kept."""

    def __init__(self, app: ASGIApp, *, frame_ancestors: Sequence[str] = (), hsts: bool = False) -> None:
        self.app = app
        common = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
        ]
        if hsts:
            common.append((b"strict-transport-security", b"max-age=31536000; includeSubDomains"))
        self._pages = [(b"content-security-policy", content_security_policy(frame_ancestors).encode()), *common]
        self._docs = [(b"content-security-policy", DOCS_CSP.encode()), *common]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        wanted = self._docs if path in DOCS_PATHS else self._pages
        if path.startswith("/v1/"):
            wanted = [*wanted, (b"cache-control", b"no-store")]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                message["headers"] = headers + [(name, value) for name, value in wanted if name not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _header(headers: Iterable[tuple[bytes, bytes]], wanted: bytes) -> str | None:
    for name, value in headers:
        if name.lower() == wanted:
            return value.decode("latin-1")
    return None


def request_origin(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The origin a browser says the request comes from: Origin, else the origin of Referer."""
    headers = list(headers)
    origin = _header(headers, b"origin")
    if origin is not None:
        return normalise_origin(origin)  # "null" (sandboxed frames, file://) is never an origin we accept
    referer = _header(headers, b"referer")
    if referer is None:
        return None
    parts = urlsplit(referer)
    return normalise_origin(f"{parts.scheme}://{parts.netloc}") if parts.netloc else None


def is_same_origin(origin: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether ``origin`` names this host as the browser reached it (the Host header, default port of its scheme).

    Behind a proxy, Host must be forwarded as the browser sent it (nginx ``proxy_set_header Host $http_host``).
    """
    host = _header(headers, b"host")
    if host is None:
        return False
    scheme = origin.split("://", 1)[0]
    return normalise_origin(f"{scheme}://{host}") == origin


class CsrfMiddleware:
    """Refuses a cookie-carrying, state-changing request from any origin but ours and the allowed ones (403)."""

    def __init__(self, app: ASGIApp, *, allowed_origins: Sequence[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS or not self._has_cookie(scope):
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        origin = request_origin(headers)
        if origin is not None and (origin in self.allowed or is_same_origin(origin, headers)):
            await self.app(scope, receive, send)
            return
        await _forbidden(send, "cross-site request refused: a request with cookies must come from this site")

    @staticmethod
    def _has_cookie(scope: Scope) -> bool:
        return any(name.lower() == b"cookie" and value.strip() for name, value in scope["headers"])


async def _forbidden(send: Send, message: str) -> None:
    body = orjson.dumps({"error": {"code": "csrf_failed", "message": message, "request_id": current_request_id()}})
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install_security(app: FastAPI, settings: Settings) -> None:
    """CSRF (innermost), CORS, then the headers (outermost of the three, so even a refused preflight has them)."""
    origins = parse_origins(settings.cors_origins)
    app.add_middleware(CsrfMiddleware, allowed_origins=origins)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=["GET", "POST"],  # what the widget uses; admin pages are same-origin and need no CORS
        allow_headers=["authorization", "content-type", "accept", "x-request-id"],
        expose_headers=EXPOSED_HEADERS,
        allow_credentials=False,
        max_age=600,
    )
    app.add_middleware(SecurityHeadersMiddleware, frame_ancestors=origins, hsts=settings.env == "production")
