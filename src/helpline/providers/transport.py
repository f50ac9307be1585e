"""Mapping transport-level failures (httpx and httpx2, which google-genai uses) into our error tree."""

from __future__ import annotations

import re

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


_SECONDS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*s?\s*$")


def parse_retry_after(value: object) -> float | None:
    """Seconds from a Retry-After header ("2") or a google.rpc.RetryInfo delay ("2s", "1.5s")."""
    if value is None:
        return None
    match = _SECONDS.match(str(value))
    return float(match.group(1)) if match else None
