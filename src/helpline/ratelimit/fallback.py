"""Redis first, the in-process limiter when Redis is down or slow: never a 500, never silently unlimited.

While Redis is unreachable each replica enforces the same policies on its own (so N replicas admit up to N times
the limit). That is logged once per outage (warning on the way down, info on recovery) and counted in ``stats``,
and ``Decision.backend`` says ``memory-fallback`` on every request decided that way.

A small breaker keeps the outage cheap: after a failure Redis is skipped for ``cooldown_s``; then one request at a
time probes it (bounded by ``timeout_s``) while the others keep using the fallback, so an outage costs at most one
timeout per cooldown rather than one per request.

A slow answer is not always a slow Redis: when ``timeout_s`` passes while our own event loop was running late, the
same call is given up to ``overload_timeout_s`` more (helpline/overload.py); tripping then would hand decisions to
N per-replica limiters exactly when a burst makes them overshoot.

The deadline is per admission call, not per request: concurrent requests share one Redis call (GroupCommit in
ratelimit/redis.py), and the wrapper bounds that call (``RedisLimiter.bound_admissions``). A request waits at most
the limiter's stall (20 ms, for the call before its own) beyond its call's deadline. A deadline of its own (a task,
a timer and a shield per request) cost more CPU than the request's share of the script.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import structlog
from redis.exceptions import RedisError

from helpline.overload import LoopLag, patiently
from helpline.ratelimit.base import Decision
from helpline.ratelimit.memory import MemoryLimiter
from helpline.ratelimit.policies import Tier
from helpline.ratelimit.redis import RedisLimiter

log = structlog.get_logger(__name__)

# What "Redis did not answer" looks like from redis-py and asyncio; anything else is a bug and propagates.
REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
T = TypeVar("T")


class FallbackLimiter:
    def __init__(
        self,
        primary: RedisLimiter,
        fallback: MemoryLimiter,
        *,
        timeout_s: float = 0.5,
        overload_timeout_s: float = 3.0,
        cooldown_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self._timeout_s = timeout_s
        self._overload_timeout_s = overload_timeout_s
        self._lag = LoopLag()
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._on_fallback = on_fallback
        self._down_until: float | None = None
        self._probing = False
        self.redis_failures = 0
        self.fallback_decisions = 0
        self.overload_waits = 0  # slow answers waited for because our own loop was late
        primary.bound_admissions(self._patiently)

    @property
    def backend(self) -> str:
        return "memory-fallback" if self.degraded else self.primary.backend

    @property
    def degraded(self) -> bool:
        return self._down_until is not None

    async def acquire(self, tiers: Sequence[Tier], *, lease: bool = True) -> Decision:
        if self._may_try_primary():
            probing = self.degraded
            self._probing = probing
            try:
                decision = await self.primary.acquire(tiers, lease=lease)  # each batch bounded by _patiently
            except REDIS_FAILURES as error:
                self._trip(error)
            except Exception as error:
                log.exception("ratelimit_redis_client_error", error_type=type(error).__name__)
                self._trip(error)
            else:
                self._recovered()
                return decision
            finally:
                if probing:
                    self._probing = False
        self.fallback_decisions += 1
        if self._on_fallback is not None:
            self._on_fallback()
        return await self.fallback.acquire(tiers, lease=lease)

    async def _patiently(self, work: Coroutine[Any, Any, T]) -> T:
        """The outcome of one admission call (a batch of requests) within ``timeout_s``, or within
        ``overload_timeout_s`` more if our loop ran late; otherwise TimeoutError. A call given up on is left to
        finish (see :func:`helpline.overload.patiently`); the lease it may take is given back after it
        (RedisLimiter._give_back_later)."""
        return await patiently(
            work, self._lag, timeout_s=self._timeout_s, overload_timeout_s=self._overload_timeout_s,
            on_overload=self._overloaded,
        )  # fmt: skip

    def _overloaded(self) -> None:
        self.overload_waits += 1

    async def warm_up(self, timeout_s: float = 3.0) -> None:
        """Connect before serving; a Redis that is down at start is logged and the replica starts on the fallback."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.primary.warm_up()
        except Exception as error:  # noqa: BLE001 - any failure here means "start degraded", never "do not start"
            self._trip(error)

    def _may_try_primary(self) -> bool:
        if self._down_until is None:
            return True
        return not self._probing and self._clock() >= self._down_until

    def _trip(self, error: BaseException) -> None:
        self.redis_failures += 1
        if self._down_until is None:
            log.warning(
                "ratelimit_redis_unavailable",
                error_type=type(error).__name__,
                fallback="in-process limiter per replica",
            )
        self._down_until = self._clock() + self._cooldown_s

    def _recovered(self) -> None:
        if self._down_until is not None:
            log.info("ratelimit_redis_recovered", fallback_decisions=self.fallback_decisions)
            self._down_until = None

    async def aclose(self) -> None:
        await self.fallback.aclose()
        await self.primary.aclose()  # its last admissions may still start the heartbeat: stop it after them
        self._lag.stop()

    def stats(self) -> dict[str, int | str | bool]:
        return {
            "backend": self.backend,
            "degraded": self.degraded,
            "redis_failures": self.redis_failures,
            "fallback_decisions": self.fallback_decisions,
            "overload_waits": self.overload_waits,
            "leases_held_here": len(self.primary.keeper.held) + len(self.fallback.keeper.held),
        }
