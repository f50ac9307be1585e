"""Per-request fields for the request's summary line: ``annotate(provider=..., cache=...)`` from anywhere.

The access middleware opens a fresh dict for each request and keeps a reference to it. The dict itself (not a
copy) sits in a ContextVar, so code running deeper in the request (the endpoint, a dependency, a thread-pool
function, a streaming body) adds to the same object and the middleware sees those fields after the call returns,
even though ContextVar *assignments* made in a child context never flow back to the parent.

Outside a request (CLI, background jobs) ``annotate`` is a no-op, so library code can call it unconditionally.

Well-known fields (the access middleware turns these into metrics; keep the names and types):

| field | type | meaning |
|---|---|---|
| provider, model | str | who produced the reply (``none`` when every provider failed) |
| cache | str | ``miss`` / ``exact`` / ``semantic`` |
| action | str | ``answer`` / ``handoff`` |
| tokens_in, tokens_out | int | tokens the provider counted for this reply |
| cost_usd | float | what this reply cost |
| ratelimit | str | the limiter's decision, e.g. ``allowed`` or ``refused:ip`` (logged only) |
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_request_fields: ContextVar[dict[str, Any] | None] = ContextVar("helpline_request_fields", default=None)


def annotate(**fields: Any) -> None:
    """Add fields to the current request's summary line (later values win); no-op outside a request."""
    current = _request_fields.get()
    if current is not None:
        current.update(fields)


def request_fields() -> dict[str, Any]:
    """A copy of what has been annotated so far in this request (empty outside one)."""
    current = _request_fields.get()
    return dict(current) if current is not None else {}


@contextmanager
def request_scope() -> Iterator[dict[str, Any]]:
    """Open a fresh annotation dict for one request; yields the live dict the middleware reads afterwards."""
    fields: dict[str, Any] = {}
    token = _request_fields.set(fields)
    try:
        yield fields
    finally:
        _request_fields.reset(token)
