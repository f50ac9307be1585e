"""The near copy of answers read from Redis: reused for a moment, never past a removal that has answered."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from helpline.cache.factory import build_cache
from helpline.cache.keys import CacheScope, KeySpace
from helpline.cache.near import NearCache
from helpline.cache.redis_backend import RedisBackend
from helpline.cache.service import AnswerCache, CachedAnswer, CacheSettings
from helpline.config import Settings
from helpline.redisconn import create_redis
from tests.cache.conftest import REDIS_URL

SCOPE = CacheScope("t", "en", "rag-v1", "a", "m1")
VECTOR = np.ones(384, dtype=np.float32) / np.sqrt(384)
NEAR_S = 0.3


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_copy_is_fresh_for_its_ttl_after_its_read_was_sent() -> None:
    clock = Clock()
    near = NearCache(0.25, clock=clock)
    near.put("k", b"v1", sent_at=99.875)  # sent 0.125 s ago: fresh for 0.125 s more
    assert near.get("k") == b"v1"
    clock.now = 100.125
    assert near.get("k") is None  # 0.25 s after the read was sent, however late its answer came
    assert len(near) == 0


def test_a_copy_from_an_earlier_read_never_replaces_a_later_one() -> None:
    clock = Clock()
    near = NearCache(0.2, clock=clock)
    near.put("k", b"later", sent_at=100.0)
    near.put("k", b"earlier", sent_at=99.95)  # its answer arrived last, but it may be older
    assert near.get("k") == b"later"
    near.put("k", b"newest", sent_at=100.05)
    assert near.get("k") == b"newest"


def test_the_copy_is_bounded() -> None:
    clock = Clock()
    near = NearCache(0.2, max_entries=4, clock=clock)
    for index in range(3):
        near.put(f"old{index}", b"v", sent_at=99.0)  # stale already
    near.put("fresh", b"v", sent_at=100.0)
    near.put("new", b"v", sent_at=100.0)  # full: the stale copies go
    assert len(near) == 2
    for index in range(10):
        near.put(f"k{index}", b"v", sent_at=100.0)
        assert len(near) <= 4  # full of fresh copies: the older half goes
    assert near.get("k9") == b"v"


def answer(question: str) -> CachedAnswer:
    return CachedAnswer(question, f"answer to {question}", [{"id": "doc-1", "title": "T"}], "gemini", "g", ["doc-1"])


class CountingBackend(RedisBackend):
    """The real Redis backend, counting the reads that reach Redis."""

    gets = 0

    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        return await super().get(key)


async def test_a_replica_reuses_what_it_read_and_never_serves_it_after_a_removal_answered(keyspace: KeySpace) -> None:
    """Two replicas on one Redis. The reader's repeated lookups cost one read; once the other replica's
    invalidation has answered (no sooner than the near copies' lifetime), the reader no longer has the answer.
    Without the wait the reader's copy, 0.3 s fresh, would still answer here."""
    settings = CacheSettings(ttl_s=60, timeout_s=2.0, near_s=NEAR_S)
    writer = AnswerCache(RedisBackend(create_redis(REDIS_URL, timeout_s=1.0), keyspace.prefix), keyspace, settings)
    backend = CountingBackend(create_redis(REDIS_URL, timeout_s=1.0), keyspace.prefix)
    reader = AnswerCache(backend, keyspace, settings)
    try:
        assert await writer.store("Do you sell tofu?", VECTOR, SCOPE, answer("Do you sell tofu?"))
        for _ in range(20):
            hit = await reader.lookup_exact("Do you sell tofu?", SCOPE)
            assert hit is not None
            assert hit.answer.reply == "answer to Do you sell tofu?"
        assert backend.gets == 1
        started = time.monotonic()
        removed, _ = await writer.invalidate(["doc-1"])
        assert removed == 1
        assert time.monotonic() - started >= NEAR_S
        assert await reader.lookup_exact("Do you sell tofu?", SCOPE) is None
        assert backend.gets == 2
    finally:
        await writer.close()
        await reader.close()


async def test_a_copy_expires_and_the_store_is_read_again(keyspace: KeySpace) -> None:
    settings = CacheSettings(ttl_s=60, timeout_s=2.0, near_s=0.1)
    backend = CountingBackend(create_redis(REDIS_URL, timeout_s=1.0), keyspace.prefix)
    cache = AnswerCache(backend, keyspace, settings)
    try:
        assert await cache.store("Is the tofu organic?", VECTOR, SCOPE, answer("Is the tofu organic?"))
        assert await cache.lookup_exact("Is the tofu organic?", SCOPE) is not None
        await asyncio.sleep(0.15)
        assert await cache.lookup_exact("Is the tofu organic?", SCOPE) is not None
        assert backend.gets == 2
        other = CacheScope("t", "de", "rag-v1", "a", "m1")  # another scope is another key: never this copy
        assert await cache.lookup_exact("Is the tofu organic?", other) is None
    finally:
        await cache.close()


async def test_the_removing_replica_drops_its_own_copies_at_once(keyspace: KeySpace) -> None:
    settings = CacheSettings(ttl_s=60, timeout_s=2.0, near_s=5.0)  # a copy that would outlive the test
    cache = AnswerCache(RedisBackend(create_redis(REDIS_URL, timeout_s=1.0), keyspace.prefix), keyspace, settings)
    try:
        assert await cache.store("Do you sell miso?", VECTOR, SCOPE, answer("Do you sell miso?"))
        assert await cache.lookup_exact("Do you sell miso?", SCOPE) is not None
        removing = asyncio.create_task(cache.invalidate(["doc-1"]))
        await asyncio.sleep(0.5)  # the removal is done in Redis; its caller still waits out peers' copies
        assert not removing.done()
        assert await cache.lookup_exact("Do you sell miso?", SCOPE) is None
        removing.cancel()
    finally:
        await cache.close()


def test_the_app_keeps_near_copies_only_over_redis() -> None:
    assert build_cache(Settings(redis_url=REDIS_URL)).settings.near_s == 0.2
    assert build_cache(Settings(redis_url=REDIS_URL, cache_near_ms=0)).settings.near_s == 0
    assert build_cache(Settings()).settings.near_s == 0  # in process: the store is as near as it gets


async def test_concurrent_lookups_without_a_fresh_copy_share_one_read(keyspace: KeySpace) -> None:
    """A popular answer's copy expires under load: the requests arriving during the read's round trip wait for it
    instead of each sending a GET; one sent longer ago than the copies' lifetime is not shared."""
    settings = CacheSettings(ttl_s=60, timeout_s=2.0, near_s=NEAR_S)
    backend = CountingBackend(create_redis(REDIS_URL, timeout_s=1.0), keyspace.prefix)
    cache = AnswerCache(backend, keyspace, settings)
    try:
        assert await cache.store("Do you sell tempeh?", VECTOR, SCOPE, answer("Do you sell tempeh?"))
        hits = await asyncio.gather(*(cache.lookup_exact("Do you sell tempeh?", SCOPE) for _ in range(40)))
        assert all(hit is not None and hit.answer.reply == "answer to Do you sell tempeh?" for hit in hits)
        assert backend.gets == 1
        await asyncio.sleep(NEAR_S)  # the copy expires; the next reader is cancelled while its read is on its way
        sender = asyncio.create_task(cache.lookup_exact("Do you sell tempeh?", SCOPE))
        await asyncio.sleep(0)
        others = [asyncio.create_task(cache.lookup_exact("Do you sell tempeh?", SCOPE)) for _ in range(10)]
        await asyncio.sleep(0)
        sender.cancel()
        assert all(hit is not None for hit in await asyncio.gather(*others))  # its read still answered them
        assert backend.gets == 2
    finally:
        await cache.close()


async def test_a_read_sent_too_long_ago_is_not_shared_and_an_answered_or_dropped_one_is_forgotten() -> None:
    clock = Clock()
    near = NearCache(0.2, clock=clock)
    loop = asyncio.get_running_loop()
    read: asyncio.Future[bytes | None] = loop.create_future()
    near.reading("k", read, sent_at=100.0)
    assert near.read_under_way("k") is read
    clock.now = 100.2  # as old as a copy may be: a new request sends its own read
    assert near.read_under_way("k") is None
    clock.now = 100.1
    assert near.read_under_way("k") is read
    read.set_result(b"v")
    await near.settled()
    await asyncio.sleep(0)
    assert near.read_under_way("k") is None  # answered: forgotten
    near.reading("k", loop.create_future(), sent_at=100.1)
    near.drop("k")  # the removing replica forgets reads on their way as it forgets copies
    assert near.read_under_way("k") is None
