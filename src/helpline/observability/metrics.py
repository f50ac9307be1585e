"""Every Helpline metric, in one module (prometheus-client), and the functions the rest of the code calls.

Metrics are process-wide by Prometheus's design (one registry per process; in multi-process mode one file per
worker), so they live at module level here rather than on the app's services. Each ``record_*``/``observe_*``/
``set_*`` function also feeds the in-app alert window (``observability.alerts``), so Prometheus and the in-app
evaluator always see the same events.

Name, type, labels; what it means and who updates it:

- ``helpline_http_requests_total`` counter {route, method, status}: finished HTTP requests (access middleware).
  ``route`` is the template (``/v1/sessions/{session_id}/messages``), ``unmatched`` for unknown paths.
- ``helpline_http_request_duration_seconds`` histogram {route}: whole-request latency (access middleware).
- ``helpline_http_requests_in_flight`` gauge: requests being served now, summed over workers (access middleware).
- ``helpline_reply_latency_seconds`` histogram {provider, cache}: latency of successful chat replies; buckets
  ``alerts.REPLY_LATENCY_BUCKETS`` (access middleware, from ``annotate(provider=..., cache=...)``).
- ``helpline_cache_lookups_total`` counter {tier}: answer-cache outcome per reply, ``exact``/``semantic``/``miss``
  (access middleware, from ``annotate(cache=...)``).
- ``helpline_tokens_total`` counter {provider, direction}: tokens sent (``in``) and received (``out``)
  (access middleware, from ``annotate(tokens_in=..., tokens_out=...)``).
- ``helpline_cost_usd_total`` counter {provider}: provider spend (access middleware, from ``annotate(cost_usd=...)``).
- ``helpline_provider_calls_total`` counter {provider}: calls made to a provider (``record_provider_call``).
- ``helpline_provider_errors_total`` counter {provider, error}: failed calls; ``error`` is the class name from
  providers.base's error tree (``record_provider_call(name, error=exc)``).
- ``helpline_provider_up`` gauge {provider}: 1 when the last health check passed, else 0; max over workers
  (``set_provider_up``).
- ``helpline_provider_breaker_state`` gauge {provider}: 0 closed, 1 half-open, 2 open; max over workers
  (``set_breaker_state``).
- ``helpline_ratelimit_refusals_total`` counter {tier}: requests the limiter refused, by tier (``ip``, ``user``,
  ``concurrency``, ...) (``record_ratelimit_refusal``).
- ``helpline_conversation_write_failures_total`` counter: conversation records that could not be written
  (``record_conversation_write_failure``).
- ``helpline_conversation_write_backlog`` gauge: conversation records accepted and not yet written, the largest of a
  replica's worker processes (each process's own, as its in-app alert sees it); ``set_conversation_backlog``, by
  the write-behind writer every second.
- ``helpline_redis_fallback_total`` counter {component}: operations served by the in-process fallback because
  Redis was unreachable, ``cache`` or ``ratelimit`` (``record_redis_fallback``).

Request-scoped facts (provider, cache, tokens, cost) are *annotated*, not recorded: call
``observability.context.annotate(...)`` and the access middleware writes both the log line and these metrics,
so the two never disagree. Call the ``record_*``/``set_*`` functions for facts that are not one per request.

Multi-process: ``helpline serve --workers N`` calls ``prepare_multiprocess(N)`` before the workers start; it points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory, and ``render()`` then merges every worker's values.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from helpline.observability.alerts import BREAKER_STATES, REPLY_LATENCY_BUCKETS, WINDOW

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus-client picks file-backed values when the variable is set as it is imported, never later; the same
# decision, taken at the same moment, tells render() where this process's values are.
_MULTIPROC_DIR = os.environ.get(MULTIPROC_ENV) or None
CACHE_TIERS = ("exact", "semantic", "miss")
REDIS_COMPONENTS = ("cache", "ratelimit")
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = Counter("helpline_http_requests_total", "Finished HTTP requests.", ["route", "method", "status"])
HTTP_DURATION = Histogram(
    "helpline_http_request_duration_seconds", "Whole-request latency.", ["route"], buckets=_HTTP_BUCKETS
)
IN_FLIGHT = Gauge("helpline_http_requests_in_flight", "Requests being served.", multiprocess_mode="livesum")
REPLY_LATENCY = Histogram(
    "helpline_reply_latency_seconds",
    "Latency of successful chat replies.",
    ["provider", "cache"],
    buckets=REPLY_LATENCY_BUCKETS,
)
CACHE_LOOKUPS = Counter("helpline_cache_lookups_total", "Answer-cache outcome per reply.", ["tier"])
TOKENS = Counter("helpline_tokens_total", "Provider tokens, in and out.", ["provider", "direction"])
COST = Counter("helpline_cost_usd_total", "Provider spend in US dollars.", ["provider"])
PROVIDER_CALLS = Counter("helpline_provider_calls_total", "Calls made to a provider.", ["provider"])
PROVIDER_ERRORS = Counter("helpline_provider_errors_total", "Failed provider calls.", ["provider", "error"])
PROVIDER_UP = Gauge(
    "helpline_provider_up", "1 when the provider's health check passes.", ["provider"], multiprocess_mode="livemax"
)
BREAKER_STATE = Gauge(
    "helpline_provider_breaker_state",
    "Circuit breaker: 0 closed, 1 half-open, 2 open.",
    ["provider"],
    multiprocess_mode="livemax",
)
RATELIMIT_REFUSALS = Counter("helpline_ratelimit_refusals_total", "Requests refused by the limiter.", ["tier"])
CONVERSATION_WRITE_FAILURES = Counter(
    "helpline_conversation_write_failures_total", "Conversation records that could not be written."
)
CACHE_READS_HELD = Gauge(
    "helpline_cache_reads_held",
    "1 while no cached answer is served: a knowledge change's removal from the cache store is not confirmed yet.",
    multiprocess_mode="livemax",
)
CONVERSATION_BACKLOG = Gauge(
    "helpline_conversation_write_backlog",
    "Conversation records accepted and not yet written (the largest of the worker processes).",
    multiprocess_mode="livemax",
)
REDIS_FALLBACKS = Counter(
    "helpline_redis_fallback_total", "Operations served by the in-process fallback.", ["component"]
)

# Export zeros from the start: increase()/rate() cannot see the first event of a series that appears with it.
for _tier in CACHE_TIERS:
    CACHE_LOOKUPS.labels(_tier)
for _component in REDIS_COMPONENTS:
    REDIS_FALLBACKS.labels(_component)


@lru_cache(maxsize=4096)
def _child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, remembered: prometheus-client validates and looks the labels up under a lock on
    every call, several times per request on the hot path. Children live as long as their metric (nothing here
    removes label sets), and every label here is bounded, so the memo is too."""
    return metric.labels(*values)


def observe_http_request(route: str, method: str, status: int, seconds: float) -> None:
    """One finished HTTP request (the access middleware calls this)."""
    method = method if method in _HTTP_METHODS else "OTHER"  # a bounded label, whatever clients send
    _child(HTTP_REQUESTS, route, method, str(status)).inc()
    _child(HTTP_DURATION, route).observe(seconds)
    WINDOW.record_request(status)


@contextmanager
def in_flight() -> Iterator[None]:
    """Counts the request as in flight while the block runs."""
    IN_FLIGHT.inc()
    try:
        yield
    finally:
        IN_FLIGHT.dec()


def observe_reply(provider: str, cache: str, seconds: float) -> None:
    """A successful chat reply's latency (the access middleware calls this from the request's annotations)."""
    _child(REPLY_LATENCY, provider, cache).observe(seconds)
    WINDOW.record_reply_latency(seconds)


def record_cache_lookup(tier: str) -> None:
    """The answer cache's outcome for one reply: ``exact``, ``semantic`` or ``miss``."""
    _child(CACHE_LOOKUPS, tier).inc()
    WINDOW.record_cache_lookup(tier)


def record_usage(provider: str, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
    """Tokens and money one reply used."""
    if tokens_in > 0:
        _child(TOKENS, provider, "in").inc(tokens_in)
    if tokens_out > 0:
        _child(TOKENS, provider, "out").inc(tokens_out)
    if cost_usd > 0:
        _child(COST, provider).inc(cost_usd)


def record_provider_call(provider: str, error: BaseException | str | None = None) -> None:
    """One call to a provider; pass the exception (or its class name) when it failed."""
    _child(PROVIDER_CALLS, provider).inc()
    if error is not None:
        name = error if isinstance(error, str) else type(error).__name__
        PROVIDER_ERRORS.labels(provider, name).inc()


def set_provider_up(provider: str, up: bool) -> None:
    """The result of a provider's latest health check."""
    PROVIDER_UP.labels(provider).set(1 if up else 0)
    WINDOW.set_provider_up(provider, 1.0 if up else 0.0)


def set_breaker_state(provider: str, state: str) -> None:
    """A breaker's new state: ``closed``, ``half_open`` or ``open`` (providers.breaker's names)."""
    value = BREAKER_STATES[state]
    BREAKER_STATE.labels(provider).set(value)
    WINDOW.set_breaker_state(provider, value)


def record_ratelimit_refusal(tier: str) -> None:
    """One request refused by the limiter at ``tier`` (``ip``, ``user``, ``concurrency``, ...)."""
    RATELIMIT_REFUSALS.labels(tier).inc()


def record_conversation_write_failure(count: int = 1) -> None:
    """A write of conversation records failed (one per failed attempt; the writer retries it, nothing is dropped)."""
    CONVERSATION_WRITE_FAILURES.inc(count)
    WINDOW.record_write_failures(count)


def set_conversation_backlog(records: int) -> None:
    """Conversation records accepted and not yet written, in this process."""
    CONVERSATION_BACKLOG.set(records)
    WINDOW.set_conversation_backlog(records)


def record_cache_reads_held(held: bool) -> None:
    CACHE_READS_HELD.set(1 if held else 0)


def record_redis_fallback(component: str) -> None:
    """Redis was unreachable and ``component`` (``cache`` or ``ratelimit``) used its in-process fallback."""
    REDIS_FALLBACKS.labels(component).inc()
    WINDOW.record_redis_fallback(component)


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition and its content type; merges all workers in multi-process mode."""
    if _MULTIPROC_DIR:
        forget_dead_workers(_MULTIPROC_DIR)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=_MULTIPROC_DIR)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def prepare_multiprocess(workers: int) -> Path | None:
    """Before the workers start: a fresh PROMETHEUS_MULTIPROC_DIR they inherit when there are several.

    One worker needs none. A directory the operator set is kept (whatever the worker count) but emptied of
    earlier runs' files, which would otherwise be summed in.
    A directory made here is removed when the serving process exits.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        return directory
    if workers <= 1:
        return None
    directory = Path(tempfile.mkdtemp(prefix="helpline-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    atexit.register(_remove_tree, directory)
    return directory


def mark_worker_dead(pid: int | None = None) -> None:
    """Drop an exiting worker's live gauges (in-flight, provider up, breaker) so they stop being summed in."""
    if _MULTIPROC_DIR:
        multiprocess.mark_process_dead(os.getpid() if pid is None else pid, _MULTIPROC_DIR)  # type: ignore[no-untyped-call]


def forget_dead_workers(directory: str | Path) -> None:
    """Drop the live gauges of workers that are gone without their exit handler: killed outright (the OOM killer,
    SIGKILL), a worker's last in-flight count or conversation backlog would otherwise count for good, and a
    backlog is high exactly when memory is. Checked at each scrape (a directory listing)."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(directory))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _remove_tree(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


if _MULTIPROC_DIR:
    # A worker of a multi-process server: its live gauges must not outlive it. Spawned workers exit through
    # sys.exit, so atexit runs on a graceful stop.
    atexit.register(mark_worker_dead)
