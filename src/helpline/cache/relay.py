"""Identical streamed misses on other replicas read one provider call as it streams.

In one replica, identical streamed requests follow one flight (``cache.service.Flight``). Across replicas the
first to miss takes the answer's peer lock (``AnswerCache.peer_lock``); an identical request elsewhere used to
wait for the answer to land in the cache, and a streamed one gave up after the router's first-token timeout and
made a provider call of its own: each replica paid for the same reply, and its shopper read nothing meanwhile.

Now the lock holder copies its flight to a relay stream in the store (a Redis stream under the answer's key and
the holder's lock token) while anybody reads it: first a header (the store's generation and invalidation count
when the call read the knowledge), then the text as it is shown, then the outcome, encoded by the chat layer (a
cached answer, a reply shared but not cached, or, for a stream cut after some text, why). A follower on another
replica counts itself as a reader (a mark with a short TTL, renewed at each poll); with nobody reading, the holder
keeps its text and writes nothing but a check. The header goes as soon as somebody reads, before any text: a
plain request's call shows none until its outcome, and its followers elsewhere used to give up on it after the
first-token timeout and pay for a call of their own. An identical streamed request that finds the lock held and
the stream begun copies it into its own replica's flight, which it and its replica's identical requests follow as
they would a local call, unless the store has seen an invalidation since the holder read the knowledge (then it
makes its own call, as it would for a local call begun before an invalidation), or the stream already ended
without an answer.

Each of the follower's polls also reads the answer's cache entry and its lock: the answer stored (its outcome not
relayed yet, or lost) is taken from the cache; a lock gone without an outcome ends the reply cut (the holder
writes its outcome before it lets go; a holder that died lets its lock lapse within the lock's TTL). A holder
whose shopper leaves goes on while another replica reads its stream, as it does for followers in its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from helpline.cache.backend import RELAY_START

log = structlog.get_logger(__name__)

RELAY_TTL_S = 30.0  # a stream lapses this long after its last addition (its followers read it while it moves)
RELAY_POLL_S = 0.05  # a follower reads the stream this often
RELAY_READER_S = 2.0  # a follower counts as the stream's reader this long after its last poll
RELAY_FLUSH_S = 0.05  # the holder writes what was shown at most this often (while somebody reads)
RELAY_IDLE_FLUSH_S = 0.1  # and checks for a reader this often while nobody does (or no text comes) ...
RELAY_IDLE_BACKOFF = 1.5  # ... then less often after each check that found nobody ...
RELAY_IDLE_MAX_S = 0.5  # ... down to this (well inside a reader's mark, RELAY_READER_S)
HEAD, TEXT, END, CUT = b"h", b"t", b"e", b"c"
STOPPED = "the reply it followed, made on another replica, stopped arriving"

Entries = list[tuple[bytes, bytes, bytes]]
Marks = tuple[int, int, int]  # the store's generation, invalidation count, knowledge mark (see CacheBackend.marks)


class Mirrored(Protocol):
    """What the relay needs of a flight it copies from or into."""

    cut: str | None
    origin: Marks | None  # the store's generation and invalidation count, and its own copy's knowledge revision

    def publish(self, text: str) -> None: ...

    def land(self, result: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class RelayCodec:
    """The chat layer's outcomes in the store. ``encode(landed, shown)``: bytes, or None when there is nothing
    another replica could use (then a stream already shown ends as cut, and one not begun is not relayed at all);
    ``decode`` gives it back (None for bytes it cannot read); ``stored(landed)``: whether a follower finds it in the
    cache anyway (then nobody needs it relayed unless somebody already reads the stream)."""

    encode: Callable[[Any, bool], bytes | None]
    decode: Callable[[bytes], Any]
    stored: Callable[[Any], bool]


def header(origin: Marks | None) -> bytes:
    return b"-" if origin is None else b"%d:%d:%d" % origin


def current(entries: Entries, marks: Marks) -> bool:
    """Whether a stream's call read the knowledge after the store's last invalidation, from a copy no older than
    the newest knowledge an invalidation declared (``marks``: the store's now)."""
    if not entries or entries[0][1] != HEAD:
        return False
    try:
        generation, invalidations, revision = (int(part) for part in entries[0][2].split(b":"))
    except ValueError:  # "-": the call never read the knowledge (it found the answer cached)
        return False
    return (generation, invalidations) == marks[:2] and revision >= marks[2]


class RelayWriter:
    """Copies a flight to its relay stream while somebody reads it: what was shown since the last write goes in one
    entry, at most every RELAY_FLUSH_S, so a slow store costs the stream fewer, longer pieces rather than the shopper
    any time. Text not written (nobody reads yet, or the write failed) is kept and goes with the next write, so a
    follower never misses a piece. ``append`` never raises: True written, False nobody reads, None failed."""

    def __init__(
        self,
        append: Callable[[Sequence[tuple[bytes, bytes]]], Awaitable[bool | None]],
        codec: RelayCodec,
        flight: Mirrored,
    ) -> None:
        self._append = append
        self._codec = codec
        self._flight = flight
        self.read = False  # another replica reads the stream (as of the last write or check)
        self._wrote = False
        self._sent = 0  # characters of the reply written
        self._text: list[str] = []
        self._end: tuple[bytes, bytes] | None = None
        self._needed = False  # its outcome is of use to a reader who has not read the stream yet
        self._ended = asyncio.Event()
        self._shown = False
        self._wake = asyncio.Event()  # a piece of text, or the end
        self._idle_s = RELAY_IDLE_FLUSH_S  # the pause before the next check while nothing is sent
        self._task = asyncio.create_task(self._run(), name="cache-relay")

    def text(self, piece: str) -> None:
        if piece and not self._ended.is_set():  # (an empty piece would be news with nothing to send)
            self._text.append(piece)
            self._shown = True
            self._wake.set()

    def end(self, landed: Any, cut: str | None) -> None:
        if self._ended.is_set():
            return
        payload = self._codec.encode(landed, self._shown)
        if payload is not None:
            self._end = (END, payload)
            self._needed = not self._codec.stored(landed)  # (a cut one is not followed by one arriving now)
        elif self._shown:
            self._end = (CUT, (cut or "cancelled").encode())
        self._ended.set()
        self._wake.set()

    async def _run(self) -> None:
        """Write or check, then pause (:meth:`_pause`), until the end. The header goes as soon as somebody reads,
        before any text: a plain request's call shows none until its outcome."""
        retried = False
        while True:
            ended = self._ended.is_set()
            if self._flight.origin is None or (ended and not self.read and not self._needed):
                # Nobody could follow it (its call never read the knowledge: the answer was cached, or it has not
                # read it yet), or nobody reads it and a request arriving now finds its outcome in the cache (or
                # would not follow a cut one): a plain miss costs its shopper no relay write.
                answer: bool | None = True
                sent = asked = False
            else:
                answer, sent = await self._write(ended)
                asked = True
            if ended:
                if answer is None and not retried:  # the outcome failed to go: once more
                    retried = True
                    continue
                return
            if asked and not sent and answer and (self._text or not self._wrote):
                continue  # a check found a reader: what waits for them goes at once
            await self._pause(backing_off=asked and not sent)

    async def _pause(self, *, backing_off: bool) -> None:
        """Until the next write or check, cut short by the end. While somebody reads: at least RELAY_FLUSH_S (a slow
        store gets fewer, longer pieces), then until the next piece of text, or a check whether they still do (the
        holder's call goes on for them). While nobody does: a check every ``_idle_s``, which grows after each one
        that found nobody (RELAY_IDLE_MAX_S at most), so a long call nobody follows costs the store a few checks."""
        if self.read:
            await _until(self._ended, RELAY_FLUSH_S)
            if self._text or self._ended.is_set():  # (the end's wake may be set already: clearing it would lose it)
                return
            self._wake.clear()  # (no await since the look: a piece or the end that comes now sets it again)
            await _until(self._wake, self._idle_s)
            return
        await _until(self._ended, self._idle_s)
        if backing_off:
            self._idle_s = min(self._idle_s * RELAY_IDLE_BACKOFF, RELAY_IDLE_MAX_S)

    async def _write(self, ended: bool) -> tuple[bool | None, bool]:
        """While somebody reads (or at the end): write what was shown since the last write, the header first if it
        has not gone, and the outcome once ended. Otherwise, and when nothing new is there, only ask whether
        somebody reads: the text waits rather than being sent again and again. (``append``'s answer, whether
        entries were sent); text not written is kept for the next write."""
        pieces = len(self._text)
        text = "".join(self._text[:pieces])
        news: list[tuple[bytes, bytes]] = []
        if text:  # with its place in the reply: a write that timed out but landed later is not shown twice
            news.append((TEXT, b"%d:" % self._sent + text.encode()))
        if ended and self._end is not None:
            news.append(self._end)
        if ended and not news:
            return True, False  # over, with nothing for anybody
        entries = news if self._wrote else [(HEAD, header(self._flight.origin)), *news]
        sending = (self.read or ended) and bool(news or not self._wrote)
        answer = await self._append(entries if sending else [])
        if answer is not None:
            self.read = answer
        if answer:
            self._idle_s = RELAY_IDLE_FLUSH_S  # somebody reads: no pause grown while nobody did
        if sending and answer:
            self._wrote = True
            self._sent += len(text)
            del self._text[:pieces]
        return answer, sending

    async def close(self, timeout_s: float) -> asyncio.Task[None] | None:
        """Let the outcome reach the store (waiting ``timeout_s`` at most), then stop copying; the write still on its
        way then (bounded by the store's own timeout), for the caller to see finished; that task at once when there
        is nothing to write for anybody (at most a check for a reader is on its way). A flight that has not landed
        by now never will for this writer: it ends as cancelled."""
        self.end(None, None)
        if self._task.done():
            return None
        if not self.read and not self._needed:  # nothing to write: at most a check for a reader is on its way
            return self._task
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            return self._task
        return None


@dataclass(frozen=True, slots=True)
class Polled:
    """One follower poll: the stream's entries since the last, the answer if the cache has it, whether the holder
    still holds the lock."""

    entries: Entries
    landed: Any
    held: bool


async def follow(
    poll: Callable[[bytes], Awaitable[Polled | None]],
    entries: Entries,
    flight: Mirrored,
    codec: RelayCodec,
    *,
    deadline: float,
    lost_s: float,
    settle_s: float,
) -> None:
    """Copy a relay stream into ``flight``, from ``entries`` (what was read of it so far), until its outcome, the
    answer in the cache, its holder gone (the lock let go of, and no outcome within ``settle_s``: a write may land
    after the unlock), ``deadline`` (``time.monotonic``), or a store that has not answered for ``lost_s`` (``poll``
    gives None); the flight lands in every case, an entry it cannot read (another release's) included."""
    after = RELAY_START
    copy = _Copy(flight, codec)
    answered = time.monotonic()
    gone: float | None = None
    while True:
        if copy.ended(entries):
            return
        after = entries[-1][0] if entries else after
        now = time.monotonic()
        if now > deadline or now - answered > lost_s:
            _stopped(flight, "deadline" if now > deadline else "store")
            return
        await asyncio.sleep(RELAY_POLL_S)
        polled = await poll(after)
        if polled is None:
            entries = []
            continue
        answered = time.monotonic()
        entries = polled.entries
        if entries:
            continue
        if polled.landed is not None:  # stored, its outcome not relayed (yet, or lost): the cache's is the same
            flight.land(polled.landed)
            return
        if polled.held:
            gone = None
        elif gone is None:
            gone = answered
        elif answered - gone > settle_s:  # let go without an outcome (written before it lets go): gone
            _stopped(flight, "holder")
            return


class _Copy:
    """A stream's entries into a flight: each piece of text from where the flight's text ends (a piece written
    twice, or again with more, is shown once)."""

    def __init__(self, flight: Mirrored, codec: RelayCodec) -> None:
        self._flight = flight
        self._codec = codec
        self._shown = 0

    def ended(self, entries: Entries) -> bool:
        """Copy ``entries``; whether they held the stream's outcome or one it cannot read (another release's): the
        flight has landed."""
        flight = self._flight
        for _, kind, payload in entries:
            if kind == TEXT:
                at, _, raw = payload.partition(b":")
                try:
                    start = int(at)
                except ValueError as error:
                    log.warning("cache_relay_unreadable", error=type(error).__name__)
                    _stopped(flight, "unreadable")
                    return True
                text = raw.decode("utf-8", "replace")[max(0, self._shown - start) :]
                if text:
                    flight.publish(text)
                    self._shown += len(text)
            elif kind == END:
                flight.land(self._codec.decode(payload))
                return True
            elif kind == CUT:
                flight.cut = payload.decode("utf-8", "replace")
                flight.land(None)
                return True
        return False


async def _until(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def _stopped(flight: Mirrored, why: str) -> None:
    log.warning("cache_relay_stopped", why=why)
    flight.cut = STOPPED
    flight.land(None)
