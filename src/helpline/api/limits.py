"""Rate limits on the chat endpoints: a dependency that admits or refuses, and a middleware that holds the lease.

When is a request charged? After it has passed input validation (JSON, schema, a non-empty message within the
length limit, a valid API key if one is sent) and before any expensive work (retrieval, providers). A malformed
request is answered 400/401/415/422 and costs the caller nothing, so a buggy widget or a neighbour behind the same
NAT sending junk cannot use up a shopper's 5 a minute. Junk is cheap to refuse (no provider is called); volumetric
floods of it are the edge proxy's job, as for any other endpoint.

Why a middleware as well: the concurrency lease must cover the whole response, including a streamed (SSE) body
that is still being written after the route function returned. The middleware lets the lease go when the last
body chunk has been sent (or the client went away), without waiting for Redis to confirm it (``Lease.let_go``:
nobody waits for that slot, and the wait cost every request one more trip through the event loop), and adds the
RateLimit headers to whatever response leaves, streamed or not.

A full global cap answers **503** with ``code: overloaded`` and ``Retry-After: 1``, at once, without queueing: the
shopper did nothing wrong (429 would tell the widget "you are sending too fast"), the condition is the service's
capacity, and monitoring should count it as such. POST is not retried by nginx on another upstream, so a 503 does
not multiply load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from helpline.api.clientip import client_key
from helpline.api.deps import Services
from helpline.errors import ServiceUnavailable, TooManyRequests
from helpline.observability.metrics import record_ratelimit_refusal
from helpline.ratelimit.base import CONCURRENCY, Decision
from helpline.ratelimit.service import RateLimiter
from helpline.store.repositories import Principal

log = structlog.get_logger(__name__)

CHAT_PATHS = frozenset({"/v1/chat", "/v1/chat/completions"})
STATE_KEY = "helpline_limits"
_LIMIT_HEADERS = frozenset(
    {b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset", b"ratelimit-policy", b"retry-after"}
)


class Overloaded(ServiceUnavailable):
    """The global concurrency cap is full: the service is busy, the caller did nothing wrong."""

    code = "overloaded"


@dataclass(slots=True)
class LimitSlot:
    """Where ``charge`` leaves its decision for the middleware (in ``scope["state"]``)."""

    decision: Decision | None = None


def limit_header_pairs(decision: Decision) -> list[tuple[bytes, bytes]]:
    """RateLimit-* (IETF draft) for the tier closest to running out; Retry-After on a refusal. As raw ASGI header
    pairs, built straight from the numbers: they go on every chat response."""
    pairs: list[tuple[bytes, bytes]] = []
    tier = decision.headline
    if tier is not None:
        pairs += [
            (b"ratelimit-limit", b"%d" % tier.limit),
            (b"ratelimit-remaining", b"%d" % tier.remaining),
            (b"ratelimit-reset", b"%d" % math.ceil(tier.reset_s)),
        ]
    if not decision.allowed:
        pairs.append((b"retry-after", b"%d" % decision.retry_after_header))
    return pairs


_HEADER_NAMES = {
    b"ratelimit-limit": "RateLimit-Limit", b"ratelimit-remaining": "RateLimit-Remaining",
    b"ratelimit-reset": "RateLimit-Reset", b"retry-after": "Retry-After",
}  # fmt: skip


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """The same headers by name, for an error response (a refusal)."""
    return {_HEADER_NAMES[name]: value.decode() for name, value in limit_header_pairs(decision)}


class RateLimitMiddleware:
    """On the chat paths: gives ``charge`` a slot, adds its headers, releases its lease after the last byte."""

    def __init__(self, app: ASGIApp, paths: frozenset[str] = CHAT_PATHS) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _route_path(scope) not in self.paths:
            await self.app(scope, receive, send)
            return
        slot = LimitSlot()
        scope.setdefault("state", {})[STATE_KEY] = slot

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start" and slot.decision is not None:
                message["headers"] = _with_headers(message.get("headers", []), limit_header_pairs(slot.decision))
            await send(message)

        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            if slot.decision is not None and slot.decision.lease is not None:
                slot.decision.lease.let_go()  # the response has left: nobody waits for the slot to be free


def _route_path(scope: Scope) -> str:
    """The path as the router matches it: without the ``root_path`` a proxy may mount us under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _with_headers(headers: Any, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if name.lower() not in _LIMIT_HEADERS] + extra


def get_limiter(services: Services) -> RateLimiter:
    """The limiter built in the lifespan; one made here (and kept) only if something built Services without it."""
    if services.limiter is None:
        log.warning("ratelimit_built_late", reason="Services had no limiter; using one from settings")
        services.limiter = RateLimiter.from_settings(services.settings)
    return services.limiter


async def charge(request: Request, services: Services, principal: Principal, *, session_id: str | None) -> Decision:
    """Admit or refuse this (already validated) request; raises 429/503 with the RateLimit headers on refusal.

    Chat-like routes call it after their own input validation (the schema by FastAPI, the message by
    ``clean_message``) and before any work: ``await charge(request, services, principal, session_id=...)``.
    """
    slot = request.scope.get("state", {}).get(STATE_KEY)
    client = client_key(request.scope, services.settings.trusted_proxies)
    decision = await get_limiter(services).admit(client=client, user_id=principal.key_id, session_id=session_id)
    if isinstance(slot, LimitSlot):
        slot.decision = decision
    elif decision.lease is not None:
        # Without the middleware nothing would release it after the response; give it back now rather than leak.
        log.warning("ratelimit_middleware_missing", path=request.url.path)
        await decision.lease.release()
    if not decision.allowed:
        _refuse(decision)
    return decision


def _refuse(decision: Decision) -> None:
    headers = rate_limit_headers(decision)
    log.info("rate_limited", refused_by=decision.refused_by, backend=decision.backend)
    record_ratelimit_refusal(decision.refused_by or "unknown")
    if decision.refused_by == CONCURRENCY:
        raise Overloaded("the service is at capacity; try again in a moment", headers=headers)
    tier = decision.headline
    detail = f" for this {decision.refused_by}" if decision.refused_by else ""
    limit = f" (limit {tier.limit})" if tier is not None else ""
    raise TooManyRequests(
        f"too many requests{detail}{limit}; retry in {decision.retry_after_header} s", headers=headers
    )
