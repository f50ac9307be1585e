"""Backends behave the same on memory, Redis and Redis Cluster: TTL, semantic index, atomic tag invalidation."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import pytest
from redis.asyncio import Redis, RedisCluster

from helpline.cache import redis_backend
from helpline.cache.backend import RELAY_START, CacheBackend, IndexedQuestion, MemoryBackend
from helpline.cache.guards import SemanticGuard
from helpline.cache.keys import CacheScope, KeySpace
from helpline.cache.redis_backend import VECTOR_SEPARATOR, RedisBackend
from helpline.cache.service import DECODED_MEMO, AnswerCache, CachedAnswer, CacheHit, CacheSettings, Flight
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


async def test_an_answer_rewritten_from_other_documents_leaves_the_tags_it_no_longer_draws_on(
    cache_backend: CacheBackend, keyspace: KeySpace
) -> None:
    """The same question answered again (its entry expired from the index's view, or a re-warm after a change) from
    other documents: a change to a document only the old answer drew on used to remove the new answer too (the
    entry kept every tag it was ever written with). Exactly the answers that use a document go when it changes."""
    key, other = keyspace.entry(SCOPE, "q"), keyspace.entry(SCOPE, "other")
    for name, entry, tags in (
        ("q", key, ["doc-1", "doc-2"]),
        ("other", other, ["doc-1"]),
        ("q", key, ["doc-2", "doc-3"]),
    ):
        await cache_backend.put(entry, f"{name}:{tags[-1]}".encode(), ttl_s=60, tags=tags, scope_id=SCOPE.id,
                                question=name, vector=b"\x00" * 1536)  # fmt: skip
    assert await cache_backend.tag_members("doc-1") == [other]
    assert await cache_backend.tag_members("doc-2") == await cache_backend.tag_members("doc-3") == [key]
    assert await cache_backend.invalidate(["doc-1"]) == [other]
    assert await cache_backend.get(key) == b"q:doc-3"  # its answer no longer draws on doc-1
    assert await cache_backend.invalidate(["doc-3"]) == [key]
    assert await cache_backend.tag_members("doc-2") == []
    await cache_backend.put(key, b"q:doc-4", ttl_s=60, tags=["doc-4"], scope_id=SCOPE.id, question="q",
                            vector=b"\x00" * 1536)  # fmt: skip
    assert await cache_backend.invalidate(["doc-2", "doc-3"]) == []  # written again after its removal: untouched
    assert await cache_backend.get(key) == b"q:doc-4"


async def test_an_invalidation_naming_the_current_version_keeps_what_drew_on_it(
    cache_backend: CacheBackend, keyspace: KeySpace
) -> None:
    """Every replica invalidates the same document change: the repeat must keep the answers cached from the new
    version since (re-warmed ones), drop those from the old, and refuse writes of the old version afterwards,
    without moving the generation (which would refuse the new version's writes in flight). A whole-tag
    invalidation (an operator's) still removes everything and moves it."""

    async def put(name: str, versions: dict[str, str], generation: int | None = None) -> bool:
        key = keyspace.entry(SCOPE, name)
        return await cache_backend.put(key, name.encode(), ttl_s=60, tags=["doc-1", "faq"], scope_id=SCOPE.id,
                                       question=name, vector=b"\x00" * 1536, generation=generation,
                                       versions=versions)  # fmt: skip

    assert await put("old", {"doc-1": "v1"})
    assert await put("new", {"doc-1": "v2"})
    generation = await cache_backend.generation()
    assert await cache_backend.tag_members("doc-1", keep="v2") == [keyspace.entry(SCOPE, "old")]
    removed = await cache_backend.invalidate(["doc-1"], {"doc-1": "v2"}, 60)
    assert removed == [keyspace.entry(SCOPE, "old")]
    assert await cache_backend.invalidate(["doc-1"], {"doc-1": "v2"}, 60) == []  # the same change again
    assert await cache_backend.get(keyspace.entry(SCOPE, "new")) == b"new"
    assert await cache_backend.generation() == generation
    assert not await put("late-old", {"doc-1": "v1"}, generation)  # computed from the old text: refused
    assert await put("late-new", {"doc-1": "v2"}, generation)
    assert await put("unversioned", {})
    assert sorted(await cache_backend.invalidate(["faq"])) == sorted(
        keyspace.entry(SCOPE, name) for name in ("new", "late-new", "unversioned")
    )
    assert await cache_backend.generation() > generation


async def test_an_invalidation_arriving_late_from_an_older_copy_sets_no_version_back(
    cache_backend: CacheBackend, keyspace: KeySpace
) -> None:
    """Replica B read revision 5 of a document; replica A saved revision 9 and invalidated it; B's invalidation
    naming 5 lands last. The tag's mark stays at 9: the answers of 9 stay, those of 5 go and stay refused (found by
    a review, session 19: marks were the last one written, and a replica whose next read of the database failed
    went on caching answers from its old copy for every replica to serve). A deletion is newer than the version it
    deleted, and older than one written after it."""

    async def put(name: str, version: str) -> bool:
        return await cache_backend.put(keyspace.entry(SCOPE, name), name.encode(), ttl_s=60, tags=["doc-1"],
                                       scope_id=SCOPE.id, question=name, vector=b"\x00" * 1536,
                                       versions={"doc-1": version})  # fmt: skip

    def entries(*names: str) -> list[str]:
        return sorted(keyspace.entry(SCOPE, name) for name in names)

    old, new, deleted, again = "5:aaa", "9:bbb", "9:-", "12:aaa"
    assert await put("old", old)
    assert await cache_backend.invalidate(["doc-1"], {"doc-1": new}, 60) == entries("old")
    assert await put("new", new)
    assert await cache_backend.invalidate(["doc-1"], {"doc-1": old}, 60) == []  # late: the answers of 9 stay
    assert await cache_backend.get(keyspace.entry(SCOPE, "new")) == b"new"
    assert not await put("stale", old)
    assert await put("fresh", new)
    assert sorted(await cache_backend.invalidate(["doc-1"], {"doc-1": deleted}, 60)) == entries("new", "fresh")
    assert not await put("after-deletion", new)
    assert await cache_backend.invalidate(["doc-1"], {"doc-1": new}, 60) == []  # late: stays deleted
    assert not await put("after-deletion", new)
    assert await cache_backend.invalidate(["doc-1"], {"doc-1": again}, 60) == []
    assert await put("again", again)
    assert await cache_backend.invalidate(["doc-1"], {"doc-1": deleted}, 60) == []  # the late deletion keeps it
    assert await cache_backend.get(keyspace.entry(SCOPE, "again")) == b"again"
    assert not await put("deleted", new)


async def test_answers_from_a_copy_older_than_the_newest_declared_knowledge_are_refused(
    cache_backend: CacheBackend, keyspace: KeySpace
) -> None:
    """A replica that invalidated from its copy at knowledge revision 7 declares it: an answer drawn from a copy
    at 6 (a replica that has not polled the document added at 7 yet) is refused, one from 7 or later is not; a
    declaration from an older copy arriving later lowers nothing, and a write that names no revision is unchecked."""

    async def put(name: str, revision: int | None) -> bool:
        return await cache_backend.put(keyspace.entry(SCOPE, name), name.encode(), ttl_s=60, tags=["doc-1"],
                                       scope_id=SCOPE.id, question=name, vector=b"\x00" * 1536,
                                       revision=revision)  # fmt: skip

    assert await put("before", 6)  # nothing declared yet
    assert await cache_backend.invalidate(["doc-2"], {"doc-2": "7:aaa"}, 60, revision=7) == []
    assert not await put("behind", 6)
    assert await put("current", 7)
    assert await put("ahead", 8)
    assert await put("unchecked", None)
    assert await cache_backend.invalidate(["doc-3"], {"doc-3": "5:bbb"}, 60, revision=6) == []  # late, older copy
    assert not await put("behind", 6)
    assert await cache_backend.invalidate(["doc-3"], {"doc-3": "9:ccc"}, 60, revision=9) == []
    assert not await put("was-current", 7)
    assert await put("current", 9)
    assert await cache_backend.invalidate(["doc-3"], {"doc-3": "9:ccc"}, 60) == []  # declares nothing
    assert await put("current-again", 9)
    assert [await cache_backend.get(keyspace.entry(SCOPE, name)) for name in ("before", "behind", "current")] == [
        b"before",
        None,
        b"current",
    ]


async def test_a_reset_forgets_everything_of_the_tenant_and_nothing_of_another(
    cache_backend: CacheBackend, keyspace: KeySpace
) -> None:
    """The knowledge went back (a restored database): entries, indexes, tags, version and knowledge marks of the
    tenant go, the generation moves on (a write computed before is refused), and another tenant (one whose name
    begins with this one's) keeps its own."""
    neighbour = KeySpace(keyspace.namespace, keyspace.tenant + "x")
    other: CacheBackend = MemoryBackend()
    if isinstance(cache_backend, RedisBackend):
        other = RedisBackend(cache_backend._redis, neighbour.prefix)  # the same client and Redis

    async def put(backend: CacheBackend, space: KeySpace, name: str, **checks: object) -> bool:
        return await backend.put(space.entry(SCOPE, name), name.encode(), ttl_s=60, tags=["doc-1"], scope_id=SCOPE.id,
                                 question=name, vector=b"\x00" * 1536, **checks)  # type: ignore[arg-type]  # fmt: skip

    for backend, space in ((cache_backend, keyspace), (other, neighbour)):
        assert await put(backend, space, "old", versions={"doc-1": "9:aaa"})
        await backend.invalidate(["doc-2"], {"doc-2": "9:bbb"}, 60, revision=9)
        assert await backend.knowledge_mark() == 9
    generation = await cache_backend.generation()
    assert await cache_backend.reset() >= 1
    assert await cache_backend.get(keyspace.entry(SCOPE, "old")) is None
    assert (await cache_backend.semantic_entries(SCOPE.id), await cache_backend.tag_members("doc-1")) == ([], [])
    assert await cache_backend.knowledge_mark() is None
    assert await cache_backend.generation() > generation
    assert not await put(cache_backend, keyspace, "in-flight", generation=generation)
    assert await put(cache_backend, keyspace, "restored", versions={"doc-2": "3:ccc"}, revision=3)  # no mark left
    assert await other.get(neighbour.entry(SCOPE, "old")) == b"old"
    assert await other.knowledge_mark() == 9
    assert not await put(other, neighbour, "restored", versions={"doc-2": "3:ccc"}, revision=3)
    if isinstance(other, RedisBackend):
        pattern = neighbour.prefix.replace("{", "\\{").replace("}", "\\}") + "*"
        async for key in other._redis.scan_iter(match=pattern):
            await other._redis.delete(key)


async def test_popularity_and_locks(cache_backend: CacheBackend, keyspace: KeySpace) -> None:
    key = keyspace.entry(SCOPE, "p")
    await cache_backend.bump_popularity({key: 2})
    await cache_backend.bump_popularity({key: 1})
    assert await cache_backend.popularity([key, keyspace.entry(SCOPE, "none")]) == {
        key: 3, keyspace.entry(SCOPE, "none"): 0,
    }  # fmt: skip
    lock = keyspace.lock(key)
    assert await cache_backend.lock(lock, 5, "first")
    assert not await cache_backend.lock(lock, 5, "second")
    await cache_backend.unlock(lock, "second")  # not its lock: it stays
    assert not await cache_backend.lock(lock, 5, "third")
    await cache_backend.unlock(lock, "first")
    assert await cache_backend.lock(lock, 0.2, "fourth")
    await asyncio.sleep(0.4)  # expired: taken by another, whom the late holder must not unlock
    assert await cache_backend.lock(lock, 5, "fifth")
    await cache_backend.unlock(lock, "fourth")
    assert not await cache_backend.lock(lock, 5, "sixth")
    assert not await cache_backend.extend(lock, 5, "fourth")  # nor renew it
    assert await cache_backend.extend(lock, 0.3, "fifth")
    assert await cache_backend.peek(key, lock) == (None, b"fifth")  # the holder's token
    await asyncio.sleep(0.5)
    assert await cache_backend.peek(key, lock) == (None, None)  # lapsed: not renewed in time
    assert not await cache_backend.extend(lock, 5, "fifth")  # a lapsed lock is not revived


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


async def test_a_stored_answer_is_decoded_once_and_a_replaced_one_afresh(
    answer_cache: AnswerCache, embedder: Embedder
) -> None:
    """The decoded-answer memo (keyed by the stored bytes) serves repeats, never a value the store no longer holds."""
    question = "How long does delivery take?"
    (vector,) = embedder.embed([question])
    assert await answer_cache.store(question, vector, SCOPE, answer(question, ["policy-delivery.delivery-times"]))
    first, again = [await answer_cache.lookup_exact(question, SCOPE) for _ in range(2)]
    assert first is not None
    assert again is not None
    assert again.answer is first.answer  # decoded once, shared: so it must not change
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.answer.reply = "changed"  # type: ignore[misc]
    await answer_cache.invalidate(["policy-delivery.delivery-times"])
    replaced = dataclasses.replace(answer(question, ["policy-delivery.delivery-times"]), reply="Two days now.")
    assert await answer_cache.store(question, vector, SCOPE, replaced)
    fresh = await answer_cache.lookup_exact(question, SCOPE)
    assert fresh is not None
    assert fresh.answer.reply == "Two days now."
    for number in range(DECODED_MEMO + 10):  # bounded: the oldest decoded go first
        answer_cache._decode(answer_cache._encode(answer(f"q{number}", ["t"])))
    assert len(answer_cache._decoded) == DECODED_MEMO


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


async def test_a_put_computed_before_an_invalidation_is_refused(
    cache_backend: CacheBackend, keyspace: KeySpace
) -> None:
    """The answer was computed from a document that changed meanwhile: its write must not land after the removal."""
    vector = b"\x00" * 1536
    before = await cache_backend.generation()
    first, late, fresh = (keyspace.entry(SCOPE, name) for name in ("first", "late", "fresh"))
    assert await cache_backend.put(first, b"1", ttl_s=60, tags=["doc-1"], scope_id=SCOPE.id, question="first",
                                   vector=vector, generation=before)  # fmt: skip
    await cache_backend.invalidate(["doc-1"])
    after = await cache_backend.generation()
    assert after != before
    refused = await cache_backend.put(late, b"2", ttl_s=60, tags=["doc-1"], scope_id=SCOPE.id, question="late",
                                      vector=vector, generation=before)  # fmt: skip
    assert refused is False
    assert await cache_backend.get(late) is None
    assert await cache_backend.tag_members("doc-1") == []  # nothing of the refused write, not even its tag
    assert late not in [entry.key for entry in await cache_backend.semantic_entries(SCOPE.id)]
    assert await cache_backend.put(fresh, b"3", ttl_s=60, tags=["doc-1"], scope_id=SCOPE.id, question="fresh",
                                   vector=vector, generation=after)  # fmt: skip
    assert await cache_backend.get(fresh) == b"3"
    await cache_backend.invalidate(["doc-other"])  # any invalidation moves the generation on
    assert await cache_backend.generation() != after


async def test_an_unreadable_entry_is_a_miss_and_is_removed(
    answer_cache: AnswerCache, cache_backend: CacheBackend, embedder: Embedder
) -> None:
    """A value that does not decode (corrupted, or another version's format in a rolling deploy) must not fail the
    request: both tiers treat it as a miss and drop it."""
    question = "How long does delivery take?"
    (vector,) = embedder.embed([question])
    key = answer_cache.entry_key(question, SCOPE)
    for garbage in (b"not zstd", answer_cache._compressor.compress(b'{"question": "q", "unknown_field": 1}')):
        await cache_backend.put(key, garbage, ttl_s=60, tags=["doc-1"], scope_id=SCOPE.id, question=question,
                                vector=vector.tobytes())  # fmt: skip
        assert await answer_cache.lookup_exact(question, SCOPE) is None
        assert await cache_backend.get(key) is None  # removed: the next lookup costs nothing
        await cache_backend.put(key, garbage, ttl_s=60, tags=["doc-1"], scope_id=SCOPE.id, question=question,
                                vector=vector.tobytes())  # fmt: skip
        paraphrase = "How long does the delivery take?"
        assert await answer_cache.lookup_semantic(paraphrase, embedder.embed([paraphrase])[0], SCOPE) is None
        assert await cache_backend.get(key) is None
        # A popular bad entry: re-warming reads its question first; the invalidation still goes through.
        await cache_backend.put(key, garbage, ttl_s=60, tags=["doc-1"], scope_id=SCOPE.id, question=question,
                                vector=vector.tobytes())  # fmt: skip
        await cache_backend.bump_popularity({key: 5})
        _, popular = await answer_cache.invalidate(["doc-1"])
        assert popular == []
        assert await cache_backend.get(key) is None
    assert answer_cache.available  # a bad entry is not a store outage


async def test_the_memory_backend_is_bounded_and_drops_what_expired() -> None:
    """The embedded default runs for weeks: entries leave once expired or beyond the bound, with their tags, index
    entries and popularity."""
    backend = MemoryBackend(max_entries=3)
    space = KeySpace("hl:test", "bounded")
    scopes = [CacheScope("t", "en", "rag-v1", "a", "m1", context=f"turn-{n}") for n in range(5)]
    keys = [space.entry(scope, "q") for scope in scopes]
    for key, scope in zip(keys, scopes, strict=True):
        await backend.put(key, b"v", ttl_s=60, tags=["doc-1"], scope_id=scope.id, question="q", vector=b"\x00" * 1536)
        await backend.bump_popularity({key: 1})
    assert [await backend.get(key) for key in keys] == [None, None, b"v", b"v", b"v"]  # the oldest two left
    assert await backend.tag_members("doc-1") == sorted(keys[2:])
    assert await backend.semantic_version(scopes[0].id) == 0  # their scopes, emptied, are gone
    assert await backend.popularity(keys[:2]) == {keys[0]: 0, keys[1]: 0}
    short = MemoryBackend()
    await short.put(keys[0], b"v", ttl_s=0, tags=["doc-2"], scope_id=scopes[0].id, question="q", vector=b"")
    await short.put(keys[1], b"v", ttl_s=60, tags=["doc-2"], scope_id=scopes[1].id, question="q", vector=b"")
    assert await short.tag_members("doc-2") == [keys[1]]  # the expired one was swept by the next write


async def test_semantic_index_copies_are_bounded(cache_backend: CacheBackend, keyspace: KeySpace) -> None:
    """Each conversation context is a scope; the in-process copies of their indexes must not grow with traffic."""
    settings = CacheSettings(ttl_s=60, threshold=0.8, timeout_s=2.0, max_mirrors=3)
    cache = AnswerCache(cache_backend, keyspace, settings)
    vector = np.ones(384, dtype=np.float32) / np.sqrt(384)
    for turn in range(6):
        scope = CacheScope("t", "en", "rag-v1", "a", "m1", context=f"turn-{turn}")
        assert await cache.store("q", vector, scope, answer("q", ["doc-1"]))
        assert await cache.lookup_semantic("q?", vector, scope) is not None
        assert len(cache._mirrors) <= 3
    for turn in range(20):  # scopes nothing was stored in keep no copy at all
        empty = CacheScope("t", "en", "rag-v1", "a", "m1", context=f"unseen-{turn}")
        assert await cache.lookup_semantic("q?", vector, empty) is None
    assert len(cache._mirrors) <= 3


async def _through_lock(cache: AnswerCache, question: str) -> tuple[CacheHit | None, float]:
    started = time.monotonic()
    async with cache.peer_lock(question, SCOPE) as hit:
        assert not isinstance(hit, Flight)  # (only a request with a relay to follow is given one)
        return hit, time.monotonic() - started


async def test_a_replica_waits_for_a_slow_peer_and_not_for_one_that_gave_up(
    cache_backend: CacheBackend, keyspace: KeySpace
) -> None:
    """Across replicas one provider call per identical miss, however long the call takes: the holder renews its
    short lock while it works, and the waiter gets its answer. A holder that gives up without a cacheable answer
    releases the lock, and the waiter stops waiting at once instead of sitting out a provider's whole deadline."""
    settings = CacheSettings(ttl_s=60, timeout_s=2.0, lock_ttl_s=0.3, lock_wait_s=20)
    holder, waiter = (AnswerCache(cache_backend, keyspace, settings) for _ in range(2))
    vector = np.ones(384, dtype=np.float32) / np.sqrt(384)
    async with holder.peer_lock("slow", SCOPE) as found:
        assert found is None  # the first: it computes
        waiting = asyncio.create_task(_through_lock(waiter, "slow"))
        await asyncio.sleep(1.2)  # four times the lock's TTL: renewed all along, so the waiter still waits
        assert not waiting.done()
        assert await holder.store("slow", vector, SCOPE, answer("slow", ["doc-1"]))
        hit, _ = await asyncio.wait_for(waiting, 5)
    assert hit is not None
    assert hit.answer.reply == "answer to slow"
    patient = CacheSettings(ttl_s=60, timeout_s=2.0, lock_ttl_s=10, lock_wait_s=20)  # a lapse would take 10 s
    holder, waiter = (AnswerCache(cache_backend, keyspace, patient) for _ in range(2))
    async with holder.peer_lock("handoff", SCOPE):
        waiting = asyncio.create_task(_through_lock(waiter, "handoff"))
        await asyncio.sleep(0.3)
    hit, waited = await asyncio.wait_for(waiting, 5)  # released with nothing cached: the waiter computes too
    assert hit is None
    assert waited < 2.0  # released, not lapsed (10 s), and not lock_wait_s (20 s)


class FailingRenewals(MemoryBackend):
    """The first renewals fail at once (a store that refuses connections for a moment); the rest answer."""

    def __init__(self, failing: int) -> None:
        super().__init__()
        self.failing = failing
        self.renewed = 0

    async def extend(self, key: str, ttl_s: float, token: str) -> bool:
        if self.failing:
            self.failing -= 1
            raise ConnectionError("refused")
        self.renewed += 1
        return await super().extend(key, ttl_s, token)


async def test_failed_renewals_neither_drop_the_lock_nor_switch_the_cache_off(keyspace: KeySpace) -> None:
    """A failed renewal is tried again soon, before the lock lapses (two in a row at the regular pace would let it
    lapse), and it is not an error of the cache: a lookup's failure bypasses the store for a while, which a
    background renewal must not do to every request."""
    backend = FailingRenewals(failing=2)
    cache = AnswerCache(backend, keyspace, CacheSettings(ttl_s=60, lock_ttl_s=0.6, bypass_s=30))
    lock = keyspace.lock(cache.entry_key("q", SCOPE))
    async with cache.peer_lock("q", SCOPE) as found:
        assert found is None
        await asyncio.sleep(1.5)  # two renewals failed, the next ones went through
        assert backend.failing == 0
        assert backend.renewed >= 2
        assert not await backend.lock(lock, 5, "someone")  # still held
        assert cache.available


async def test_a_dead_holders_lock_lapses_and_its_late_release_frees_nobody_elses(
    cache_backend: CacheBackend, keyspace: KeySpace
) -> None:
    settings = CacheSettings(ttl_s=60, timeout_s=2.0, lock_ttl_s=0.3, lock_wait_s=20)
    cache = AnswerCache(cache_backend, keyspace, settings)
    lock = keyspace.lock(cache.entry_key("q", SCOPE))
    assert await cache_backend.lock(lock, 0.3, "crashed")  # a replica that died holding it: nobody renews it
    hit, waited = await asyncio.wait_for(_through_lock(cache, "q"), 5)
    assert hit is None
    assert waited < 2.0  # within about the lock's TTL, not lock_wait_s
    async with cache.peer_lock("q", SCOPE):  # a new holder
        await cache_backend.unlock(lock, "crashed")  # the dead one's late release
        assert not await cache_backend.lock(lock, 5, "someone")
    assert await cache_backend.lock(lock, 5, "someone")  # released on the way out


async def test_a_burst_waits_for_connections_instead_of_failing_on_a_cluster(
    cache_cluster_url: str, keyspace: KeySpace
) -> None:
    """redis-py's cluster client raises at once when a node's pool is exhausted; the cache would take that for an
    outage (and send everyone to the providers) exactly under load. Calls wait for a connection instead."""
    client = create_redis(cache_cluster_url, timeout_s=2.0, max_connections=4)
    backend = RedisBackend(client, keyspace.prefix)
    try:
        key = keyspace.entry(SCOPE, "burst")
        await backend.put(key, b"v", ttl_s=60, tags=[], scope_id=SCOPE.id, question="burst", vector=b"")
        values = await asyncio.gather(*(backend.get(key) for _ in range(60)))
        assert values == [b"v"] * 60
    finally:
        async for found in client.scan_iter(match=keyspace.prefix.replace("{", "\\{").replace("}", "\\}") + "*"):
            await client.delete(found)
        await backend.close()


async def test_redis_index_fields_of_expired_entries_are_pruned(
    keyspace: KeySpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hash fields cannot expire and a busy scope's index keeps being extended: without pruning, every question
    ever asked there stays in it, and each replica re-reads them all."""
    client = create_redis(REDIS_URL, timeout_s=1.0)
    backend = RedisBackend(client, keyspace.prefix)
    index = f"{keyspace.prefix}:s:{SCOPE.id}"
    vector = np.ones(384, dtype=np.float32).tobytes()
    try:
        short, lasting = keyspace.entry(SCOPE, "short"), keyspace.entry(SCOPE, "lasting")
        await backend.put(short, b"v", ttl_s=1, tags=[], scope_id=SCOPE.id, question="short", vector=vector)
        await backend.put(lasting, b"v", ttl_s=60, tags=[], scope_id=SCOPE.id, question="lasting", vector=vector)
        await client.hset(index, "unreadable", b"question" + VECTOR_SEPARATOR + b"\xff\xfe")
        assert sorted(e.key for e in await backend.semantic_entries(SCOPE.id)) == sorted([lasting, short])
        await asyncio.sleep(1.2)
        assert [e.key for e in await backend.semantic_entries(SCOPE.id)] == [lasting]
        assert await client.hkeys(index) == [lasting.encode()]  # gone from Redis too
        monkeypatch.setattr(redis_backend, "POPULAR_KEPT", 3)
        await backend.bump_popularity({f"key-{n}": n + 1 for n in range(5)})
        kept = await client.zrange(f"{keyspace.prefix}:pop", 0, -1)
        assert sorted(kept) == [b"key-2", b"key-3", b"key-4"]  # the best counted stay
    finally:
        async for key in client.scan_iter(match=keyspace.prefix.replace("{", "\\{").replace("}", "\\}") + "*"):
            await client.delete(key)
        await backend.close()


async def test_tag_sets_shed_the_keys_of_expired_entries(cache_backend: CacheBackend, keyspace: KeySpace) -> None:
    """A busy tag never expires; without shedding, its invalidation (one blocking script on Redis) would walk every
    answer ever tagged with it."""
    vector = b"\x00" * 1536
    old = [keyspace.entry(SCOPE, f"old-{n}") for n in range(10)]
    for key in old:
        await cache_backend.put(key, b"v", ttl_s=1, tags=["busy"], scope_id=SCOPE.id, question="old", vector=vector)
    await asyncio.sleep(1.2)
    new = [keyspace.entry(SCOPE, f"new-{n}") for n in range(5)]
    for key in new:
        await cache_backend.put(key, b"v", ttl_s=60, tags=["busy"], scope_id=SCOPE.id, question="new", vector=vector)
    members = await cache_backend.tag_members("busy")
    assert set(new) <= set(members)
    assert len(members) < len(old) + len(new)  # writes dropped expired members (Redis samples a few per write)


async def test_a_write_with_a_shorter_ttl_leaves_no_longer_lived_entry_out_of_its_index_and_tags(
    cache_backend: CacheBackend, keyspace: KeySpace
) -> None:
    """Replicas mid-way through a change of CACHE_TTL_S write with different TTLs: the shorter write cut the tag
    hash's and the index's expiry below the longer-lived entry's, which no invalidation reached once they had
    expired (found by a review, session 26)."""
    vector = b"\x00" * 1536
    lasting, brief = keyspace.entry(SCOPE, "lasting"), keyspace.entry(SCOPE, "brief")
    await cache_backend.put(lasting, b"v", ttl_s=60, tags=["doc-d"], scope_id=SCOPE.id, question="l", vector=vector)
    await cache_backend.put(brief, b"v", ttl_s=1, tags=["doc-d"], scope_id=SCOPE.id, question="b", vector=vector)
    await asyncio.sleep(2.3)  # past twice the brief one's TTL
    assert lasting in [entry.key for entry in await cache_backend.semantic_entries(SCOPE.id)]
    assert lasting in await cache_backend.invalidate(["doc-d"])
    assert await cache_backend.get(lasting) is None


async def test_scope_ids_name_every_scope_with_entries(cache_backend: CacheBackend, keyspace: KeySpace) -> None:
    """What an invalidation by retrieval walks: every scope of the tenant, and no other tenant's."""
    scopes = [SCOPE, dataclasses.replace(SCOPE, locale="fr"), dataclasses.replace(SCOPE, owner="user:1:abc")]
    for index, scope in enumerate(scopes):
        await cache_backend.put(keyspace.entry(scope, f"q{index}"), b"v", ttl_s=60, tags=["doc-1"],
                                scope_id=scope.id, question=f"q{index}", vector=b"\x00" * 1536)  # fmt: skip
    if isinstance(cache_backend, RedisBackend):  # another tenant on the same store is not listed
        neighbour = KeySpace("hl:test", keyspace.tenant + "x")
        other = RedisBackend(cache_backend._redis, neighbour.prefix)
        await other.put(neighbour.entry(SCOPE, "n"), b"v", ttl_s=60, tags=["doc-1"], scope_id="elsewhere",
                        question="n", vector=b"\x00" * 1536)  # fmt: skip
    assert sorted(await cache_backend.scope_ids()) == sorted(scope.id for scope in scopes)
    await cache_backend.invalidate(["doc-1"])
    assert await cache_backend.scope_ids() == []


async def test_scopes_leave_the_listing_when_their_index_is_emptied_or_expires(
    cache_backend: CacheBackend, keyspace: KeySpace
) -> None:
    """The listing reads the tenant's scope set, not the keyspace: a scope whose last entry was forgotten, or whose
    index expired, is not listed (and, on Redis, leaves the set, which itself expires)."""
    kept, forgotten, brief = SCOPE, dataclasses.replace(SCOPE, locale="de"), dataclasses.replace(SCOPE, locale="fr")
    for scope, ttl_s in ((kept, 60), (forgotten, 60), (brief, 1)):
        await cache_backend.put(keyspace.entry(scope, "q"), b"v", ttl_s=ttl_s, tags=["doc-1"], scope_id=scope.id,
                                question="q", vector=b"\x00" * 1536)  # fmt: skip
    assert sorted(await cache_backend.scope_ids()) == sorted(scope.id for scope in (kept, forgotten, brief))
    await cache_backend.forget(keyspace.entry(forgotten, "q"))
    await asyncio.sleep(2.2)  # the brief scope's index lives twice its entry's TTL
    assert await cache_backend.scope_ids() == [kept.id]
    if isinstance(cache_backend, RedisBackend):
        client = cache_backend._redis
        assert await client.zrange(f"{keyspace.prefix}:scopes", 0, -1) == [kept.id.encode()]
        assert 0 < await client.ttl(f"{keyspace.prefix}:scopes") <= 120


async def test_a_write_prunes_expired_scopes_from_the_set(keyspace: KeySpace) -> None:
    """Listing happens only on a document change; between two, every follow-up context and personal owner adds a
    scope, so each write drops the scopes whose index has expired (the set itself never expires while busy)."""
    cache_backend = RedisBackend(create_redis(REDIS_URL, timeout_s=1.0), keyspace.prefix)
    brief, later = dataclasses.replace(SCOPE, locale="fr"), dataclasses.replace(SCOPE, locale="de")
    await cache_backend.put(keyspace.entry(brief, "q"), b"v", ttl_s=1, tags=["doc-1"], scope_id=brief.id,
                            question="q", vector=b"\x00" * 1536)  # fmt: skip
    await asyncio.sleep(2.2)  # past the brief scope's index (twice its entry's TTL)
    await cache_backend.put(keyspace.entry(later, "q"), b"v", ttl_s=60, tags=["doc-1"], scope_id=later.id,
                            question="q", vector=b"\x00" * 1536)  # fmt: skip
    try:
        assert await cache_backend._redis.zrange(f"{keyspace.prefix}:scopes", 0, -1) == [later.id.encode()]
    finally:
        await cache_backend._redis.delete(*(f"{keyspace.prefix}:{suffix}" for suffix in ("scopes", "gen")))
        await cache_backend.invalidate(["doc-1"])
        await cache_backend.close()


async def test_a_scope_is_dropped_from_the_set_only_if_its_index_is_still_gone(keyspace: KeySpace) -> None:
    """Listing checks the indexes with pipelined reads, then drops the scopes it found without one; a write in
    between recreates an index, and that scope must stay (it would be missed by every later listing)."""
    backend = RedisBackend(create_redis(REDIS_URL, timeout_s=1.0), keyspace.prefix)
    scopes = f"{keyspace.prefix}:scopes"
    try:
        await backend.put(keyspace.entry(SCOPE, "q"), b"v", ttl_s=60, tags=["doc-1"], scope_id=SCOPE.id,
                          question="q", vector=b"\x00" * 1536)  # fmt: skip
        await backend._redis.zadd(scopes, {"ghost": time.time() + 60})
        # Both were "found without an index" by a listing; since then SCOPE's index was (re)written.
        assert await backend._drop_scopes(keys=[scopes], args=[keyspace.prefix, "ghost", SCOPE.id]) == 1
        assert await backend._redis.zrange(scopes, 0, -1) == [SCOPE.id.encode()]
        assert await backend.scope_ids() == [SCOPE.id]
    finally:
        await backend.invalidate(["doc-1"])
        await backend._redis.delete(scopes)
        await backend.close()


async def test_forgetting_an_entry_as_found_keeps_one_written_since(
    cache_backend: CacheBackend, keyspace: KeySpace
) -> None:
    """A lookup that found an entry expired (or unreadable) removes it and its index field, but not an answer
    another request or replica has written under the same key since (found by a review, session 18)."""
    key = keyspace.entry(SCOPE, "q")

    async def put(value: bytes) -> None:
        await cache_backend.put(key, value, ttl_s=60, tags=["doc-1"], scope_id=SCOPE.id, question="q",
                                vector=b"\x00" * 1536)  # fmt: skip

    await put(b"fresh")
    await cache_backend.forget(key, unless=None)  # found gone, but written again since
    await cache_backend.forget(key, unless=b"unreadable")  # found unreadable, but replaced since
    assert await cache_backend.get(key) == b"fresh"
    assert [entry.key for entry in await cache_backend.semantic_entries(SCOPE.id)] == [key]
    await cache_backend.forget(key, unless=b"fresh")  # still as found: goes, with its index field
    assert await cache_backend.get(key) is None
    assert await cache_backend.semantic_entries(SCOPE.id) == []
    await put(b"again")
    await cache_backend.forget(key)  # anyway
    assert await cache_backend.get(key) is None
    assert await cache_backend.semantic_entries(SCOPE.id) == []


async def test_a_slow_index_read_costs_a_semantic_hit_not_the_whole_cache(
    keyspace: KeySpace, embedder: Embedder
) -> None:
    """A scope whose index takes longer to read than a lookup may wait (a busy shared scope: every write moves its
    version, and each replica then reads it whole): the semantic lookup misses this once, the read goes on for the
    next one, and the exact tier stays on. It was a cache-wide bypass for seconds (found by a review, session 18)."""
    client = create_redis(REDIS_URL, timeout_s=2.0)
    backend = RedisBackend(client, keyspace.prefix)
    cache = AnswerCache(backend, keyspace, CacheSettings(ttl_s=60, threshold=0.8, timeout_s=0.03), SemanticGuard())
    try:
        stored = "How long does delivery take?"
        await cache.store(stored, embedder.embed([stored])[0], SCOPE, answer(stored, ["doc-1"]))
        filler = np.zeros(384, dtype=np.float32)
        filler[0] = 1.0  # far from every question: never a candidate
        puts = [
            backend.put(keyspace.entry(SCOPE, f"filler {n}"), b"x", ttl_s=60, tags=["doc-2"], scope_id=SCOPE.id,
                        question=f"filler {n}", vector=filler.tobytes())
            for n in range(8000)
        ]  # fmt: skip
        for start in range(0, len(puts), 500):
            await asyncio.gather(*puts[start : start + 500])
        paraphrase = "how long will my delivery take"
        vector = embedder.embed([paraphrase])[0]
        assert await cache.lookup_semantic(paraphrase, vector, SCOPE) is None  # 8,001 entries: more than 30 ms
        assert cache.available  # not bypassed
        exact = await cache.lookup_exact(stored, SCOPE)
        assert exact is not None
        assert exact.tier == "exact"
        for _ in range(200):  # the read went on: a later lookup finds the copy it left
            hit = await cache.lookup_semantic(paraphrase, vector, SCOPE)
            if hit is not None:
                break
            await asyncio.sleep(0.05)
        assert hit is not None
        assert hit.matched_question == stored
    finally:
        async for key in client.scan_iter(match=keyspace.prefix.replace("{", "\\{").replace("}", "\\}") + "*"):
            await client.delete(key)
        await cache.close()


class TimedIndexReads(RedisBackend):
    """The real Redis backend, counting its index reads (each made to take a while, as a big index's does)."""

    def __init__(self, *args: object, lasts_s: float = 0.02, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lasts_s = lasts_s
        self.reads = self.in_flight = self.most_at_once = 0

    async def semantic_entries(self, scope_id: str) -> list[IndexedQuestion]:
        """Reads the index, then takes a while to hand it over (a big index's transfer and decoding)."""
        self.reads += 1
        self.in_flight += 1
        self.most_at_once = max(self.most_at_once, self.in_flight)
        try:
            entries = await super().semantic_entries(scope_id)
            await asyncio.sleep(self.lasts_s)
            return entries
        finally:
            self.in_flight -= 1


async def _purge(client: Redis | RedisCluster, keyspace: KeySpace) -> None:
    async for key in client.scan_iter(match=keyspace.prefix.replace("{", "\\{").replace("}", "\\}") + "*"):
        await client.delete(key)


async def test_a_busy_scope_reads_its_index_once_at_a_time(keyspace: KeySpace, embedder: Embedder) -> None:
    """Every write moves a scope's version; a read of the whole index per version piled up under writes and lookups
    (found by a review, session 19). One read per scope at a time, and the lookups still find what was stored."""
    client = create_redis(REDIS_URL, timeout_s=2.0)
    backend = TimedIndexReads(client, keyspace.prefix)
    cache = AnswerCache(backend, keyspace, CacheSettings(ttl_s=60, threshold=0.8, timeout_s=1.0), SemanticGuard())
    stored = "How long does delivery take?"
    paraphrase = "how long will my delivery take"
    vector = embedder.embed([paraphrase])[0]
    filler = np.zeros(384, dtype=np.float32)
    filler[0] = 1.0  # far from every question: never a candidate
    try:
        await cache.store(stored, embedder.embed([stored])[0], SCOPE, answer(stored, ["doc-1"]))

        async def write(n: int) -> None:
            await backend.put(keyspace.entry(SCOPE, f"filler {n}"), b"x", ttl_s=60, tags=["doc-2"],
                              scope_id=SCOPE.id, question=f"filler {n}", vector=filler.tobytes())  # fmt: skip

        rounds = [asyncio.gather(write(n), *(cache.lookup_semantic(paraphrase, vector, SCOPE) for _ in range(4)))
                  for n in range(30)]  # fmt: skip
        results = await asyncio.gather(*rounds)
        hits = [hit for _write, *lookups in results for hit in lookups if hit is not None]
        assert backend.most_at_once == 1
        assert backend.reads < 30  # not one per version
        assert hits
        assert all(hit.matched_question == stored for hit in hits)
    finally:
        await _purge(client, keyspace)
        await cache.close()


async def test_an_index_copy_follows_a_store_whose_counter_started_again(
    keyspace: KeySpace, embedder: Embedder
) -> None:
    """A flushed or restarted Redis counts a scope's versions from 1 again: the copy read then must be kept (it was
    not, being 'older' than the copy before, so every lookup read the whole index again; a review, session 19)."""
    client = create_redis(REDIS_URL, timeout_s=2.0)
    backend = TimedIndexReads(client, keyspace.prefix)
    cache = AnswerCache(backend, keyspace, CacheSettings(ttl_s=60, threshold=0.8, timeout_s=1.0), SemanticGuard())
    try:
        for question in ("Do you deliver on Sundays?", "Is there a minimum order?", "Can I pay with PayPal?"):
            await cache.store(question, embedder.embed([question])[0], SCOPE, answer(question, ["doc-1"]))
        probe = "do you deliver on a sunday"
        assert await cache.lookup_semantic(probe, embedder.embed([probe])[0], SCOPE) is not None
        await _purge(client, keyspace)  # the store starts again: version 1 < the copy's 3
        stored, paraphrase = "How long does delivery take?", "how long will my delivery take"
        await cache.store(stored, embedder.embed([stored])[0], SCOPE, answer(stored, ["doc-1"]))
        vector = embedder.embed([paraphrase])[0]
        for _ in range(3):
            hit = await cache.lookup_semantic(paraphrase, vector, SCOPE)
            assert hit is not None
            assert hit.matched_question == stored
        assert backend.reads == 2  # one read before the restart, one after
    finally:
        await _purge(client, keyspace)
        await cache.close()


async def test_a_lookup_that_saw_a_newer_version_takes_no_hit_from_an_older_read(
    keyspace: KeySpace, embedder: Embedder
) -> None:
    """A lookup joining an index read begun before a closer question was written would match without weighing it:
    the margin rule needs every close question with a different answer (found by a review, session 19). It waits
    for one read after it instead (the next review: taking no hit at all cost busy scopes most of theirs)."""
    client = create_redis(REDIS_URL, timeout_s=2.0)
    backend = TimedIndexReads(client, keyspace.prefix, lasts_s=0.3)
    settings = CacheSettings(ttl_s=60, threshold=0.8, margin=0.1, timeout_s=1.0)
    cache = AnswerCache(backend, keyspace, settings, SemanticGuard())
    older, closer, probe = "How long does delivery take?", "How long will delivery take?", "How long will delivery take"
    vector = embedder.embed([probe])[0]
    try:
        await cache.store(older, embedder.embed([older])[0], SCOPE, answer(older, ["doc-1"]))
        first = asyncio.create_task(cache.lookup_semantic(probe, vector, SCOPE))  # starts a read of the index
        await asyncio.sleep(0.1)  # the read has the index (one question), and takes a while to hand it over
        assert backend.in_flight == 1
        await cache.store(closer, embedder.embed([closer])[0], SCOPE, answer(closer, ["doc-2"]))  # another answer
        # Saw the newer version, joined the older read, then waited for one read after it: never the older match.
        joined = await cache.lookup_semantic(probe, vector, SCOPE)
        assert joined is None or joined.matched_question == closer
        started = await first  # saw the version its read began at: may use it
        assert started is not None
        assert started.matched_question == older
        assert (backend.reads, backend.most_at_once) == (2, 1)
        again = await cache.lookup_semantic(probe, vector, SCOPE)  # the newest copy serves without another read
        assert (again and again.matched_question) == (joined and joined.matched_question)
        assert backend.reads == 2
    finally:
        await _purge(client, keyspace)
        await cache.close()


async def test_relay_streams_are_read_in_order_after_an_entry_and_lapse(
    cache_backend: CacheBackend, keyspace: KeySpace
) -> None:
    """A relay stream (cache.relay): nothing is added while nobody reads it; a follower's poll reads the entry, the
    lock's holder and the store's marks, and counts it as a reader for a while; entries come back in the order
    they were added, from the first or after a given one; the stream lapses its TTL after its last addition."""
    key = keyspace.entry(SCOPE, "how long does delivery take")
    lock = keyspace.lock(key)
    stream = keyspace.relay(key, b"holder")
    assert not await cache_backend.relay_append(stream, [(b"t", b"nobody reads this")], 5)
    assert await cache_backend.lock(lock, 5, "holder")
    polled = await cache_backend.relay_poll(key, lock, stream, RELAY_START, 0.5)
    assert (polled.value, polled.holder, polled.entries) == (None, b"holder", [])
    assert polled.marks == await cache_backend.marks()
    assert await cache_backend.relay_append(stream, [(b"t", b"Standard "), (b"t", "délivery".encode())], 5)
    first = (await cache_backend.relay_poll(key, lock, stream, RELAY_START, 0.5)).entries
    assert [(kind, payload) for _, kind, payload in first] == [(b"t", b"Standard "), (b"t", "délivery".encode())]
    assert await cache_backend.relay_read(stream, RELAY_START) == first
    assert await cache_backend.relay_append(stream, [(b"e", b"{}")], 0.3)
    after = await cache_backend.relay_read(stream, first[-1][0])
    assert [(kind, payload) for _, kind, payload in after] == [(b"e", b"{}")]
    assert await cache_backend.relay_read(stream, after[-1][0]) == []
    other = keyspace.relay(key, b"another holder")
    assert await cache_backend.relay_read(other, RELAY_START) == []  # each holder's call has its own
    await asyncio.sleep(0.6)
    assert await cache_backend.relay_read(stream, RELAY_START) == []  # lapsed with the last addition's TTL
    assert not await cache_backend.relay_append(stream, [(b"t", b"late")], 5)  # its reader's mark lapsed too
    generation, invalidations, knowledge = await cache_backend.marks()
    assert knowledge == -1  # no invalidation declared a knowledge revision yet
    await cache_backend.invalidate(["doc-1"], {"doc-1": "7:a"}, mark_ttl_s=60, revision=7)
    assert await cache_backend.marks() == (generation, invalidations + 1, 7)  # a version's change: counted, declared
    await cache_backend.invalidate(["doc-1"])
    assert await cache_backend.marks() == (generation + 1, invalidations + 2, 7)  # a whole tag: the generation too
