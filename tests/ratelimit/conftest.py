"""Limiters on every backend: in-process, single-node Redis (the shared test server) and a real 3-node cluster.

Redis tests never flush anything: each limiter gets its own key prefix (and hash tag), and its keys are deleted
afterwards, so parallel test runs and other suites on the same Redis are left alone.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from helpline.ratelimit.memory import MemoryLimiter
from helpline.ratelimit.redis import RedisLimiter
from helpline.redisconn import AnyRedis, create_redis
from tests.redis_cluster import redis_cluster

REDIS_URL = os.environ.get("HELPLINE_TEST_REDIS", "redis://127.0.0.1:6379/0")
BACKENDS = ("memory", "redis", "cluster")

MakeLimiter = Callable[..., Awaitable[MemoryLimiter | RedisLimiter]]


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster.url


def unique_prefix() -> str:
    return "{t" + secrets.token_hex(6) + ":rl}:"


async def delete_prefix(client: AnyRedis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=prefix.replace("{", "\\{").replace("}", "\\}") + "*")]
    for key in keys:
        await client.delete(key)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def backend_url(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "cluster":
        url: str = request.getfixturevalue("redis_cluster_url")
        return url
    return REDIS_URL if backend == "redis" else ""


@pytest.fixture
async def make_limiter(backend: str, backend_url: str) -> AsyncIterator[MakeLimiter]:
    """Builds limiters on the parametrised backend; closes them and deletes their keys afterwards."""
    made: list[tuple[MemoryLimiter | RedisLimiter, str]] = []

    async def make(max_concurrent: int = 1000, lease_ttl_s: float = 30.0) -> MemoryLimiter | RedisLimiter:
        limiter: MemoryLimiter | RedisLimiter
        prefix = unique_prefix()
        if backend == "memory":
            limiter = MemoryLimiter(max_concurrent, lease_ttl_s=lease_ttl_s)
        else:
            # The limiter's logic is under test here, not its timeouts (the fault-proxy tests cover those): generous
            # ones, so a loaded CI machine cannot fail a cluster's first connect (0.25 s by default; seen once).
            client = create_redis(backend_url, connect_timeout_s=2.0, timeout_s=2.0)
            limiter = RedisLimiter(client, max_concurrent, prefix=prefix, lease_ttl_s=lease_ttl_s)
        made.append((limiter, prefix))
        return limiter

    yield make
    for limiter, prefix in made:
        if isinstance(limiter, RedisLimiter):
            await delete_prefix(limiter.client, prefix)
        await limiter.aclose()
