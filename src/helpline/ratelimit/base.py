"""What every limiter returns (a Decision, maybe a Lease) and the Protocol the HTTP layer depends on.

Semantics shared by the Redis and in-process limiters, so the embedded default behaves like production:

* Each tier is a sliding-window log: a request is admitted when fewer than ``limit`` requests were admitted in the
  last ``window`` (exact: at most ``limit`` in *any* window of that length, and a refused request is not logged).
* One evaluation checks the concurrency cap and every tier, and charges all of them only when all admit.
* An admitted request holds a lease on the global concurrency cap until it is released; a lease not renewed within
  its TTL expires, so a crashed worker gives its capacity back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, Protocol, TypeVar

import structlog

from helpline.ratelimit.policies import Tier

log = structlog.get_logger(__name__)

CONCURRENCY = "concurrency"
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True, slots=True)
class TierState:
    """A tier after the evaluation: ``remaining`` requests left now, ``reset_s`` until the oldest one leaves."""

    name: str
    limit: int
    remaining: int
    reset_s: float


@dataclass(slots=True)
class Lease:
    """A slot under the global concurrency cap. ``release`` gives it back and returns once it is free; ``let_go``
    hands it back without waiting for that (the HTTP layer, after the response has left: nobody waits for the slot,
    and a wait there cost every request one more trip through the event loop). Both are idempotent, neither
    raises: a failure is logged and the lease TTL reclaims the slot."""

    token: str
    _release: Callable[[str], Awaitable[None]] = field(repr=False)
    _let_go: Callable[[str], None] = field(repr=False)
    released: bool = False

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        try:
            await self._release(self.token)
        except Exception as error:  # noqa: BLE001 - the lease TTL reclaims it; a release must not fail a response
            log.warning("ratelimit_release_failed", error_type=type(error).__name__)

    def let_go(self) -> None:
        if self.released:
            return
        self.released = True
        try:
            self._let_go(self.token)
        except Exception as error:  # noqa: BLE001 - as in release
            log.warning("ratelimit_release_failed", error_type=type(error).__name__)


@dataclass(slots=True)
class Decision:
    """The outcome of one evaluation. ``refused_by`` is a tier name or ``concurrency``."""

    allowed: bool
    tiers: tuple[TierState, ...] = ()
    refused_by: str | None = None
    retry_after_s: float = 0.0
    lease: Lease | None = None
    backend: str = "memory"
    in_flight: int = 0

    @property
    def headline(self) -> TierState | None:
        """The tier the RateLimit headers describe: the refusing one, else the one closest to running out."""
        if self.refused_by is not None:
            for tier in self.tiers:
                if tier.name == self.refused_by:
                    return tier
        if len(self.tiers) < 2:  # none, or the one (most requests: a shopper's IP alone)
            return self.tiers[0] if self.tiers else None
        return min(self.tiers, key=lambda tier: (tier.remaining, -tier.reset_s))

    @property
    def retry_after_header(self) -> int:
        """Whole seconds, rounded up and at least 1 (HTTP Retry-After has no fractions)."""
        return max(1, math.ceil(self.retry_after_s))


class Limiter(Protocol):
    """Checks and charges a request's tiers (and, with ``lease``, the global concurrency cap) in one step."""

    @property
    def backend(self) -> str: ...

    async def acquire(self, tiers: Sequence[Tier], *, lease: bool = True) -> Decision: ...

    async def warm_up(self) -> None: ...

    async def aclose(self) -> None: ...

    def stats(self) -> dict[str, int | str | bool]: ...


class LeaseKeeper:
    """Renews the leases this process holds, in one batch every ``ttl_s / 3``, while they are held.

    One task per limiter instead of one per request: with a thousand streams in flight that is one Redis call every
    ten seconds rather than a thousand.
    """

    def __init__(self, renew: Callable[[list[str]], Awaitable[None]], ttl_s: float) -> None:
        self._renew = renew
        self._interval_s = ttl_s / 3
        self.held: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def hold(self, token: str) -> None:
        self.held.add(token)
        if self._task is None and not self._stopped:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ratelimit-lease-keeper")

    def drop(self, token: str) -> None:
        self.held.discard(token)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            if not self.held:
                continue
            try:
                await self._renew(sorted(self.held))
            except Exception as error:  # noqa: BLE001 - a missed renewal only shortens leases; keep renewing
                log.warning("ratelimit_lease_renew_failed", error_type=type(error).__name__, held=len(self.held))

    async def stop(self) -> None:
        """Stop renewing (shutdown, or a test simulating a crashed worker): held leases then expire by TTL."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@dataclass(slots=True)
class _Batch(Generic[ItemT, ResultT]):
    items: list[ItemT]
    sent: asyncio.Future[list[ResultT] | BaseException]  # settled with the outcome: for settled() and the next batch
    waiters: list[asyncio.Future[list[ResultT] | BaseException]] = field(default_factory=list)  # one per caller
    unheard: int = 0  # items handed in with submit_soon: nobody hears their outcome
    traceback: TracebackType | None = None


class GroupCommit(Generic[ItemT, ResultT]):
    """Calls of concurrent requests go to the store together (group commit): while one batch is on its way, the
    calls that arrive meanwhile collect into the next, and ``submit`` returns its own item's result once the store
    answered. Under load one round trip serves many requests; alone, a call waits one loop iteration at most.

    Why: each Redis command costs the client about 0.15 ms of CPU (redis-py 8), more than everything else on a
    cached answer's path, and a busy worker pays it per request. ``send`` gets the items in arrival order and
    returns one result per item.

    ``stall_s``: how long a batch waits for the one before it. ``None`` waits for it to be answered; a number lets
    the next batch go beside a batch that is taking that long (a slow or silent Redis then delays no caller by
    more than ``stall_s`` beyond its own round trip, so a caller's own deadline still measures Redis, not the queue).
    ``max_items`` caps a batch (``None``: no cap); the rest start the next one.

    Each caller waits on a future of its own, settled by the flush: cancelling a caller cancels only its wait,
    never the batch (cheaper than one ``asyncio.shield`` per caller around a shared future). ``submit_soon`` hands
    an item in without waiting; a failure of its batch is then logged here, as nobody else hears it."""

    def __init__(
        self,
        send: Callable[[list[ItemT]], Awaitable[list[ResultT]]],
        *,
        stall_s: float | None = None,
        max_items: int | None = None,
        name: str = "group-commit",
    ) -> None:
        self._send = send
        self._stall_s = stall_s
        self._max_items = max_items
        self._name = name
        self._open: _Batch[ItemT, ResultT] | None = None
        self._on_its_way: asyncio.Future[list[ResultT] | BaseException] | None = None
        self._unsettled: set[asyncio.Future[list[ResultT] | BaseException]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: ItemT) -> ResultT:
        batch = self._batch()
        index = len(batch.items)
        batch.items.append(item)
        waiter: asyncio.Future[list[ResultT] | BaseException] = batch.sent.get_loop().create_future()
        batch.waiters.append(waiter)
        outcome = await waiter
        if isinstance(outcome, BaseException):
            # Each caller raises the one error with the batch's traceback, not with its predecessors' frames.
            raise outcome.with_traceback(batch.traceback)
        return outcome[index]

    def submit_soon(self, item: ItemT) -> None:
        """Hand an item to the next batch without waiting for it (its outcome is logged if the batch fails)."""
        batch = self._batch()
        batch.items.append(item)
        batch.unheard += 1

    @property
    def collecting(self) -> bool:
        """A batch is open: it has not been sent yet, and will be."""
        return self._open is not None

    def _batch(self) -> _Batch[ItemT, ResultT]:
        """The open batch, or a new one (with its flush task) when there is none or it is full."""
        batch = self._open
        if batch is None or (self._max_items is not None and len(batch.items) >= self._max_items):
            batch = self._open = _Batch([], asyncio.get_running_loop().create_future())
            self._unsettled.add(batch.sent)
            task = asyncio.create_task(self._flush(batch), name=self._name)
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._finished, batch))
        return batch

    async def _flush(self, batch: _Batch[ItemT, ResultT]) -> None:
        # Every caller of the batch hears the outcome, whatever happens here: a failure is handed to them, and so
        # is a flush cancelled by shutdown, even while it waited for the batch before it.
        outcome: list[ResultT] | BaseException = _interrupted()
        try:
            before = self._on_its_way
            self._on_its_way = batch.sent
            if before is not None and not before.done():
                await asyncio.wait([before], timeout=self._stall_s)
            if self._open is batch:
                self._open = None  # closed: later calls start the next batch
            results = await self._send(batch.items)
            outcome = results if len(results) == len(batch.items) else self._miscounted(results, batch.items)
        except Exception as error:  # noqa: BLE001 - see above
            outcome = error
            batch.traceback = error.__traceback__
        finally:
            self._settle(batch, outcome)

    def _finished(self, batch: _Batch[ItemT, ResultT], task: asyncio.Task[None]) -> None:
        """Also when the flush was cancelled before its first step, and its own ``finally`` never ran: its callers
        hear of it, and later calls start a new batch instead of joining one that will never be sent."""
        self._tasks.discard(task)
        self._settle(batch, _interrupted())

    def _settle(self, batch: _Batch[ItemT, ResultT], outcome: list[ResultT] | BaseException) -> None:
        if self._open is batch:
            self._open = None
        if batch.sent.done():
            return
        batch.sent.set_result(outcome)
        self._unsettled.discard(batch.sent)
        for waiter in batch.waiters:
            if not waiter.done():  # a cancelled caller's wait is done already
                waiter.set_result(outcome)
        if batch.unheard and isinstance(outcome, BaseException):
            log.warning(
                "group_commit_failed", name=self._name, unheard=batch.unheard, error_type=type(outcome).__name__
            )

    async def settled(self) -> None:
        """Returns once every batch open or on its way now has been answered or has failed: after it, nothing
        submitted before the call is still waiting here or on its way from here. (A call that failed on a timeout
        may still run in the store later, as any timed-out command may.)"""
        pending = list(self._unsettled)
        if pending:
            await asyncio.wait(pending)

    def _miscounted(self, results: list[ResultT], items: list[ItemT]) -> RuntimeError:
        return RuntimeError(f"{self._name}: {len(results)} results for {len(items)} calls")

    async def aclose(self) -> None:
        """Let calls on their way finish (shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _interrupted() -> RuntimeError:
    return RuntimeError("the call was interrupted")


class ReleaseBatcher:
    """Lease releases of concurrent requests go to the store together (see GroupCommit). ``release`` still returns
    only once its own token is released, so a caller can rely on the slot being free.

    Why: the release was one of three Redis commands on a cached answer's path."""

    def __init__(self, send: Callable[[list[str]], Awaitable[None]]) -> None:
        async def send_all(tokens: list[str]) -> list[None]:
            await send(tokens)
            return [None] * len(tokens)

        self._commit: GroupCommit[str, None] = GroupCommit(send_all, name="ratelimit-release")

    async def release(self, token: str) -> None:
        await self._commit.submit(token)

    def release_soon(self, token: str) -> None:
        """Into the next release batch, without waiting for Redis to confirm it (see Lease.let_go)."""
        self._commit.submit_soon(token)

    async def aclose(self) -> None:
        await self._commit.aclose()
