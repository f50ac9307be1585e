"""A near copy of answers read from a shared cache store, kept in process for a fraction of a second.

Why: on Redis, a cached answer cost a round trip per request, and in a busy server that round trip (redis-py, the
event loop's wake-ups) was a quarter of a hit's CPU; a popular question asked a thousand times a second was a
thousand GETs a second per replica on the one Redis every replica shares.

Why it cannot serve an answer an invalidation removed: a copy is reused for ``ttl_s`` after its read was *sent*
(not after it came back), and every removal from the store waits ``ttl_s`` after the store confirmed it before it
reports success (``AnswerCache._removing``). A read sent before the removal therefore expires here before the
removal's caller hears it is done, and a read sent after it sees the store without the answer. So a request that
starts once ``PUT /v1/admin/kb/documents/{id}`` or ``POST /v1/admin/cache/invalidate`` has answered, on any replica,
never gets the removed answer, as without this copy; the price is that wait on each removal. The replica that
removes drops its own copies at once. Values are kept as stored (compressed bytes) and decoded per request, so no
two requests share a mutable answer object.

A read on its way counts as the copy it will leave: requests that find no fresh copy while a read of the same key,
sent less than ``ttl_s`` ago, is still unanswered wait for that read instead of sending their own (the same rule,
so the same guarantee). Without it, each time a popular answer's copy expired under load every request arriving
during the round trip sent a GET of its own (bench server, 32 connections: 10-22 GETs every 0.2 s instead of one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial


class NearCache:
    """Values by key, each fresh for ``ttl_s`` after the read that fetched it was sent; at most ``max_entries``."""

    def __init__(self, ttl_s: float, max_entries: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[str, tuple[float, bytes]] = {}
        self._reads: dict[str, tuple[float, asyncio.Future[bytes | None]]] = {}  # reads on their way, by key

    def get(self, key: str) -> bytes | None:
        """The value while fresh, else None (and a stale one is forgotten)."""
        item = self._entries.get(key)
        if item is None:
            return None
        if self.clock() - item[0] >= self.ttl_s:
            self._entries.pop(key, None)
            return None
        return item[1]

    def put(self, key: str, value: bytes, sent_at: float) -> None:
        """Keep ``value``, read by a request sent at ``sent_at`` (this clock); a copy from a later read stays."""
        held = self._entries.get(key)
        if held is not None and held[0] >= sent_at:
            return
        if held is None and len(self._entries) >= self.max_entries:
            self._make_room()
        self._entries[key] = (sent_at, value)

    def read_under_way(self, key: str) -> asyncio.Future[bytes | None] | None:
        """A read of ``key`` sent less than ``ttl_s`` ago and not answered yet: as fresh as the copy it will leave."""
        item = self._reads.get(key)
        if item is None or self.clock() - item[0] >= self.ttl_s:
            return None
        return item[1]

    def reading(self, key: str, read: asyncio.Future[bytes | None], sent_at: float) -> None:
        """``read`` of ``key`` was sent at ``sent_at``: later requests may wait for it (see read_under_way)."""
        self._reads[key] = (sent_at, read)
        read.add_done_callback(partial(self._answered, key))

    def _answered(self, key: str, read: asyncio.Future[bytes | None]) -> None:
        item = self._reads.get(key)
        if item is not None and item[1] is read:
            del self._reads[key]

    async def settled(self) -> None:
        """Returns once the reads on their way now have been answered (each is bounded by the store's timeout)."""
        reads = [read for _, read in self._reads.values()]
        if reads:
            await asyncio.wait(reads)

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)
        self._reads.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
        self._reads.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _make_room(self) -> None:
        """Forget the stale copies; if that frees nothing, the older half (dicts keep insertion order)."""
        now = self.clock()
        self._entries = {key: item for key, item in self._entries.items() if now - item[0] < self.ttl_s}
        if len(self._entries) >= self.max_entries:
            keep = list(self._entries.items())[len(self._entries) // 2 :]
            self._entries = dict(keep)
