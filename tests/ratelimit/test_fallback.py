"""Redis down, black-holed or slow: requests are still decided, by the in-process limiter, quickly, and it is said.

Redis faults come from the shared TCP fault proxy (tests/fakes/tcp_proxy.py) in front of the real Redis.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from helpline.ratelimit.fallback import FallbackLimiter
from helpline.ratelimit.memory import MemoryLimiter
from helpline.ratelimit.policies import Rate, Tier
from helpline.ratelimit.redis import RedisLimiter
from helpline.ratelimit.service import OVERLOAD_TIMEOUT_S
from helpline.redisconn import create_redis, split_cluster_url
from tests.fakes.servers import refused_url
from tests.fakes.tcp_proxy import TcpProxy
from tests.ratelimit.conftest import REDIS_URL, delete_prefix, unique_prefix

IP = Tier("ip", "ip:198.51.100.7", Rate(5, 60))
EXTRA_LATENCY_BUDGET_S = 1.0


def fallback_limiter(url: str, *, cooldown_s: float = 2.0) -> FallbackLimiter:
    primary = RedisLimiter(create_redis(url), 100, prefix=unique_prefix())
    return FallbackLimiter(primary, MemoryLimiter(100, backend="memory-fallback"), cooldown_s=cooldown_s)


@pytest.fixture
def redis_proxy() -> Iterator[TcpProxy]:
    host_port = REDIS_URL.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    with TcpProxy(host, int(port)) as proxy:
        yield proxy


async def timed_acquires(limiter: FallbackLimiter, count: int) -> tuple[list[bool], list[float]]:
    allowed, seconds = [], []
    for _ in range(count):
        started = time.perf_counter()
        decision = await limiter.acquire([IP])
        seconds.append(time.perf_counter() - started)
        allowed.append(decision.allowed)
        if decision.lease is not None:
            await decision.lease.release()
    return allowed, seconds


async def test_refused_port_falls_back_at_once_and_still_limits() -> None:
    limiter = fallback_limiter(refused_url("redis") + "/0")
    try:
        with capture_logs() as logs:
            allowed, seconds = await timed_acquires(limiter, 7)
        assert allowed == [True] * 5 + [False] * 2  # limited, not unlimited
        assert max(seconds) < EXTRA_LATENCY_BUDGET_S
        assert limiter.degraded
        assert limiter.backend == "memory-fallback"
        stats = limiter.stats()
        assert stats["fallback_decisions"] == 7
        assert int(stats["redis_failures"]) >= 1
        warnings = [entry for entry in logs if entry["event"] == "ratelimit_redis_unavailable"]
        assert len(warnings) == 1  # once per outage, not once per request
    finally:
        await limiter.aclose()


async def test_a_black_hole_costs_one_bounded_wait_then_nothing(redis_proxy: TcpProxy) -> None:
    limiter = fallback_limiter(f"redis://127.0.0.1:{redis_proxy.port}/0")
    try:
        assert (await limiter.acquire([IP])).backend == "redis"
        redis_proxy.blackhole()
        concurrent_started = time.perf_counter()
        burst = await asyncio.gather(*(limiter.acquire([IP]) for _ in range(20)))
        burst_seconds = time.perf_counter() - concurrent_started
        assert burst_seconds < EXTRA_LATENCY_BUDGET_S
        assert all(decision.backend == "memory-fallback" for decision in burst)
        assert sum(decision.allowed for decision in burst) == 5  # the fallback enforces the same policy
        _, later = await timed_acquires(limiter, 5)
        assert max(later) < 0.05  # the breaker skips Redis during the cooldown
    finally:
        redis_proxy.pass_through()
        await limiter.aclose()


async def test_redis_coming_back_is_used_again(redis_proxy: TcpProxy) -> None:
    limiter = fallback_limiter(f"redis://127.0.0.1:{redis_proxy.port}/0", cooldown_s=0.2)
    try:
        redis_proxy.refuse()
        with capture_logs() as logs:
            assert (await limiter.acquire([IP])).backend == "memory-fallback"
            redis_proxy.pass_through()
            await asyncio.sleep(0.25)
            assert (await limiter.acquire([IP])).backend == "redis"
        assert not limiter.degraded
        assert [entry["event"] for entry in logs if entry["event"].startswith("ratelimit_redis")] == [
            "ratelimit_redis_unavailable",
            "ratelimit_redis_recovered",
        ]
    finally:
        await limiter.aclose()


async def test_slow_redis_is_treated_as_down(redis_proxy: TcpProxy) -> None:
    limiter = fallback_limiter(f"redis://127.0.0.1:{redis_proxy.port}/0")
    try:
        redis_proxy.add_latency(2.0)
        started = time.perf_counter()
        decision = await limiter.acquire([IP])
        assert time.perf_counter() - started < EXTRA_LATENCY_BUDGET_S
        assert decision.allowed
        assert decision.backend == "memory-fallback"
    finally:
        redis_proxy.pass_through()
        await limiter.aclose()


async def test_a_lease_taken_in_the_fallback_is_released_there() -> None:
    limiter = fallback_limiter(refused_url("redis") + "/0")
    try:
        decision = await limiter.acquire([])
        assert decision.lease is not None
        assert limiter.fallback.stats()["leases"] == 1
        await decision.lease.release()
        assert limiter.fallback.stats()["leases"] == 0
    finally:
        await limiter.aclose()


async def test_dead_redis_ping_fails_fast() -> None:
    client = create_redis(refused_url("redis") + "/0")
    started = time.perf_counter()
    with pytest.raises(Exception, match="onnect"):
        await client.ping()
    assert time.perf_counter() - started < EXTRA_LATENCY_BUDGET_S
    await client.aclose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:6379/0", ("redis://h:6379/0", False)),
        ("redis+cluster://h:7000/0", ("redis://h:7000/0", True)),
        ("rediss+cluster://u:p@h:7000", ("rediss://u:p@h:7000", True)),
        ("redis://h:7000/0?cluster=true&x=1", ("redis://h:7000/0?x=1", True)),
        ("redis://h:7000/0?cluster=false", ("redis://h:7000/0", False)),
    ],
)
def test_cluster_urls(url: str, expected: tuple[str, bool]) -> None:
    assert split_cluster_url(url) == expected


async def test_redis_limiter_keys_are_cleaned_by_ttl() -> None:
    """Keys carry a TTL of their window (the lease set, of the lease TTL): nothing lingers in a shared Redis."""
    prefix = unique_prefix()
    limiter = RedisLimiter(create_redis(REDIS_URL), 10, prefix=prefix, lease_ttl_s=5)
    try:
        decision = await limiter.acquire([IP])
        ttl_ms = await limiter.client.pttl(limiter.key(IP))
        assert 0 < ttl_ms <= 60_000
        assert 0 < await limiter.client.pttl(limiter.lease_key) <= 5_000
        assert decision.lease is not None
        await decision.lease.release()
        assert await limiter.in_flight() == 0
    finally:
        await delete_prefix(limiter.client, prefix)
        await limiter.aclose()


def production_limiter(url: str) -> FallbackLimiter:
    """Built as ratelimit.service builds it: the client's read timeout is the overload budget."""
    primary = RedisLimiter(create_redis(url, timeout_s=OVERLOAD_TIMEOUT_S), 100, prefix=unique_prefix())
    fallback = MemoryLimiter(100, backend="memory-fallback")
    return FallbackLimiter(primary, fallback, overload_timeout_s=OVERLOAD_TIMEOUT_S)


@pytest.mark.parametrize("loop_busy", [False, True], ids=["redis-slow", "our-loop-late"])
async def test_a_late_event_loop_is_not_taken_for_a_slow_redis(redis_proxy: TcpProxy, loop_busy: bool) -> None:
    """Redis answers in 0.7 s (0.35 s each way), over the 0.5 s budget. With our loop idle that is a slow Redis: trip.
    With our loop blocked for 0.6 s meanwhile (a burst in a cold worker), the budget passed while our own timers
    were late: wait for the same answer instead of handing decisions to per-replica limiters."""
    limiter = production_limiter(f"redis://127.0.0.1:{redis_proxy.port}/0")
    try:
        await limiter.warm_up()
        redis_proxy.add_latency(0.35)

        async def hog() -> None:
            await asyncio.sleep(0.05)  # the command is on the wire
            if loop_busy:
                time.sleep(0.6)  # noqa: ASYNC251 - the point: the event loop itself is busy

        # "Idle" must mean idle: late in a full test run a cyclic collection of the suite's heap can itself hold the
        # loop for over 0.1 s (CI saw the redis-slow case wait once), so none runs during the call.
        gc.collect()
        gc.disable()
        try:
            decision, _ = await asyncio.gather(limiter.acquire([IP]), hog())
        finally:
            gc.enable()
        if loop_busy:
            assert (decision.backend, limiter.degraded, limiter.overload_waits) == ("redis", False, 1)
        else:
            assert (decision.backend, limiter.degraded, limiter.overload_waits) == ("memory-fallback", True, 0)
    finally:
        redis_proxy.pass_through()
        await limiter.aclose()


async def test_a_lease_taken_by_a_call_given_up_on_is_given_back(redis_proxy: TcpProxy) -> None:
    """Redis slower than the limiter's timeout still runs the script it was sent and takes a lease under the
    global cap; nobody holds its token, so the slot stayed taken for the lease TTL (30 s) after Redis recovered.
    A cap of 64 then refused everyone once 64 requests had been given up on. The lease is given back."""
    primary = RedisLimiter(create_redis(f"redis://127.0.0.1:{redis_proxy.port}/0"), 100, prefix=unique_prefix())
    limiter = FallbackLimiter(primary, MemoryLimiter(100, backend="memory-fallback"), cooldown_s=0.5)
    direct = create_redis(REDIS_URL)
    try:
        first = await limiter.acquire([])  # connected and the script loaded
        assert first.lease is not None
        await first.lease.release()
        redis_proxy.add_latency(1.0)
        decisions = await asyncio.gather(*(limiter.acquire([]) for _ in range(3)))
        assert {decision.backend for decision in decisions} == {"memory-fallback"}
        redis_proxy.pass_through()
        await asyncio.sleep(2.0)  # the script arrives ~1 s after it was sent
        for _ in range(50):  # given back 1 s after the call was given up on; allow up to 5 s more
            if not await direct.zcard(primary.lease_key):
                break
            await asyncio.sleep(0.1)
        assert await direct.zcard(primary.lease_key) == 0, "leases nobody holds still count against the cap"
    finally:
        redis_proxy.pass_through()
        await limiter.aclose()
        await delete_prefix(direct, primary._prefix)
        await direct.aclose()


async def test_a_caller_cancelled_mid_batch_leaves_the_others_decided_and_its_lease_given_back(
    redis_proxy: TcpProxy,
) -> None:
    """Concurrent admissions share one bounded Redis call. A shopper who goes away while it is on its way cancels
    only their own wait: the others of the batch are decided by Redis, and the lease the script took for the one who
    left is given back, not left to count against the cap until its TTL."""
    primary = RedisLimiter(create_redis(f"redis://127.0.0.1:{redis_proxy.port}/0"), 100, prefix=unique_prefix())
    limiter = FallbackLimiter(primary, MemoryLimiter(100, backend="memory-fallback"))
    direct = create_redis(REDIS_URL)
    try:
        await limiter.warm_up()
        redis_proxy.add_latency(0.1)  # well inside the 0.5 s deadline
        calls = [asyncio.create_task(limiter.acquire([IP])) for _ in range(4)]
        await asyncio.sleep(0.05)  # the batch is on the wire
        calls[0].cancel()
        rest = await asyncio.gather(*calls[1:])
        with pytest.raises(asyncio.CancelledError):
            await calls[0]
        assert [decision.backend for decision in rest] == ["redis"] * 3
        assert not limiter.degraded  # a cancelled caller is not a Redis failure
        for decision in rest:
            assert decision.lease is not None
            await decision.lease.release()
        for _ in range(50):  # the cancelled caller's lease goes 1 s after it left
            if not await direct.zcard(primary.lease_key):
                break
            await asyncio.sleep(0.1)
        assert await direct.zcard(primary.lease_key) == 0
    finally:
        redis_proxy.pass_through()
        await limiter.aclose()
        await delete_prefix(direct, primary._prefix)
        await direct.aclose()


async def test_a_batch_given_up_on_keeps_its_connection(redis_proxy: TcpProxy) -> None:
    """A batch whose Redis call outlasts the deadline falls back at once, but the call is left to finish rather
    than cancelled: redis-py closes a connection cancelled mid-command, so each timed-out batch against a slow
    Redis cost a pooled connection and the next command a new handshake over the slow link."""
    client = create_redis(f"redis://127.0.0.1:{redis_proxy.port}/0", timeout_s=OVERLOAD_TIMEOUT_S)  # as served
    primary = RedisLimiter(client, 100, prefix=unique_prefix())
    limiter = FallbackLimiter(primary, MemoryLimiter(100, backend="memory-fallback"), cooldown_s=0.2)
    direct = create_redis(REDIS_URL)
    try:
        await limiter.warm_up()  # the pool's connections are open
        await asyncio.sleep(0.2)
        opened = redis_proxy.open_connections
        redis_proxy.add_latency(0.35)  # a 0.7 s round trip against the 0.5 s deadline
        decisions = await asyncio.gather(*(limiter.acquire([]) for _ in range(5)))
        assert {decision.backend for decision in decisions} == {"memory-fallback"}
        await asyncio.sleep(0.6)  # the script's answer arrives on the same connection
        redis_proxy.pass_through()
        await asyncio.sleep(0.3)
        assert redis_proxy.open_connections == opened  # none was closed (nor a new one opened)
        last = await limiter.acquire([])
        assert (last.backend, last.allowed) == ("redis", True)
        for _ in range(50):  # the leases the late script took are given back after it answered
            if not await direct.zcard(primary.lease_key):
                break
            await asyncio.sleep(0.1)
        assert await direct.zcard(primary.lease_key) == 1  # only the last acquire's own lease
    finally:
        redis_proxy.pass_through()
        await limiter.aclose()
        await delete_prefix(direct, primary._prefix)
        await direct.aclose()
