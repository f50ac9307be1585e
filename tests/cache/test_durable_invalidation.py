"""A knowledge change whose cached answers the store did not confirm removing is never served stale.

Found by a review (session 18): the tags of an unconfirmed invalidation were kept in the memory of the process that
made the change only. A second PUT of the same text answered 200 `removed: 0` while Redis was still down, the old
answer was served again once Redis was back until the next poll, and a replica restarted after the failed PUT (or
started after it) served it for the whole TTL. The change now waits in the database's outbox (`kb_changes`) until the
store confirms it, and no replica serves a cached answer meanwhile. A PUT on a slow store, which searched every
conversation's index one round trip at a time (23 s for 100 of them at 0.2 s a trip), now has a budget.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from helpline.cache.keys import CacheScope
from helpline.cache.service import CacheUnavailable
from helpline.knowledge.documents import SourceDocument
from helpline.knowledge.embeddings import Embedder
from helpline.providers.extractive import ExtractiveProvider
from helpline.providers.fake import FakeProvider, FakeReply
from helpline.store import repositories
from helpline.store.repositories import KnowledgeRepository
from tests.api.test_streaming import parse_sse
from tests.cache.test_cache_api import ADMIN, DELIVERY_TIMES, ask, settings_through
from tests.conftest import Api, make_settings, running_api
from tests.fakes.tcp_proxy import TcpProxy

QUESTION = "How long does delivery take?"
NEW_TEXT = {"title": "Delivery times", "text": "Every order now arrives within 2 hours.", "kind": "policy"}
OLD = "Two working days."
NEW = "Within 2 hours."


async def put_delivery_times(api: Api) -> tuple[int, dict[str, object]]:
    response = await api.client.put(f"/v1/admin/kb/documents/{DELIVERY_TIMES}", json=NEW_TEXT, headers=ADMIN)
    body: dict[str, object] = response.json()
    return response.status_code, body


async def cached_old_answer(api: Api, fake: FakeProvider) -> None:
    fake.default = FakeReply(text=OLD)
    await ask(api, QUESTION)
    assert (await ask(api, QUESTION))["cache"] == "exact"
    fake.default = FakeReply(text=NEW)


def lift_lookup_bypass(api: Api) -> None:
    """The lookups' own short bypass after an outage (a cache-wide pause of a few seconds) is not under test."""
    assert api.services.cache is not None
    api.services.cache._bypass_until = 0.0


@asynccontextmanager
async def answered(sqlite_url: str, embedder: Embedder, proxy: TcpProxy) -> AsyncIterator[Api]:
    """A replica (Redis through ``proxy``) with the old answer cached; its provider answers NEW from then on."""
    fake = FakeProvider(name="gemini", model="gemini-test")
    async with running_api(settings_through(proxy, sqlite_url, "t" + secrets.token_hex(6)), embedder,
                           [fake, ExtractiveProvider(0.5)]) as api:  # fmt: skip
        await cached_old_answer(api, fake)
        yield api


@asynccontextmanager
async def answered_then_blackholed(sqlite_url: str, embedder: Embedder, proxy: TcpProxy) -> AsyncIterator[Api]:
    """As :func:`answered`, then Redis blackholed."""
    async with answered(sqlite_url, embedder, proxy) as api:
        proxy.blackhole()
        yield api


async def test_a_change_the_store_did_not_confirm_is_never_served_stale(
    sqlite_url: str, embedder: Embedder, blackhole_redis: TcpProxy
) -> None:
    async with answered_then_blackholed(sqlite_url, embedder, blackhole_redis) as api:
        for attempt in (1, 2):  # the second, same text: not "200, removed 0" while nothing was removed
            status, body = await put_delivery_times(api)
            assert status == 503, (attempt, body)
            assert body["error"]["code"] == "cache_unavailable"  # type: ignore[index]
        assert api.services.cache is not None
        assert api.services.cache.reads_held
        blackhole_redis.pass_through()
        lift_lookup_bypass(api)
        # Redis is back and the next poll has not run: the old answer is not served.
        answer = await ask(api, QUESTION)
        assert (answer["cache"], answer["reply"]) == ("miss", NEW)
        assert api.services.invalidator is not None
        await api.services.invalidator.poll()  # what the watcher does (every second while a removal is owed)
        assert not api.services.cache.reads_held
        assert await KnowledgeRepository(api.services.sessions).pending_changes() == {}
        answer = await ask(api, QUESTION)
        assert (answer["cache"], answer["reply"]) == ("exact", NEW)


async def test_a_replica_started_after_an_unconfirmed_change_removes_its_answers_first(
    sqlite_url: str, embedder: Embedder, blackhole_redis: TcpProxy
) -> None:
    """The replica that made the change stopped before the store answered; the next one starts with the new text
    (so its copy of the knowledge sees no change) and must still not serve the answers drawn on the old one."""
    settings = settings_through(blackhole_redis, sqlite_url, "t" + secrets.token_hex(6))
    fake = FakeProvider(name="gemini", model="gemini-test")
    async with running_api(settings, embedder, [fake, ExtractiveProvider(0.5)]) as api:
        await cached_old_answer(api, fake)
        blackhole_redis.blackhole()
        status, _body = await put_delivery_times(api)
        assert status == 503
    blackhole_redis.pass_through()
    fresh = FakeProvider(name="gemini", model="gemini-test", default=FakeReply(text=NEW))
    async with running_api(settings, embedder, [fresh, ExtractiveProvider(0.5)]) as api:
        assert await KnowledgeRepository(api.services.sessions).pending_changes() == {}  # drained at start
        answer = await ask(api, QUESTION)
        assert (answer["cache"], answer["reply"]) == ("miss", NEW)


async def test_a_document_put_on_a_slow_store_answers_within_its_budget(
    sqlite_url: str, embedder: Embedder, blackhole_redis: TcpProxy
) -> None:
    """Redis slow but within each call's timeout, and many conversations with a cached follow-up (a scope each):
    the admin's request hears 503 within its budget, reads are held, and the watcher finishes the job."""
    tenant = "t" + secrets.token_hex(6)
    fake = FakeProvider(name="gemini", model="gemini-test")
    settings = settings_through(blackhole_redis, sqlite_url, tenant)
    async with running_api(settings, embedder, [fake, ExtractiveProvider(0.5)]) as api:
        cache = api.services.cache
        assert cache is not None
        cache.settings = dataclasses.replace(cache.settings, invalidate_timeout_s=0.5)  # a budget of 2.5 s
        (vector,) = embedder.embed([QUESTION])
        for n in range(60):  # 60 conversations, each a scope whose index the search reads
            scope = CacheScope(tenant, "", "rag-v1", "a", "m", context=f"conversation-{n}")
            await cache.backend.put(
                cache.keys.entry(scope, "q"), b"x", ttl_s=600, tags=["faq-x"], scope_id=scope.id, question=QUESTION,
                vector=vector.tobytes(),
            )  # fmt: skip
        blackhole_redis.add_latency(0.05)  # each way: 0.1 s a round trip, within each call's 0.5 s; 6 s for all 60
        started = time.perf_counter()
        status, body = await put_delivery_times(api)
        took = time.perf_counter() - started
        assert status == 503, body
        assert took < 2.5 + 2 * 0.5 + 1.0, f"the PUT took {took:.1f} s"  # budget, the tag step, a loaded machine
        assert cache.reads_held
        blackhole_redis.pass_through()
        assert api.services.invalidator is not None
        await api.services.invalidator.poll()
        assert not cache.reads_held


@pytest.mark.parametrize("mode", ["blackhole", "cut", "latency"])
async def test_a_streamed_question_during_a_redis_outage_is_answered_in_full(
    sqlite_url: str, embedder: Embedder, blackhole_redis: TcpProxy, mode: str
) -> None:
    """The streamed path makes more store calls than the plain one (lookup, the cross-replica lock, its renewal, the
    write once complete): each is bounded and the stream ends with its answer, fast, with Redis blackholed, cut or
    slow (tested for plain requests in test_cache_api.py)."""
    fake = FakeProvider(name="gemini", model="gemini-test", default=FakeReply(text=NEW))
    settings = settings_through(blackhole_redis, sqlite_url, "t" + secrets.token_hex(6))
    async with running_api(settings, embedder, [fake, ExtractiveProvider(0.5)]) as api:
        await ask(api, "Do you deliver on Sundays?")  # healthy: connected
        blackhole_redis.add_latency(1.0) if mode == "latency" else getattr(blackhole_redis, mode)()
        for question in (QUESTION, QUESTION, "Is there a minimum order?"):
            started = time.perf_counter()
            response = await api.client.post("/v1/chat", json={"message": question, "stream": True})
            took = time.perf_counter() - started
            assert response.status_code == 200
            events = parse_sse(response.text)
            assert events[-1][0] == "done", events[-1]
            assert events[-1][1]["reply"] == NEW
            assert "".join(str(data["text"]) for kind, data in events if kind == "delta") == NEW
            assert took < 1.5, f"{mode}: the stream took {took:.1f} s"


async def test_a_document_deleted_during_an_outage_is_not_served_once_redis_is_back(
    sqlite_url: str, embedder: Embedder, blackhole_redis: TcpProxy
) -> None:
    async with answered_then_blackholed(sqlite_url, embedder, blackhole_redis) as api:
        response = await api.client.delete(f"/v1/admin/kb/documents/{DELIVERY_TIMES}", headers=ADMIN)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "cache_unavailable"
        assert await KnowledgeRepository(api.services.sessions).get(DELIVERY_TIMES) is None  # deleted all the same
        blackhole_redis.pass_through()
        lift_lookup_bypass(api)
        assert (await ask(api, QUESTION))["reply"] == NEW  # not the old answer, drawn on the deleted policy
        assert api.services.invalidator is not None
        await api.services.invalidator.poll()
        assert api.services.cache is not None
        assert not api.services.cache.reads_held
        assert await KnowledgeRepository(api.services.sessions).pending_changes() == {}


async def test_a_put_behind_a_running_drain_answers_within_its_budget_and_holds_reads(
    sqlite_url: str, embedder: Embedder, blackhole_redis: TcpProxy
) -> None:
    """The watcher's round has no budget (it finishes a long search of the indexes): a PUT waited behind it without
    limit. It waits within its budget, answers 503, and no cached answer is served until a later round has read
    its change from the outbox (found by a review, session 19)."""
    async with answered(sqlite_url, embedder, blackhole_redis) as api:
        cache, invalidator = api.services.cache, api.services.invalidator
        assert cache is not None
        assert invalidator is not None
        cache.settings = dataclasses.replace(cache.settings, invalidate_timeout_s=0.2)  # a budget of 1 s
        await invalidator._polling.acquire()  # a round under way (what a watcher's long search looks like)
        try:
            started = time.perf_counter()
            status, body = await put_delivery_times(api)
            took = time.perf_counter() - started
            assert status == 503, body
            assert 1.0 <= took < 2.5, f"the PUT took {took:.1f} s"
            assert cache.reads_held
            answer = await ask(api, QUESTION)
            assert (answer["cache"], answer["reply"]) == ("miss", NEW)
        finally:
            invalidator._polling.release()
        await invalidator.poll()
        assert not cache.reads_held
        assert await KnowledgeRepository(api.services.sessions).pending_changes() == {}
        await ask(api, QUESTION)
        answer = await ask(api, QUESTION)
        assert (answer["cache"], answer["reply"]) == ("exact", NEW)


async def test_a_cancelled_sync_leaves_what_it_owed_owed(
    sqlite_url: str, embedder: Embedder, blackhole_redis: TcpProxy
) -> None:
    """A sync cancelled while the store does not answer (an admin whose request went away, a shutdown): an
    invalidation it was retrying is kept, and reads are held (it dropped the retried tags and left reads served;
    found by a review, session 19)."""
    async with answered_then_blackholed(sqlite_url, embedder, blackhole_redis) as api:
        cache, invalidator = api.services.cache, api.services.invalidator
        assert cache is not None
        assert invalidator is not None
        response = await api.client.post("/v1/admin/cache/invalidate", json={"tags": ["policy"]}, headers=ADMIN)
        assert response.status_code == 503, response.text
        assert invalidator.pending == {"policy": None}
        cache.hold_reads(False)  # as if a round had ended before this one: what matters is what this one leaves
        await api.services.knowledge.upsert(SourceDocument(DELIVERY_TIMES, "policy", "Delivery times", NEW, {}))
        sync = asyncio.create_task(invalidator.sync())
        await asyncio.sleep(0.5)  # reading the outbox, then waiting on the blackholed store
        assert not sync.done()
        sync.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sync
        assert invalidator.pending.get("policy", "lost") is None  # still a whole-tag invalidation
        assert cache.reads_held
        blackhole_redis.pass_through()
        lift_lookup_bypass(api)
        await invalidator.poll()
        assert (invalidator.owed, cache.reads_held) == (False, False)
        assert (await ask(api, QUESTION))["reply"] == NEW


async def test_a_database_failing_during_a_drain_is_named_and_reads_stay_held(
    sqlite_url: str, embedder: Embedder, blackhole_redis: TcpProxy
) -> None:
    """The outbox cannot be read (here: its table is gone for a while): the error names the database, not the cache
    store it blamed, and no cached answer is served until the change is drained."""
    async with answered_then_blackholed(sqlite_url, embedder, blackhole_redis) as api:
        cache, invalidator = api.services.cache, api.services.invalidator
        assert cache is not None
        assert invalidator is not None
        status, _body = await put_delivery_times(api)
        assert status == 503
        blackhole_redis.pass_through()
        lift_lookup_bypass(api)
        path = sqlite_url.removeprefix("sqlite+aiosqlite:///")
        with sqlite3.connect(path) as database:
            database.execute("ALTER TABLE kb_changes RENAME TO kb_changes_away")
        with pytest.raises(CacheUnavailable, match=r"the database failed \(OperationalError\)"):
            await invalidator.sync()
        assert cache.reads_held
        assert (await ask(api, QUESTION))["reply"] == NEW
        with sqlite3.connect(path) as database:
            database.execute("ALTER TABLE kb_changes_away RENAME TO kb_changes")
        await invalidator.poll()
        assert (invalidator.owed, cache.reads_held) == (False, False)
        assert await KnowledgeRepository(api.services.sessions).pending_changes() == {}


async def test_a_put_whose_budget_ends_before_its_change_is_read_is_not_a_success(
    sqlite_url: str, embedder: Embedder, blackhole_redis: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older changes fill the first reads of the outbox (an ingest's), and the PUT's budget ends before a read
    reaches its own: it answered 200 with its change unread and reads served (found by a review, session 19). It is
    503 now, reads held until the watcher has drained it."""
    monkeypatch.setattr(repositories, "CHANGES_READ", 1)
    async with answered(sqlite_url, embedder, blackhole_redis) as api:
        cache, invalidator = api.services.cache, api.services.invalidator
        assert cache is not None
        assert invalidator is not None
        older = [SourceDocument(f"prod-old-{n}", "product", f"Old product {n}", f"Old product {n}, EUR 1.{n}0.", {})
                 for n in range(8)]  # fmt: skip
        for document in older:  # written by another process: in the outbox, not yet drained
            await api.services.knowledge.upsert(document)
        cache.settings = dataclasses.replace(cache.settings, invalidate_timeout_s=0.5)  # a budget of 2.5 s
        blackhole_redis.add_latency(0.1)  # 0.2 s a store call (within its 0.5 s): one change a round, 9 rounds
        status, body = await put_delivery_times(api)
        assert status == 503, body
        assert "cache store did not confirm" in body["error"]["message"]  # type: ignore[index]
        assert cache.reads_held
        with sqlite3.connect(sqlite_url.removeprefix("sqlite+aiosqlite:///")) as database:
            left = [doc for (doc,) in database.execute("SELECT document_id FROM kb_changes")]
        assert DELIVERY_TIMES in left  # not drained: reads stay held for it
        blackhole_redis.pass_through()
        lift_lookup_bypass(api)
        answer = await ask(api, QUESTION)
        assert (answer["cache"], answer["reply"]) == ("miss", NEW)
        await invalidator.poll()
        assert (invalidator.owed, cache.reads_held) == (False, False)
        assert await KnowledgeRepository(api.services.sessions).pending_changes() == {}
        for document in older:
            await api.services.knowledge.delete(document.id)
        await invalidator.sync()


async def test_a_put_cancelled_while_it_reads_the_outbox_holds_reads(
    sqlite_url: str, embedder: Embedder, blackhole_redis: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admin's request goes away while its sync reads the outbox: its change may not have been read, so reads
    stay held until a later read has (the flag was dropped, and the old answer served; a review, session 19)."""
    async with answered(sqlite_url, embedder, blackhole_redis) as api:
        cache, invalidator, knowledge = api.services.cache, api.services.invalidator, api.services.knowledge
        assert cache is not None
        assert invalidator is not None
        read_outbox = knowledge.pending_changes

        async def slow_read() -> dict[int, str]:  # the real read, after a while (a loaded database)
            await asyncio.sleep(0.5)
            return await read_outbox()

        monkeypatch.setattr(knowledge, "pending_changes", slow_read)
        await knowledge.upsert(SourceDocument(DELIVERY_TIMES, "policy", "Delivery times", NEW, {}))
        sync = asyncio.create_task(invalidator.sync(5.0, wrote=True))
        await asyncio.sleep(0.1)
        sync.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sync
        assert (invalidator.unread, cache.reads_held) == (True, True)
        assert (await ask(api, QUESTION))["reply"] == NEW
        monkeypatch.setattr(knowledge, "pending_changes", read_outbox)
        await invalidator.poll()
        assert (invalidator.owed, cache.reads_held) == (False, False)


async def test_an_ingest_larger_than_one_read_of_the_outbox_is_drained_in_one_sync(
    database_url: str, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`helpline kb ingest` of a whole catalogue leaves a change per document; the sync after it reads the outbox
    as often as it takes (it stopped after three reads, and reported the rest as unconfirmed). On each database."""
    monkeypatch.setattr(repositories, "CHANGES_READ", 3)
    documents = [
        SourceDocument(f"prod-test-{n}", "product", f"Test product {n}", f"Test product number {n}, EUR {n}.90.", {})
        for n in range(11)
    ]
    async with running_api(make_settings(database_url, kb_refresh_s=3600), embedder) as api:
        outbox = KnowledgeRepository(api.services.sessions)
        invalidator, cache = api.services.invalidator, api.services.cache
        assert invalidator is not None
        assert cache is not None
        try:
            await api.services.knowledge.ingest(documents)
            assert len(await outbox.pending_changes()) == 3  # one read's worth
            await invalidator.sync()
            assert await outbox.pending_changes() == {}
            assert not cache.reads_held
        finally:  # the database is shared by this run's tests
            for document in documents:
                await api.services.knowledge.delete(document.id)
            await invalidator.sync()
