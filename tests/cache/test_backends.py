"""Backends behave the same on memory, Redis and Redis Cluster: TTL, semantic index, atomic tag invalidation."""

from __future__ import annotations

import asyncio

import numpy as np

from helpline.cache.backend import CacheBackend
from helpline.cache.keys import CacheScope, KeySpace
from helpline.cache.redis_backend import VECTOR_SEPARATOR, RedisBackend
from helpline.cache.service import AnswerCache, CachedAnswer
from helpline.knowledge.embeddings import Embedder
from helpline.redisconn import create_redis
from tests.cache.conftest import REDIS_URL

SCOPE = CacheScope("t", "en", "rag-v1", "a", "m1")


def answer(question: str, tags: list[str]) -> CachedAnswer:
    return CachedAnswer(question, f"answer to {question}", [{"id": tags[0], "title": "T"}], "gemini", "g", tags)


async def test_put_get_ttl_and_index(cache_backend: CacheBackend, keyspace: KeySpace) -> None:
    key = keyspace.entry(SCOPE, "q")
    vector = np.ones(384, dtype=np.float32).tobytes()
    await cache_backend.put(key, b"value", ttl_s=1, tags=["doc-a"], scope_id=SCOPE.id, question="q", vector=vector)
    assert await cache_backend.get(key) == b"value"
    assert await cache_backend.semantic_version(SCOPE.id) >= 1
    (entry,) = await cache_backend.semantic_entries(SCOPE.id)
    assert (entry.key, entry.question, entry.vector) == (key, "q", vector)
    assert await cache_backend.tag_members("doc-a") == [key]
    await asyncio.sleep(1.2)
    assert await cache_backend.get(key) is None


async def test_invalidation_removes_exactly_the_tagged_entries(cache_backend: CacheBackend, keyspace: KeySpace) -> None:
    keys = {name: keyspace.entry(SCOPE, name) for name in ("a", "b", "c")}
    tags = {"a": ["doc-1"], "b": ["doc-1", "doc-2"], "c": ["doc-3"]}
    for name, key in keys.items():
        await cache_backend.put(key, name.encode(), ttl_s=60, tags=tags[name], scope_id=SCOPE.id, question=name,
                                vector=b"\x00" * 1536)  # fmt: skip
    version = await cache_backend.semantic_version(SCOPE.id)
    removed = await cache_backend.invalidate(["doc-1"])
    assert sorted(removed) == sorted([keys["a"], keys["b"]])
    assert await cache_backend.get(keys["a"]) is None
    assert await cache_backend.get(keys["b"]) is None
    assert await cache_backend.get(keys["c"]) == b"c"
    assert [e.key for e in await cache_backend.semantic_entries(SCOPE.id)] == [keys["c"]]
    assert await cache_backend.semantic_version(SCOPE.id) > version
    assert await cache_backend.invalidate(["doc-1", "doc-2"]) == []


async def test_popularity_and_locks(cache_backend: CacheBackend, keyspace: KeySpace) -> None:
    key = keyspace.entry(SCOPE, "p")
    await cache_backend.bump_popularity({key: 2})
    await cache_backend.bump_popularity({key: 1})
    assert await cache_backend.popularity([key, keyspace.entry(SCOPE, "none")]) == {
        key: 3, keyspace.entry(SCOPE, "none"): 0,
    }  # fmt: skip
    lock = keyspace.lock(key)
    assert await cache_backend.lock(lock, 5)
    assert not await cache_backend.lock(lock, 5)
    await cache_backend.unlock(lock)
    assert await cache_backend.lock(lock, 5)


async def test_exact_and_semantic_tiers(answer_cache: AnswerCache, embedder: Embedder) -> None:
    stored_q = "How long does delivery take?"
    (vector,) = embedder.embed([stored_q])
    assert await answer_cache.store(stored_q, vector, SCOPE, answer(stored_q, ["policy-delivery.delivery-times"]))
    exact = await answer_cache.lookup("  how long does DELIVERY take ", embedder.embed(["x"])[0], SCOPE)
    assert exact is not None
    assert exact.tier == "exact"
    paraphrase = "How long does the delivery take?"
    hit = await answer_cache.lookup(paraphrase, embedder.embed([paraphrase])[0], SCOPE)
    assert hit is not None
    assert hit.tier == "semantic"
    assert hit.matched_question == stored_q
    assert hit.similarity >= 0.8
    other_scope = CacheScope("t", "de", "rag-v1", "a", "m1")
    assert await answer_cache.lookup(stored_q, vector, other_scope) is None
    removed, _ = await answer_cache.invalidate(["policy-delivery.delivery-times"])
    assert removed == 1
    assert await answer_cache.lookup(stored_q, vector, SCOPE) is None


async def test_guards_stop_near_misses_even_above_the_threshold(answer_cache: AnswerCache, embedder: Embedder) -> None:
    stored = "Can I cancel my order?"
    await answer_cache.store(stored, embedder.embed([stored])[0], SCOPE, answer(stored, ["faq-cancel"]))
    for near_miss in ("Why can't I cancel my order?", "Can I cancel my order 48213?", "Can I not cancel my order?"):
        assert await answer_cache.lookup(near_miss, embedder.embed([near_miss])[0], SCOPE) is None, near_miss


async def test_an_entry_in_an_older_format_is_skipped_not_fatal(keyspace: KeySpace) -> None:
    client = create_redis(REDIS_URL, timeout_s=1.0)
    backend = RedisBackend(client, keyspace.prefix)
    try:
        good = keyspace.entry(SCOPE, "good")
        vector = np.ones(384, dtype=np.float32).tobytes()
        await backend.put(good, b"v", ttl_s=60, tags=[], scope_id=SCOPE.id, question="good", vector=vector)
        await client.hset(f"{keyspace.prefix}:s:{SCOPE.id}", "old", b"question" + VECTOR_SEPARATOR + b"\xff\xfe")
        assert [entry.key for entry in await backend.semantic_entries(SCOPE.id)] == [good]
        assert 0 < await client.ttl(f"{keyspace.prefix}:s:{SCOPE.id}") <= 120  # the index expires too
    finally:
        async for key in client.scan_iter(match=keyspace.prefix.replace("{", "\\{").replace("}", "\\}") + "*"):
            await client.delete(key)
        await backend.close()
