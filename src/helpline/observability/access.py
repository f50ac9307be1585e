"""The access middleware: one summary log line and the request metrics for every HTTP request.

Pure ASGI (no BaseHTTPMiddleware) so it adds no task or body buffering, and so a streamed reply is timed to
its last byte. It opens the request's annotation scope (``observability.context``); whatever the endpoint and
services annotate (provider, model, cache, tokens, cost, rate-limit decision) lands on the summary line and in
the metrics after the call. The route is the matched template, never the raw path: paths carry session ids,
which are secrets (whoever holds one may read the conversation), and raw paths would explode metric labels.

Place it inside RequestIdMiddleware (so the id is known) and outside everything else (so 413s from the body
limit and 429s from the limiter are counted too).
"""

from __future__ import annotations

import re
import time
from typing import Any
from weakref import WeakKeyDictionary

import structlog
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from helpline.observability import metrics
from helpline.observability.context import request_scope
from helpline.observability.logging import log_line

log = structlog.get_logger("helpline.access")
UNMATCHED = "unmatched"
# Probes and scrapes would drown the useful lines: logged at debug level unless they fail.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
_RESERVED = frozenset({"event", "method", "route", "status", "latency_ms", "request_id"})


def route_template(scope: Scope) -> str:
    """The matched route's path template; for requests refused before routing, the route they were aimed at."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    request_path = scope.get("path", "")
    for pattern, template in _schema_templates(scope.get("app")):
        if pattern.match(request_path):
            return template
    return UNMATCHED


_TEMPLATES: WeakKeyDictionary[Any, list[tuple[re.Pattern[str], str]]] = WeakKeyDictionary()


def _schema_templates(app: Any) -> list[tuple[re.Pattern[str], str]]:
    """The app's documented path templates, compiled once per app.

    Read from the OpenAPI schema (public and cached by FastAPI) rather than by walking the router, whose
    included-router internals change between FastAPI releases. Only requests refused before routing (413, 429,
    CSRF) get here; an undocumented route refused that early is labelled ``unmatched``.
    """
    if app is None:
        return []
    cached = _TEMPLATES.get(app)
    if cached is None:
        try:
            paths = app.openapi().get("paths", {})
        except Exception:  # noqa: BLE001 - a schema problem must not break the request; labels fall back
            paths = {}
        cached = _TEMPLATES[app] = [(compile_path(template)[0], template) for template in paths]
    return cached


def _number(value: Any) -> float:
    """Annotations come from other code: a malformed number must not break a finished request."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _record_reply_metrics(fields: dict[str, Any], status: int, seconds: float) -> None:
    provider = str(fields.get("provider", "none"))
    cache = fields.get("cache")
    if cache is not None:
        metrics.record_cache_lookup(str(cache))
    if "provider" in fields:
        metrics.record_usage(
            provider,
            int(_number(fields.get("tokens_in"))),
            int(_number(fields.get("tokens_out"))),
            _number(fields.get("cost_usd")),
        )
    if "provider" in fields and cache is not None and status < 400:
        metrics.observe_reply(provider, str(cache), seconds)


def _log_summary(scope: Scope, route: str, status: int, seconds: float, fields: dict[str, Any]) -> None:
    extra = {key: value for key, value in fields.items() if key not in _RESERVED}
    request_id = scope.get("state", {}).get("request_id", "")
    line = {
        "method": scope.get("method", ""),
        "route": route,
        "status": status,
        "latency_ms": round(seconds * 1000, 1),
        "request_id": request_id,
        **extra,
    }
    method = "error" if status >= 500 else "debug" if route in QUIET_ROUTES and status < 400 else "info"
    log_line(log, method, "request", line)


class AccessLogMiddleware:
    """Times each HTTP request, counts it, and logs one summary line with the request's annotations."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with request_scope() as fields, metrics.in_flight():
            try:
                await self.app(scope, receive, send_with_status)
            except Exception as error:
                # The traceback is logged once, server-side, by the error handler; here only its type.
                fields.setdefault("error", type(error).__name__)
                raise
            finally:
                self._finish(scope, status, time.perf_counter() - started, fields)

    @staticmethod
    def _finish(scope: Scope, status: int, seconds: float, fields: dict[str, Any]) -> None:
        route = route_template(scope)
        metrics.observe_http_request(route, str(scope.get("method", "")), status, seconds)
        _record_reply_metrics(fields, status, seconds)
        _log_summary(scope, route, status, seconds, fields)
