"""A circuit breaker over a sliding window: closed → open → half-open with a single probe → closed.

Opens when ``failures`` failures fall inside ``window_s``. While open, requests skip the provider at no cost.
It turns half-open after ``open_s`` or as soon as a background health check succeeds; then exactly one request
is let through as a probe: success closes the breaker, failure opens it again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self, failures: int, window_s: float, open_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = failures
        self._window_s = window_s
        self._open_s = open_s
        self._clock = clock
        self._failures: deque[float] = deque()
        self._opened_at = 0.0
        self._probe_out = False
        self.state: State = "closed"

    def allow(self) -> bool:
        """May a request go to this provider now? In half-open, only one probe at a time."""
        if self.state == "open" and self._clock() - self._opened_at >= self._open_s:
            self.state = "half_open"
            self._probe_out = False
        if self.state == "closed":
            return True
        if self.state == "half_open" and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def record_success(self) -> None:
        self.state = "closed"
        self._failures.clear()
        self._probe_out = False

    def record_failure(self) -> None:
        now = self._clock()
        if self.state == "half_open":
            self._open(now)
            return
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self._window_s:
            self._failures.popleft()
        if len(self._failures) >= self._threshold:
            self._open(now)

    def release_probe(self) -> None:
        """The probe ended with neither success nor failure (abandoned): the next request may probe. Without this,
        a half-open breaker whose probe was abandoned let nothing through again, ever."""
        if self.state == "half_open":
            self._probe_out = False

    def health_ok(self) -> None:
        """A cheap health check passed: let the next request probe."""
        if self.state == "open":
            self.state = "half_open"
            self._probe_out = False

    def _open(self, now: float) -> None:
        self.state = "open"
        self._opened_at = now
        self._probe_out = False
        self._failures.clear()
