"""The in-process limiter: the embedded default, and the per-replica fallback while Redis is unreachable.

Exact within one process because ``acquire`` never awaits between checking and charging (one event loop, no
threads touch it). Same sliding-window-log and lease semantics as the Redis script (see ratelimit/base.py).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence

from helpline.ratelimit.base import CONCURRENCY, Decision, Lease, LeaseKeeper, TierState
from helpline.ratelimit.policies import Tier

SWEEP_EVERY_S = 60.0


class _Window:
    """Admission times (seconds) of one key, oldest first."""

    __slots__ = ("stamps", "window_s")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.stamps: deque[float] = deque()

    def purge(self, now: float) -> None:
        horizon = now - self.window_s
        while self.stamps and self.stamps[0] <= horizon:
            self.stamps.popleft()

    def reset_s(self, now: float) -> float:
        return self.stamps[0] + self.window_s - now if self.stamps else 0.0


class MemoryLimiter:
    def __init__(
        self,
        max_concurrent: int,
        *,
        lease_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        backend: str = "memory",
    ) -> None:
        self.backend = backend
        self._max_concurrent = max_concurrent
        self._lease_ttl_s = lease_ttl_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._leases: dict[str, float] = {}  # token -> expiry
        self._serials = itertools.count()
        self._last_sweep = clock()
        self.keeper = LeaseKeeper(self._renew, lease_ttl_s)

    async def acquire(self, tiers: Sequence[Tier], *, lease: bool = True) -> Decision:
        now = self._clock()
        self._sweep(now)
        windows = [self._window(tier, now) for tier in tiers]
        in_flight = self._in_flight(now) if lease else 0
        states, refused_by, retry_after_s = _evaluate(tiers, windows, now)
        if lease and in_flight >= self._max_concurrent:
            # A caller over its own quota hears that (429) even when the service is also full.
            refused_by, retry_after_s = refused_by or CONCURRENCY, max(retry_after_s, 1.0)
        if refused_by is not None:
            return Decision(False, states, refused_by, retry_after_s, backend=self.backend, in_flight=in_flight)
        for window in windows:
            window.stamps.append(now)
        return Decision(
            True,
            tuple(_charged(state, tier) for state, tier in zip(states, tiers, strict=True)),
            lease=self._lease(now) if lease else None,
            backend=self.backend,
            in_flight=in_flight + int(lease),
        )

    def _window(self, tier: Tier, now: float) -> _Window:
        window = self._windows.get(tier.key)
        if window is None:
            window = self._windows[tier.key] = _Window(tier.rate.window_s)
        window.window_s = tier.rate.window_s
        window.purge(now)
        return window

    def _in_flight(self, now: float) -> int:
        if len(self._leases) >= self._max_concurrent:
            # Only worth the scan when the cap would refuse: expired (unrenewed) leases give their slot back.
            for token in [token for token, expiry in self._leases.items() if expiry <= now]:
                del self._leases[token]
        return len(self._leases)

    def _lease(self, now: float) -> Lease:
        token = f"{next(self._serials):x}"  # unique in this limiter, all a token must be (it never leaves the process)
        self._leases[token] = now + self._lease_ttl_s
        self.keeper.hold(token)
        return Lease(token, self._release, self._let_go)

    async def _release(self, token: str) -> None:
        self._let_go(token)

    def _let_go(self, token: str) -> None:
        self.keeper.drop(token)
        self._leases.pop(token, None)

    async def _renew(self, tokens: list[str]) -> None:
        expiry = self._clock() + self._lease_ttl_s
        for token in tokens:
            if token in self._leases:
                self._leases[token] = expiry

    def _sweep(self, now: float) -> None:
        """Forget idle keys once a minute, so a stream of one-off addresses cannot grow memory without bound."""
        if now - self._last_sweep < SWEEP_EVERY_S:
            return
        self._last_sweep = now
        for key in [key for key, window in self._windows.items() if _idle(window, now)]:
            del self._windows[key]

    async def warm_up(self) -> None:
        """Nothing to connect to."""

    async def aclose(self) -> None:
        await self.keeper.stop()

    def stats(self) -> dict[str, int | str | bool]:
        return {"backend": self.backend, "keys": len(self._windows), "leases": len(self._leases)}


def _idle(window: _Window, now: float) -> bool:
    return not window.stamps or window.stamps[-1] <= now - window.window_s


def _evaluate(
    tiers: Sequence[Tier], windows: Sequence[_Window], now: float
) -> tuple[tuple[TierState, ...], str | None, float]:
    """Every tier's state before charging; the first refusing tier, and how long until all refusing tiers admit."""
    states: list[TierState] = []
    refused_by: str | None = None
    retry_after_s = 0.0
    for tier, window in zip(tiers, windows, strict=True):
        count = len(window.stamps)
        reset_s = window.reset_s(now)
        states.append(TierState(tier.name, tier.rate.limit, max(0, tier.rate.limit - count), reset_s))
        if count >= tier.rate.limit:
            refused_by = refused_by or tier.name
            retry_after_s = max(retry_after_s, reset_s)
    return tuple(states), refused_by, retry_after_s


def _charged(state: TierState, tier: Tier) -> TierState:
    """The state after this request was logged: one fewer left; an empty window now resets a full window away."""
    reset_s = state.reset_s if state.remaining < tier.rate.limit else float(tier.rate.window_s)
    return TierState(state.name, state.limit, max(0, state.remaining - 1), reset_s)
