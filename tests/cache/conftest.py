"""Cache backends under test: in-process memory, the shared single-node Redis, and a real 3-node cluster."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest

from helpline.cache.backend import CacheBackend, MemoryBackend
from helpline.cache.guards import SemanticGuard
from helpline.cache.keys import KeySpace
from helpline.cache.redis_backend import RedisBackend
from helpline.cache.service import AnswerCache, CacheSettings
from helpline.redisconn import create_redis
from tests.fakes.tcp_proxy import TcpProxy
from tests.redis_cluster import redis_cluster

REDIS_URL = os.environ.get("HELPLINE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def cache_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_cluster(tmp_path_factory.mktemp("cache-cluster")) as cluster:
        yield cluster.url


@pytest.fixture(params=["memory", "redis", "cluster"])
def cache_backend_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def keyspace() -> KeySpace:
    # A tenant of its own per test: tests never see each other's keys, and nothing is flushed.
    return KeySpace("hl:test", "t" + secrets.token_hex(6))


@pytest.fixture
async def cache_backend(
    cache_backend_kind: str, keyspace: KeySpace, request: pytest.FixtureRequest
) -> AsyncIterator[CacheBackend]:
    if cache_backend_kind == "memory":
        yield MemoryBackend()
        return
    url = REDIS_URL if cache_backend_kind == "redis" else request.getfixturevalue("cache_cluster_url")
    # generous: a cluster client's first command opens a connection to every node, and on a loaded machine one of
    # those took over the production 0.25 s twice (CI, session 16)
    client = create_redis(url, timeout_s=1.0, connect_timeout_s=2.0)
    backend = RedisBackend(client, keyspace.prefix)
    yield backend
    async for key in client.scan_iter(match=keyspace.prefix.replace("{", "\\{").replace("}", "\\}") + "*"):
        await client.delete(key)
    await backend.close()


@pytest.fixture
def answer_cache(cache_backend: CacheBackend, keyspace: KeySpace) -> AnswerCache:
    settings = CacheSettings(ttl_s=60, threshold=0.8, timeout_s=2.0)  # generous: the machine is shared and busy
    return AnswerCache(cache_backend, keyspace, settings, SemanticGuard({"banana"}))


@pytest.fixture
def blackhole_redis() -> Iterator[TcpProxy]:
    """The local Redis through a TCP fault proxy (latency, cut, blackhole, refuse: tests/fakes/tcp_proxy.py)."""
    proxy = TcpProxy("127.0.0.1", 6379)
    proxy.start()
    yield proxy
    proxy.stop()
