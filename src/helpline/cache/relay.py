"""Identical streamed misses on other replicas read one provider call as it streams.

In one replica, identical streamed requests follow one flight (``cache.service.Flight``). Across replicas the
first to miss takes the answer's peer lock (``AnswerCache.peer_lock``); an identical request elsewhere used to
wait for the answer to land in the cache, and a streamed one gave up after the router's first-token timeout and
made a provider call of its own: each replica paid for the same reply, and its shopper read nothing meanwhile.

Now the lock holder copies its flight to a relay stream in the store (a Redis stream under the answer's key and
the holder's lock token): the text as it is shown, then the outcome, encoded by the chat layer (a cached answer,
a reply shared but not cached, or, for a stream cut after some text, why). An identical streamed request on
another replica that finds the lock held and the stream begun copies it into its own replica's flight, which it
and its replica's identical requests follow as they would a local call.

A follower gives up on a stream that stops moving for longer than the router lets a live reply stall (plus a
grace for the copying): its holder is gone (its lock lapses) or cannot reach the store. Its reply then ends cut,
as a local follower's does when the call it follows is cut.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from helpline.cache.backend import RELAY_START

log = structlog.get_logger(__name__)

RELAY_TTL_S = 30.0  # a stream lapses this long after its last addition (its followers read it while it moves)
RELAY_POLL_S = 0.05  # a follower reads the stream this often
RELAY_GRACE_S = 1.0  # beyond the router's stall timeout, before a quiet stream counts as stopped
TEXT, END, CUT = b"t", b"e", b"c"
STOPPED = "the reply it followed, made on another replica, stopped arriving"

Entries = list[tuple[bytes, bytes, bytes]]


class Mirrored(Protocol):
    """What the relay needs of a flight it copies into."""

    cut: str | None

    def publish(self, text: str) -> None: ...

    def land(self, result: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class RelayCodec:
    """The chat layer's outcomes in the store. ``encode(landed, shown)``: bytes, or None when there is nothing
    another replica could use (then a stream already shown ends as cut, and one not begun is not relayed at all);
    ``decode`` gives the outcome back (None for bytes it cannot read)."""

    encode: Callable[[Any, bool], bytes | None]
    decode: Callable[[bytes], Any]


class RelayWriter:
    """Copies a flight to its relay stream: what was published since the last write goes in one entry, so a slow
    store costs the stream fewer, longer pieces rather than the shopper any time. ``append`` never raises (the
    cache's guarded store call)."""

    def __init__(self, append: Callable[[Sequence[tuple[bytes, bytes]]], Awaitable[object]], codec: RelayCodec) -> None:
        self._append = append
        self._codec = codec
        self._text: list[str] = []
        self._end: tuple[bytes, bytes] | None = None
        self._ended = False
        self._shown = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="cache-relay")

    def text(self, piece: str) -> None:
        if not self._ended:
            self._text.append(piece)
            self._shown = True
            self._wake.set()

    def end(self, landed: Any, cut: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        payload = self._codec.encode(landed, self._shown)
        if payload is not None:
            self._end = (END, payload)
        elif self._shown:
            self._end = (CUT, (cut or "cancelled").encode())
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            entries: list[tuple[bytes, bytes]] = []
            if self._text:
                entries.append((TEXT, "".join(self._text).encode()))
                self._text.clear()
            ended = self._ended
            if ended and self._end is not None:
                entries.append(self._end)
            if entries:
                await self._append(entries)
            if ended:
                return

    async def close(self, timeout_s: float) -> None:
        """Let the outcome reach the store (waiting ``timeout_s`` at most), then stop copying. A flight that has
        not landed by now never will for this writer: it ends as cancelled."""
        self.end(None, None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._task.cancel()


async def follow(
    read: Callable[[bytes], Awaitable[Entries]],
    entries: Entries,
    flight: Mirrored,
    codec: RelayCodec,
    *,
    quiet_s: float,
    deadline: float,
) -> None:
    """Copy a relay stream into ``flight``, from ``entries`` (its first read) until its outcome, until it stays
    quiet for ``quiet_s``, or until ``deadline`` (``time.monotonic``); the flight lands either way."""
    after = RELAY_START
    moved = time.monotonic()
    while True:
        for entry_id, kind, payload in entries:
            after = entry_id
            if kind == TEXT:
                flight.publish(payload.decode("utf-8", "replace"))
            elif kind == END:
                flight.land(codec.decode(payload))
                return
            elif kind == CUT:
                flight.cut = payload.decode("utf-8", "replace")
                flight.land(None)
                return
        now = time.monotonic()
        if entries:
            moved = now
        elif now - moved > quiet_s or now > deadline:
            log.warning("cache_relay_stopped", quiet_s=round(now - moved, 2))
            flight.cut = STOPPED
            flight.land(None)
            return
        await asyncio.sleep(RELAY_POLL_S)
        entries = await read(after)
