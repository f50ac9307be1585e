"""The admin dashboard's session cookie and CSRF token, signed with HMAC (no dependency, no server-side store).

The cookie is ``v1.<expiry>.<nonce>.<mac>``; the MAC key is derived from the admin token, so rotating the token
signs every operator out. Without an admin token (embedded mode, where an admin API key was printed once), the key
is a random secret kept in the database, shared by every worker. The CSRF token is a double-submit value: a cookie
the login form echoes in a hidden field, and admin.js in the ``X-CSRF-Token`` header of its JSON writes (the CSRF
middleware also checks Origin once a cookie is present).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from fastapi import Request, Response

from helpline.api.deps import Services
from helpline.store.repositories import StateRepository

SESSION_COOKIE = "helpline_admin"
CSRF_COOKIE = "helpline_csrf"
CSRF_HEADER = "x-csrf-token"  # the dashboard's JSON writes echo the page's CSRF token here
SESSION_TTL_S = 8 * 3600
COOKIE_SECRET_STATE = "admin_cookie_secret"  # noqa: S105 - the name of a state row, not a secret


async def signing_key(request: Request, services: Services) -> bytes:
    """The MAC key for this installation, computed once per process."""
    cached: bytes | None = getattr(request.app.state, "admin_cookie_key", None)
    if cached is not None:
        return cached
    token = services.settings.admin_token
    if token is not None:
        material = token.get_secret_value()
    else:
        state = StateRepository(services.sessions)
        material = await state.get(COOKIE_SECRET_STATE) or ""
        if not material:
            material = secrets.token_urlsafe(32)
            await state.put(COOKIE_SECRET_STATE, material)
    key = hashlib.sha256(b"helpline-admin-cookie\0" + material.encode("utf-8")).digest()
    request.app.state.admin_cookie_key = key
    return key


def _mac(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode("ascii"), hashlib.sha256).hexdigest()


def make_session_value(key: bytes, now: float | None = None) -> str:
    expiry = int((now if now is not None else time.time()) + SESSION_TTL_S)
    payload = f"v1.{expiry}.{secrets.token_hex(8)}"
    return f"{payload}.{_mac(key, payload)}"


def session_is_valid(key: bytes, value: str | None, now: float | None = None) -> bool:
    if not value or value.count(".") != 3:
        return False
    payload, _, mac = value.rpartition(".")
    if not hmac.compare_digest(_mac(key, payload), mac):
        return False
    expiry = payload.split(".")[1]
    return expiry.isdigit() and int(expiry) > (now if now is not None else time.time())


async def has_admin_session(request: Request, services: Services) -> bool:
    value = request.cookies.get(SESSION_COOKIE)
    return value is not None and session_is_valid(await signing_key(request, services), value)


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, value: str) -> None:
    secure = is_https(request)
    response.set_cookie(
        SESSION_COOKIE, value, max_age=SESSION_TTL_S, path="/", httponly=True, samesite="strict", secure=secure
    )


def csrf_token(request: Request, response: Response) -> str:
    """The request's CSRF cookie, or a fresh one set on ``response``."""
    token = request.cookies.get(CSRF_COOKIE)
    if token is None or not 16 <= len(token) <= 64 or not token.replace("-", "").replace("_", "").isalnum():
        token = secrets.token_urlsafe(24)
        secure = is_https(request)
        response.set_cookie(CSRF_COOKIE, token, path="/admin", httponly=True, samesite="strict", secure=secure)
    return token


def csrf_matches(request: Request, submitted: str) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), submitted.encode())
