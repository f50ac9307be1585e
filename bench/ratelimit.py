"""What the rate limiter costs: per evaluation (in process and on Redis), and /v1/chat throughput with limits on/off.

Run: `.venv/bin/python -m bench.ratelimit` (needs Redis on 127.0.0.1:6379, or HELPLINE_BENCH_REDIS_URL).

1. Limiter cost: sequential evaluations of a shopper's two tiers (IP + conversation) plus the concurrency lease,
   then the release, on the in-process limiter and on Redis (one Lua round trip to acquire, one to release); and
   the CPU an acquire + release costs this thread, sequentially and with 32 concurrent callers, whose admissions
   and releases share Redis round trips (GroupCommit).
2. HTTP: `helpline serve` (one worker, sample knowledge) answering the same question from 16 clients, so after the
   first request every answer is an exact cache hit and the limiter is a visible share of the work. Limits "off"
   means every tier set to ``off`` (only the in-process concurrency lease remains); "on" means tiers checked and
   charged on every request, with limits high enough never to refuse. The Redis run also keeps the answer cache in
   Redis (REDIS_URL selects both), so compare it with the micro-benchmark to attribute the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.common import LoadResult, load, percentile, server
from helpline.ratelimit.base import Limiter
from helpline.ratelimit.fallback import FallbackLimiter
from helpline.ratelimit.memory import MemoryLimiter
from helpline.ratelimit.policies import Rate, Tier
from helpline.ratelimit.redis import RedisLimiter
from helpline.redisconn import create_redis

REDIS_URL = os.environ.get("HELPLINE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
EVALUATIONS = 3000
CALLERS = 32  # concurrent callers for the CPU figure
CPU_ROUNDS = 5
CONCURRENCY = 16
ROUNDS = 5
ROUND_S = 2.0
QUESTION = {"message": "How long does delivery take?"}
HIGH = "1000000/minute"


def tiers(n: int) -> list[Tier]:
    """A shopper continuing a conversation, spread over 50 addresses and 200 conversations."""
    return [
        Tier("ip", f"ip:198.51.100.{n % 50}", Rate(1_000_000, 60)),
        Tier("session", f"session:{n % 200:040x}", Rate(1_000_000, 3600)),
    ]


async def time_limiter(limiter: Limiter) -> tuple[list[float], list[float]]:
    """Microseconds per acquire and per release."""
    acquire_us: list[float] = []
    release_us: list[float] = []
    for n in range(EVALUATIONS):
        started = time.perf_counter()
        decision = await limiter.acquire(tiers(n))
        acquired = time.perf_counter()
        assert decision.allowed
        assert decision.lease is not None
        await decision.lease.release()
        acquire_us.append((acquired - started) * 1e6)
        release_us.append((time.perf_counter() - acquired) * 1e6)
    return acquire_us, release_us


async def concurrent_cpu(limiter: Limiter) -> float:
    """µs of this thread's CPU per acquire + release, CALLERS callers at a time (as in a busy worker, where the Redis
    limiter's concurrent admissions and releases share round trips)."""
    per_caller = EVALUATIONS // CALLERS

    async def caller(offset: int) -> None:
        for n in range(per_caller):
            decision = await limiter.acquire(tiers(offset + n))
            assert decision.allowed
            assert decision.lease is not None
            await decision.lease.release()

    started = time.thread_time()
    await asyncio.gather(*(caller(index * per_caller) for index in range(CALLERS)))
    return (time.thread_time() - started) / (per_caller * CALLERS) * 1e6


async def limiter_rows() -> list[str]:
    prefix = "{bench" + secrets.token_hex(4) + ":rl}:"
    built: list[tuple[str, Callable[[], Limiter]]] = [
        ("in-process (embedded default)", lambda: MemoryLimiter(1000)),
        ("Redis, one Lua round trip", lambda: RedisLimiter(create_redis(REDIS_URL), 1000, prefix=prefix)),
        (
            "Redis behind the fallback wrapper (production path)",
            lambda: FallbackLimiter(
                RedisLimiter(create_redis(REDIS_URL), 1000, prefix=prefix),
                MemoryLimiter(1000, backend="memory-fallback"),
            ),
        ),
    ]
    rows = []
    for name, make in built:
        limiter = make()
        try:
            await limiter.warm_up()
            await time_limiter(limiter)  # warm-up pass: connections, script cache, allocator
            cpu_started = time.thread_time()
            acquire_us, release_us = await time_limiter(limiter)
            one_caller_cpu = (time.thread_time() - cpu_started) / EVALUATIONS * 1e6
            await concurrent_cpu(limiter)  # warm-up pass
            many_callers_cpu = statistics.median([await concurrent_cpu(limiter) for _ in range(CPU_ROUNDS)])
        finally:
            await _delete(limiter, prefix)
            await limiter.aclose()
        rows.append(
            f"| {name} | {percentile(acquire_us, 50):.0f} | {percentile(acquire_us, 99):.0f} "
            f"| {percentile(release_us, 50):.0f} | {percentile(release_us, 99):.0f} "
            f"| {one_caller_cpu:.0f} | {many_callers_cpu:.0f} |"
        )
    return rows


async def _delete(limiter: Limiter, prefix: str) -> None:
    redis_limiter = limiter.primary if isinstance(limiter, FallbackLimiter) else limiter
    if isinstance(redis_limiter, RedisLimiter):
        async for key in redis_limiter.client.scan_iter(match=prefix.replace("{", "\\{").replace("}", "\\}") + "*"):
            await redis_limiter.client.delete(key)


async def cache_hit_share(base: str) -> float:
    """Warm the server and its answer cache; the share of exact hits among the next 20 answers."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for _ in range(3):
            await client.post("/v1/chat", json=QUESTION)
        probe = [await client.post("/v1/chat", json=QUESTION) for _ in range(20)]
    hits = [response for response in probe if response.headers.get("x-cache") == "HIT-EXACT"]
    return len(hits) / len(probe)


async def interleaved(bases: list[str]) -> list[list[LoadResult]]:
    """Short rounds, configurations taking turns, so load from other work on the machine hits them all alike."""
    results: list[list[LoadResult]] = [[] for _ in bases]
    for _ in range(ROUNDS):
        for index, base in enumerate(bases):
            results[index].append(
                await load(base, "POST", "/v1/chat", json=QUESTION, concurrency=CONCURRENCY, seconds=ROUND_S)
            )
    return results


def http_rows(workdir: Path) -> list[tuple[str, float, list[float], int, float]]:
    """(configuration, median req/s over rounds, all latencies, errors, cache-hit share) per configuration."""
    tenant = "bench" + secrets.token_hex(4)
    common = {"HELPLINE_PROVIDERS": "extractive", "HELPLINE_TENANT": tenant}
    off = {"HELPLINE_RATE_LIMIT_IP": "off", "HELPLINE_RATE_LIMIT_USER": "off", "HELPLINE_RATE_LIMIT_SESSION": "off"}
    on = {"HELPLINE_RATE_LIMIT_IP": HIGH, "HELPLINE_RATE_LIMIT_USER": HIGH, "HELPLINE_RATE_LIMIT_SESSION": HIGH}
    runs = [
        ("limits off (baseline)", {**common, **off, "HELPLINE_MAX_CONCURRENT": "1000000"}),
        ("limits on, in-process limiter", {**common, **on}),
        ("limits on, Redis limiter (+ Redis answer cache)", {**common, **on, "HELPLINE_REDIS_URL": REDIS_URL}),
    ]
    with contextlib.ExitStack() as stack:
        bases = [stack.enter_context(server(workdir, env)) for _, env in runs]
        hits = [asyncio.run(cache_hit_share(base)) for base in bases]
        results = asyncio.run(interleaved(bases))
    rows = []
    for (name, _), share, rounds in zip(runs, hits, results, strict=True):
        latencies = [latency for result in rounds for latency in result.latencies_ms]
        rps = statistics.median(result.rps for result in rounds)
        rows.append((name, rps, latencies, sum(result.errors for result in rounds), share))
    return rows


def main() -> None:
    limiter_table = asyncio.run(limiter_rows())
    print(f"Limiter cost per request, {EVALUATIONS} sequential evaluations (IP + conversation tiers + lease), µs;")
    print(
        f"then this thread's CPU per acquire + release: sequential, and {CALLERS} concurrent callers "
        f"(median of {CPU_ROUNDS} rounds)"
    )
    print(
        f"| limiter | acquire p50 | acquire p99 | release p50 | release p99 | CPU, 1 caller | CPU, {CALLERS} callers |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(limiter_table))
    print()
    with tempfile.TemporaryDirectory() as tmp:
        rows = http_rows(Path(tmp))
    baseline = rows[0][1]
    print(
        f"POST /v1/chat, same question (exact cache hits), {CONCURRENCY} clients, one worker each, "
        f"{ROUNDS} interleaved rounds of {ROUND_S:.0f} s (median req/s)"
    )
    print("| configuration | req/s | p50 ms | p99 ms | errors | cache hits | vs off |")
    print("|---|---|---|---|---|---|---|")
    for name, rps, latencies, errors, hits in rows:
        print(
            f"| {name} | {rps:.0f} | {percentile(latencies, 50):.1f} | {percentile(latencies, 99):.1f} | {errors} "
            f"| {hits:.0%} | {rps / baseline:.2f}x |"
        )


if __name__ == "__main__":
    main()
