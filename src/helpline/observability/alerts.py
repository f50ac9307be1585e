"""The alert rules of ``deploy/prometheus/alerts.yml``, evaluated in-process over a recent window.

Why in-process too: the embedded default (one process, no Prometheus) should still warn an operator, on
``/v1/admin/stats`` and the dashboard, when replies fail, slow down or the cache stops hitting. The rules here are
the same expressions as the Prometheus file, computed the same way (window sums, the ``histogram_quantile``
interpolation over the same buckets, ``for`` checked at one-minute steps), and a test feeds both the same
synthetic series and requires the same verdicts (tests/observability/test_alert_agreement.py).

The window is a ring of 10-second buckets of counts plus the history of each gauge, not a list of requests, so its
memory is bounded whatever the traffic. Everything is fed by the functions in ``metrics`` (one call site per
fact), so Prometheus and the in-app evaluator always see the same events. With several worker processes each
process evaluates its own traffic (Prometheus sees them all).

Call ``evaluate_alerts()`` (or ``alert_report()`` for JSON) from the admin stats endpoint and the dashboard.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

# Upper bounds of the reply latency histogram, in seconds; metrics.py uses the same tuple so the in-app p95 and
# Prometheus's histogram_quantile interpolate inside the same buckets. 5 s is a bound because an alert tests it.
REPLY_LATENCY_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0)
BREAKER_STATES: dict[str, float] = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
BACKLOG_ALERT_RECORDS = 5000  # conversation records waiting to be written, in one process
STEP_S = 60  # Prometheus's evaluation interval: ``for`` is checked at these steps
HORIZON_S = 40 * 60  # longest window (15 min) + longest ``for`` (15 min) + margin

LabelSet = tuple[tuple[str, str], ...]
Verdict = dict[LabelSet, float]  # label set → the expression's value, only where the condition holds


def _bound_key(bound: float) -> str:
    return "reply:le:+Inf" if math.isinf(bound) else f"reply:le:{bound:g}"


# The key of each bucket, and the +Inf bucket's last: index bisect_left(REPLY_LATENCY_BUCKETS, seconds).
_BOUND_KEYS = (*(_bound_key(bound) for bound in REPLY_LATENCY_BUCKETS), _bound_key(math.inf))


class AlertWindow:
    """Recent counts in fixed-width time buckets, and each gauge's value changes, over ``horizon_s``."""

    def __init__(self, bucket_s: int = 10, horizon_s: int = HORIZON_S, clock: Callable[[], float] = time.time) -> None:
        self.bucket_s = bucket_s
        self.clock = clock
        self._keep = horizon_s // bucket_s + 1
        self._buckets: dict[int, defaultdict[str, float]] = {}
        self._gauges: dict[str, list[tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def add(self, key: str, amount: float = 1.0, ts: float | None = None) -> None:
        """Count ``amount`` of ``key`` at ``ts`` (now by default)."""
        self.add_each((key,), amount, ts)

    def add_each(self, keys: tuple[str, ...], amount: float = 1.0, ts: float | None = None) -> None:
        """Count ``amount`` of each of ``keys`` at ``ts``: one clock read and one lock for facts of one event."""
        index = int((self.clock() if ts is None else ts) // self.bucket_s)
        with self._lock:
            bucket = self._buckets.get(index)
            if bucket is None:
                bucket = self._buckets[index] = defaultdict(float)
                self._prune(index)
            for key in keys:
                bucket[key] += amount

    # --- the facts the rules read; metrics.py and the agreement test both record through these -----------------

    def record_request(self, status: int, count: float = 1.0, ts: float | None = None) -> None:
        self.add("http:total", count, ts)
        if status >= 500:
            self.add("http:5xx", count, ts)

    def record_reply_latency(self, seconds: float, count: float = 1.0, ts: float | None = None) -> None:
        """Reply latencies, counted into the first histogram bucket whose upper bound holds them."""
        self.add(_BOUND_KEYS[bisect.bisect_left(REPLY_LATENCY_BUCKETS, seconds)], count, ts)

    def record_cache_lookup(self, tier: str, count: float = 1.0, ts: float | None = None) -> None:
        self.add_each(("cache:total", f"cache:{tier}"), count, ts)

    def record_write_failures(self, count: float = 1.0, ts: float | None = None) -> None:
        self.add("conversation_write_failures", count, ts)

    def record_redis_fallback(self, component: str, count: float = 1.0, ts: float | None = None) -> None:
        self.add(f"redis_fallback:{component}", count, ts)

    def set_provider_up(self, provider: str, up: float, ts: float | None = None) -> None:
        self.set_gauge(f"provider_up:{provider}", up, ts)

    def set_breaker_state(self, provider: str, value: float, ts: float | None = None) -> None:
        self.set_gauge(f"breaker:{provider}", value, ts)

    def set_conversation_backlog(self, records: float, ts: float | None = None) -> None:
        self.set_gauge("conversation_backlog", records, ts)

    # --- storage -------------------------------------------------------------------------------------------------

    def set_gauge(self, key: str, value: float, ts: float | None = None) -> None:
        """Record a gauge value from ``ts`` on; repeats of the current value are not stored."""
        moment = self.clock() if ts is None else ts
        with self._lock:
            history = self._gauges.setdefault(key, [])
            if not history or history[-1][1] != value:
                history.append((moment, value))
            # Keep the newest change older than the horizon: it is still the value at the horizon's start.
            horizon = moment - self._keep * self.bucket_s
            while len(history) > 1 and history[1][0] <= horizon:
                history.pop(0)

    def total(self, key: str, at: float, range_s: float) -> float:
        """Sum of ``key`` over the buckets that overlap ``(at - range_s, at]``, like ``increase(x[range])``."""
        first = int((at - range_s) // self.bucket_s)
        last = int(at // self.bucket_s)
        with self._lock:
            return float(sum(self._buckets[i].get(key, 0.0) for i in range(first, last + 1) if i in self._buckets))

    def keys(self, prefix: str) -> set[str]:
        """Counter and gauge keys seen with this prefix (the label values a rule iterates over)."""
        with self._lock:
            found = {key for bucket in self._buckets.values() for key in bucket if key.startswith(prefix)}
            return found | {key for key in self._gauges if key.startswith(prefix)}

    def gauge_at(self, key: str, at: float) -> float | None:
        """The gauge's value at ``at``: the last change at or before it (None before the first)."""
        with self._lock:
            value: float | None = None
            for moment, recorded in self._gauges.get(key, []):
                if moment > at:
                    break
                value = recorded
            return value

    def _prune(self, newest: int) -> None:
        for index in [i for i in self._buckets if i <= newest - self._keep]:
            del self._buckets[index]


def histogram_quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float | None:
    """Prometheus's bucketQuantile: linear interpolation inside the bucket holding rank q; None where it gives NaN.

    ``bounds`` ends with +Inf and ``cumulative`` holds the cumulative counts of each bucket.
    """
    if len(bounds) < 2 or not cumulative or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    index = next(i for i, count in enumerate(cumulative) if count >= rank)
    if index == len(bounds) - 1:
        return bounds[-2]
    start, count = 0.0, cumulative[index]
    if index > 0:
        start = bounds[index - 1]
        count -= cumulative[index - 1]
        rank -= cumulative[index - 1]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    return start + (bounds[index] - start) * (rank / count)


def reply_p95(window: AlertWindow, at: float, range_s: float = 300) -> float | None:
    """The 95th percentile of reply latency over the range, as ``histogram_quantile(0.95, ...)`` computes it."""
    bounds = [*REPLY_LATENCY_BUCKETS, math.inf]
    running, cumulative = 0.0, []
    for bound in bounds:
        running += window.total(_bound_key(bound), at, range_s)
        cumulative.append(running)
    return histogram_quantile(0.95, bounds, cumulative)


# --- the rules: each returns the label sets for which its condition holds at ``at`` ------------------------------


def _high_error_rate(window: AlertWindow, at: float) -> Verdict:
    total = window.total("http:total", at, 300)
    errors = window.total("http:5xx", at, 300)
    return {(): errors / total} if total >= 20 and errors / total > 0.05 else {}


def _slow_replies(window: AlertWindow, at: float) -> Verdict:
    p95 = reply_p95(window, at)
    return {(): p95} if p95 is not None and p95 > 5 else {}


def _cache_miss_rate(window: AlertWindow, at: float) -> Verdict:
    total = window.total("cache:total", at, 900)
    misses = window.total("cache:miss", at, 900)
    return {(): misses / total} if total >= 20 and misses / total > 0.4 else {}


def _ollama_down(window: AlertWindow, at: float) -> Verdict:
    up = window.gauge_at("provider_up:ollama", at)
    return {(): up} if up is not None and up == 0 else {}


def _breaker_open(window: AlertWindow, at: float) -> Verdict:
    verdict: Verdict = {}
    for key in window.keys("breaker:"):
        state = window.gauge_at(key, at)
        if state is not None and state >= BREAKER_STATES["open"]:
            verdict[(("provider", key.removeprefix("breaker:")),)] = state
    return verdict


def _cache_store_down(window: AlertWindow, at: float) -> Verdict:
    verdict: Verdict = {}
    for key in window.keys("redis_fallback:"):
        events = window.total(key, at, 300)
        if events > 0:
            verdict[(("component", key.removeprefix("redis_fallback:")),)] = events
    return verdict


def _write_failures(window: AlertWindow, at: float) -> Verdict:
    failures = window.total("conversation_write_failures", at, 600)
    return {(): failures} if failures > 0 else {}


def _write_backlog(window: AlertWindow, at: float) -> Verdict:
    records = window.gauge_at("conversation_backlog", at)
    return {(): records} if records is not None and records > BACKLOG_ALERT_RECORDS else {}


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One rule; name, severity, ``for`` and the annotations match deploy/prometheus/alerts.yml (a test checks)."""

    name: str
    severity: Literal["critical", "warning"]
    for_s: int
    summary: str
    runbook: str
    condition: Callable[[AlertWindow, float], Verdict] = field(repr=False)


RULES: tuple[AlertRule, ...] = (
    AlertRule(
        "HelplineHighErrorRate", "critical", 300,
        "More than 5% of API requests failed with 5xx over 5 minutes",
        "Read the error-level request lines by route; check /readyz (database, providers) and recent deploys; "
        "roll back with the deploy workflow if a release caused it.",
        _high_error_rate,
    ),
    AlertRule(
        "HelplineSlowReplies", "warning", 300,
        "p95 reply latency is above 5 seconds",
        "Split helpline_reply_latency_seconds by provider and cache: a slow provider should be hedged or its "
        "breaker open; check Ollama/Gemini latency, database latency and CPU saturation.",
        _slow_replies,
    ),
    AlertRule(
        "HelplineCacheMissRateHigh", "warning", 900,
        "The answer cache misses more than 40% of lookups",
        "Check the cache store (HelplineCacheStoreDown), a recent mass invalidation or knowledge upload, "
        "and CACHE_TTL_S; run `helpline cache warm` after large knowledge changes.",
        _cache_miss_rate,
    ),
    AlertRule(
        "HelplineOllamaDown", "critical", 120,
        "The Ollama provider fails its health check",
        "Check the ollama container/service and that the model is pulled (`ollama list`); replies fall back "
        "to the next provider meanwhile.",
        _ollama_down,
    ),
    AlertRule(
        "HelplineProviderBreakerOpen", "warning", 120,
        "A provider's circuit breaker has stayed open",
        "Look at helpline_provider_errors_total by error for that provider (auth, rate limit, timeout) and "
        "fix the cause; the breaker closes by itself after a successful probe.",
        _breaker_open,
    ),
    AlertRule(
        "HelplineCacheStoreDown", "critical", 0,
        "Redis is unreachable: a component is running on its in-process fallback",
        "Check the redis service and HELPLINE_REDIS_URL; until it is back, cached answers and rate limits are "
        "per replica, so limits are looser by the replica count.",
        _cache_store_down,
    ),
    AlertRule(
        "HelplineConversationWriteFailures", "critical", 0,
        "Conversation records failed to be written",
        "Check database health, disk space and connection limits; the writer retries each failed batch until it "
        "is written (nothing is dropped) and holds the records in memory meanwhile, where a crash loses them "
        "(see HelplineConversationBacklog).",
        _write_failures,
    ),
    AlertRule(
        "HelplineConversationBacklog", "warning", 300,
        "Conversation records are waiting to be written",
        "The database is slow or down (see HelplineConversationWriteFailures) or cannot keep up with the traffic; "
        "the records wait in memory, where a crash loses them. Check database latency, locks and disk; on the "
        "embedded SQLite store, move this traffic to PostgreSQL or MariaDB.",
        _write_backlog,
    ),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AlertStatus:
    """A rule's state now: ``ok``, ``pending`` (condition holds, ``for`` not yet met) or ``firing``."""

    name: str
    severity: str
    state: Literal["ok", "pending", "firing"]
    summary: str
    runbook: str
    firing: tuple[tuple[LabelSet, float], ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "severity": self.severity,
            "state": self.state,
            "summary": self.summary,
            "runbook": self.runbook,
            "firing": [{"labels": dict(labels), "value": value} for labels, value in self.firing],
        }


def evaluate_rule(rule: AlertRule, window: AlertWindow, now: float, step_s: int = STEP_S) -> AlertStatus:
    """Firing when the condition held at every evaluation step from ``now - for`` to ``now``, like Prometheus."""
    current = rule.condition(window, now)
    held = dict(current)
    for step in range(1, rule.for_s // step_s + 1):
        earlier = rule.condition(window, now - step * step_s)
        held = {labels: value for labels, value in held.items() if labels in earlier}
        if not held:
            break
    state: Literal["ok", "pending", "firing"] = "firing" if held else ("pending" if current else "ok")
    return AlertStatus(rule.name, rule.severity, state, rule.summary, rule.runbook, tuple(sorted(held.items())))


WINDOW = AlertWindow()  # the process's window, fed by observability.metrics


def evaluate_alerts(window: AlertWindow | None = None, now: float | None = None) -> list[AlertStatus]:
    """Every rule's state over the process's recent window (or the given one, at the given time)."""
    source = WINDOW if window is None else window
    moment = source.clock() if now is None else now
    return [evaluate_rule(rule, source, moment) for rule in RULES]


def alert_report(now: float | None = None) -> list[dict[str, object]]:
    """JSON-ready states for ``/v1/admin/stats`` and the dashboard."""
    return [status.as_dict() for status in evaluate_alerts(now=now)]
