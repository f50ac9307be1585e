"""Mapping transport-level failures (httpx and httpx2, which google-genai uses) into our error tree, and ending a
vendor SDK's reply stream on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2

from helpline.providers.base import (
    BadResponse,
    ProviderError,
    ProviderTimeout,
    StreamCut,
    Unavailable,
)

TIMEOUTS = (httpx.TimeoutException, httpx2.TimeoutException)
CONNECT_ERRORS = (httpx.ConnectError, httpx2.ConnectError, ConnectionError, OSError)
CUT_ERRORS = (httpx.RemoteProtocolError, httpx2.RemoteProtocolError, httpx.ReadError, httpx2.ReadError)
DECODE_ERRORS = (ValueError, httpx.DecodingError, httpx2.DecodingError)


def map_transport_error(error: BaseException, provider: str) -> ProviderError | None:
    """Our error for a transport failure, or None when ``error`` is not one."""
    detail = f"{type(error).__name__}: {error}"
    if isinstance(error, TIMEOUTS):
        return ProviderTimeout(detail, provider=provider)
    if isinstance(error, CUT_ERRORS):
        return StreamCut(detail, provider=provider)
    if isinstance(error, (*CONNECT_ERRORS, httpx.TransportError, httpx2.TransportError)):
        return Unavailable(detail, provider=provider)
    if isinstance(error, DECODE_ERRORS):
        return BadResponse(detail, provider=provider)
    return None


# After its finishing chunk a stream gets this long to end by itself (its connection then goes back to the pool);
# then its read is cancelled, which also ends it. A stream left early is cancelled at once.
DRAIN_S = 0.1


@dataclass(slots=True)
class StreamEnd:
    """Set ``finished`` once the reply's finishing chunk has been read: the tail is then drained, not cut."""

    finished: bool = False


@contextlib.asynccontextmanager
async def ended(stream: Any, drain_s: float = DRAIN_S) -> AsyncIterator[StreamEnd]:
    """Leave a vendor SDK's reply stream only once every generator in it has finished, on the event loop.

    Closing the SDK's generator (``aclosing``) closes only the outermost one: the chain inside it (google-genai's
    ``HttpResponse.async_segments`` … httpx2's ``AsyncResponseStream.__aiter__``; ollama's … httpx's) stays
    suspended, in a reference cycle, until the cyclic garbage collector frees it, in whatever thread runs the
    collection (aiosqlite's worker, say), racing the loop as it closes the same generators ("async generator
    already executing", seen as a rare test failure), and holding the HTTP connection until then. Reading on to
    the end finishes them all (after the finishing chunk nothing more comes); a tail slower than ``drain_s``, or
    any tail of a stream left before it finished (a refusal, a reader gone), is cancelled, and a cancellation
    passes through every frame of the chain, where a close does not. An error in a tail we no longer want is not
    this reply's; a cancellation of the caller is never swallowed.

    Yield the ``done`` chunk inside the block, after setting ``finished``: its reader gets it at once, and the
    drain runs when the reader closes the stream (the router does, in the attempt's own task), not before it."""
    end = StreamEnd()
    try:
        yield end
    except BaseException:
        if not end.finished:
            drain_s = 0.0
        raise
    finally:
        try:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(drain_s):
                    async for _ in stream:
                        pass
        finally:
            await stream.aclose()


_SECONDS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*s?\s*$")


def parse_retry_after(value: object) -> float | None:
    """Seconds from a Retry-After header ("2") or a google.rpc.RetryInfo delay ("2s", "1.5s")."""
    if value is None:
        return None
    match = _SECONDS.match(str(value))
    return float(match.group(1)) if match else None
