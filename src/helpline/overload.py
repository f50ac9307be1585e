"""A slow answer is not always a slow store: telling Redis being slow from our own event loop running late.

Every caller of Redis on the request path (the limiter, the answer cache) gives up on a call after a short
deadline and then works without Redis for a while (the in-process limiter; a bypassed cache). Under a burst the event
loop itself runs late: a cold worker took 0.5-0.8 s to read fifty answers Redis had sent at once, and a saturated one
let a background popularity count (cache) outlive its 0.15 s while Redis answered in microseconds. Giving up then is
the wrong call twice over: the store was fine, and working without it costs most exactly when the process has no
time to spare (per-replica limiters overshoot; a bypassed cache sends every cached question to a provider).

So when the deadline passes while the loop's own timers were running late (:class:`LoopLag`), the same call is given
up to ``overload_timeout_s`` more; a store that is really silent while the loop is idle is still given up on after
the short deadline. The caller's Redis client should have ``overload_timeout_s`` (plus the deadline) as its own read
timeout: it is the hard bound on a call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
LATE_SHARE = 0.2  # the loop ran its timers this late (as a share of the deadline) during the call: it was overloaded


class LoopLag:
    """How late this event loop has been running its timers: a heartbeat every ``interval_s`` notes its delay."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self._interval_s = interval_s
        self._beats: deque[tuple[float, float]] = deque(maxlen=128)  # (loop time, how late)
        self._expected = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Beat on the running loop (again, if an earlier loop has gone: its beats say nothing about this one)."""
        loop = asyncio.get_running_loop()
        if self._handle is None or self._loop is not loop:
            self.stop()
            self._beats.clear()
            self._loop = loop
            self._expected = loop.time() + self._interval_s
            self._handle = loop.call_at(self._expected, self._beat)

    def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._beats.append((now, now - self._expected))
        self._expected = now + self._interval_s
        self._handle = loop.call_at(self._expected, self._beat)

    def worst_since(self, since: float) -> float:
        """The largest delay seen since loop time ``since``, counting a heartbeat that is overdue right now."""
        if self._handle is None:
            return 0.0
        overdue = asyncio.get_running_loop().time() - self._expected
        return max([overdue, *(late for at, late in self._beats if at >= since)])

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def patiently(
    work: Awaitable[T],
    lag: LoopLag,
    *,
    timeout_s: float,
    overload_timeout_s: float,
    on_overload: Callable[[], None] | None = None,
    given_up: asyncio.Future[None] | None = None,
) -> T:
    """The outcome of ``work`` within ``timeout_s``, or within ``overload_timeout_s`` more if the loop ran late
    meanwhile (``on_overload`` is told); otherwise TimeoutError.

    ``given_up``: done once the caller has stopped using the store (another call's failure made it so): no more time
    then, and no more wait. Without it, a burst of calls to a silent store read the time the first ones took to fail
    (or to open connections) as a late loop, and waited the whole allowance for a store already given up on.

    A call given up on is not cancelled: redis-py closes a connection whose command is cancelled mid-flight, so every
    call timed out against a slow Redis would drop a pooled connection and the next command would pay a new handshake
    over the slow link. It runs on until Redis answers or the client's own read timeout ends it. Only a caller
    cancelled itself (a client gone, shutdown) stops it."""
    lag.start()
    started = asyncio.get_running_loop().time()
    call = asyncio.ensure_future(work)
    try:
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(call)
        except TimeoutError:
            if (given_up is not None and given_up.done()) or lag.worst_since(started) < timeout_s * LATE_SHARE:
                raise  # the loop was responsive: the store is what is slow (or it is not used any more)
            if on_overload is not None:
                on_overload()
        # asyncio.wait neither cancels what it waits for nor raises on a timeout
        waiting: set[asyncio.Future[Any]] = {call} if given_up is None else {call, given_up}
        await asyncio.wait(waiting, timeout=overload_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        return _outcome(call)
    except TimeoutError:
        call.add_done_callback(_quietly)  # its late failure is expected; nobody awaits it any more
        raise
    except BaseException:
        call.cancel()
        raise


def _outcome(call: asyncio.Future[T]) -> T:
    """The call's result; TimeoutError while it is still under way."""
    if not call.done():
        raise TimeoutError
    return call.result()


def _quietly(call: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a call given up on, so a late failure is not reported as never retrieved."""
    if not call.cancelled():
        call.exception()
