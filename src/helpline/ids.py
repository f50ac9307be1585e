"""Random ids for requests, messages and leases: CSPRNG bytes drawn from a buffer, not one system call each.

Why: ``secrets.token_hex`` makes a ``getrandom`` call per id, and CPython releases the GIL around it. A cached
answer made three such ids; whenever another thread was waiting for the GIL (the SQLite store's thread, the ONNX
embedder), each call handed the GIL over and the event loop waited to get it back, and that cost a cached answer
more than the rest of its own work (thread-CPU profile of bench.hitcost). Here 4 KiB come from ``os.urandom`` at a
time: the same CSPRNG, one call per 256 ids of 16 bytes.

Secrets a caller presents later (session ids, API keys, sign-in tokens) still come from ``secrets`` directly: they
are rare, and a reader of this module should not have to reason about a buffer to trust them.

A forked child starts with an empty buffer, so two workers forked from one parent never share ids.
"""

from __future__ import annotations

import os
import threading

_CHUNK = 4096
_lock = threading.Lock()
_buffer = b""
_at = 0


def _reset() -> None:
    global _buffer, _at
    _buffer, _at = b"", 0


os.register_at_fork(after_in_child=_reset)


def random_hex(nbytes: int) -> str:
    """``nbytes`` random bytes as ``2 * nbytes`` hex digits (like ``secrets.token_hex``)."""
    global _buffer, _at  # noqa: PLW0603 - see _reset
    if nbytes > _CHUNK:
        return os.urandom(nbytes).hex()
    with _lock:
        if _at + nbytes > len(_buffer):
            _buffer, _at = os.urandom(_CHUNK), 0
        start = _at
        _at += nbytes
        return _buffer[start:_at].hex()
