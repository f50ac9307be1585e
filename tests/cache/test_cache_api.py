"""The cache through /v1/chat: isolation between owners, invalidation on change, only good answers cached,
streaming replay, single flight, and a Redis outage that costs nothing but the cache."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from helpline.cache.service import AnswerCache, CacheUnavailable
from helpline.chat.service import ChatEvent, ChatService, Prepared
from helpline.config import Settings
from helpline.knowledge.base import KnowledgeBase
from helpline.knowledge.documents import SourceDocument
from helpline.knowledge.embeddings import Embedder
from helpline.providers.base import Unavailable
from helpline.providers.extractive import ExtractiveProvider
from helpline.providers.fake import FakeProvider, FakeReply
from helpline.store.repositories import ANONYMOUS, KnowledgeRepository
from tests.api.test_streaming import parse_sse
from tests.conftest import Api, make_settings, running_api
from tests.fakes.tcp_proxy import TcpProxy
from tests.security.test_prompt_injection import RULES

ADMIN = {"authorization": "Bearer test-admin-token-0123456789abcdef"}
UNLIMITED = {"rate_limit_ip": "100000/minute", "rate_limit_session": "100000/minute", "rate_limit_user": "100000/hour"}


@pytest.fixture
async def cached(sqlite_url: str, embedder: Embedder) -> AsyncIterator[tuple[Api, FakeProvider]]:
    fake = FakeProvider(name="gemini", model="gemini-test")
    async with running_api(make_settings(sqlite_url, **UNLIMITED), embedder, [fake, ExtractiveProvider(0.5)]) as api:
        yield api, fake


def settings_through(proxy: TcpProxy, sqlite_url: str, tenant: str, cache_timeout_s: float = 0.2) -> Settings:
    """A store of ``sqlite_url`` whose Redis is reached through the fault proxy, on a tenant of its own."""
    return make_settings(
        sqlite_url, redis_url=f"redis://127.0.0.1:{proxy.port}/0", cache_timeout_s=cache_timeout_s, tenant=tenant,
        kb_refresh_s=3600, **UNLIMITED,
    )  # fmt: skip


async def ask(api: Api, message: str, headers: dict[str, str] | None = None) -> dict[str, object]:
    response = await api.client.post("/v1/chat", json={"message": message}, headers=headers or {})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    assert (
        response.headers["x-cache"]
        == {"miss": "MISS", "exact": "HIT-EXACT", "semantic": "HIT-SEMANTIC"}[str(body["cache"])]
    )
    return body


DELIVERY_TIMES = "policy-delivery.delivery-times"  # the document "How long does delivery take?" cites first


async def save_delivery_times(api: Api, text: str = "Every order now arrives within 2 hours.") -> int:
    """Change the delivery-times policy through the admin API; how many cached answers it removed."""
    body = {"title": "Delivery times", "text": text, "kind": "policy"}
    response = await api.client.put(f"/v1/admin/kb/documents/{DELIVERY_TIMES}", json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    removed: int = response.json()["removed"]
    return removed


async def test_repeat_is_an_exact_hit_and_recorded(cached: tuple[Api, FakeProvider]) -> None:
    api, fake = cached
    first = await ask(api, "How long does delivery take?")
    second = await ask(api, "how long does delivery take")
    assert (first["cache"], second["cache"]) == ("miss", "exact")
    assert second["reply"] == first["reply"]
    assert second["citations"] == first["citations"]
    assert len(fake.requests) == 1
    rows = await api.conversations.history(str(second["session_id"]))
    assert rows[-1].cache_state == "exact"


async def test_paraphrase_is_a_semantic_hit_with_an_audit_trail(cached: tuple[Api, FakeProvider]) -> None:
    api, fake = cached
    await ask(api, "How long does delivery take?")
    hit = await ask(api, "How long does the delivery take?")
    assert hit["cache"] == "semantic"
    assert len(fake.requests) == 1
    rows = await api.conversations.history(str(hit["session_id"]))
    assert rows[-1].cache_matched == "How long does delivery take?"
    assert rows[-1].cache_similarity is not None
    assert rows[-1].cache_similarity > 0.8


async def test_personal_answers_are_never_shared_between_owners(cached: tuple[Api, FakeProvider]) -> None:
    api, fake = cached
    alice, _ = await api.services.api_keys.create("alice")
    bob, _ = await api.services.api_keys.create("bob")
    question = "Where is my order #48213? It hasn't arrived"
    fake.replies = [FakeReply(text="Alice's order is on the van."), FakeReply(text="Bob's order is packed.")]
    a1 = await ask(api, question, {"authorization": f"Bearer {alice}"})
    b1 = await ask(api, question, {"authorization": f"Bearer {bob}"})
    anonymous = await ask(api, question)
    assert a1["reply"] == "Alice's order is on the van."
    assert b1["reply"] == "Bob's order is packed."
    assert b1["cache"] == "miss"
    assert anonymous["cache"] == "miss"
    a2 = await ask(api, question, {"authorization": f"Bearer {alice}"})
    assert (a2["cache"], a2["reply"]) == ("exact", "Alice's order is on the van.")


async def test_changed_document_drops_exactly_its_answers(cached: tuple[Api, FakeProvider]) -> None:
    api, fake = cached
    await ask(api, "How long does delivery take?")
    await ask(api, "Which payment methods do you accept?")
    assert await save_delivery_times(api) >= 1
    fake.default = FakeReply(text="Orders arrive within 2 hours.")
    again = await ask(api, "How long does delivery take?")
    assert (again["cache"], again["reply"]) == ("miss", "Orders arrive within 2 hours.")
    other = await ask(api, "Which payment methods do you accept?")
    assert other["cache"] == "exact"  # an answer that did not use the changed document stays


async def test_popular_answers_are_rewarmed_in_the_background_after_an_invalidation(
    cached: tuple[Api, FakeProvider],
) -> None:
    api, fake = cached
    popular, once = "How long does delivery take?", "Do you deliver on Sundays?"
    for _ in range(3):  # a miss, then two hits: popular (re-warmed from 2 hits)
        await ask(api, popular)
    assert (await ask(api, once))["cache"] == "miss"  # asked once: not worth a provider call on re-warm
    assert len(fake.requests) == 2
    fake.default = FakeReply(text="Orders arrive within 2 hours.")
    response = await api.client.post("/v1/admin/cache/invalidate", json={"tags": ["delivery"]}, headers=ADMIN)
    assert response.json() == {"removed": 2}
    assert api.services.invalidator is not None
    await api.services.invalidator.settled()  # nobody asks: the service re-warmed by itself, in the background
    assert len(fake.requests) == 3
    again = await ask(api, popular)
    assert (again["cache"], again["reply"]) == ("exact", "Orders arrive within 2 hours.")
    assert len(fake.requests) == 3
    assert (await ask(api, once))["cache"] == "miss"  # not re-warmed: it was asked once
    assert len(fake.requests) == 4


async def test_admin_invalidate_by_tag(cached: tuple[Api, FakeProvider]) -> None:
    api, _ = cached
    await ask(api, "How long does delivery take?")
    refused = await api.client.post("/v1/admin/cache/invalidate", json={"tags": ["delivery"]})
    assert refused.status_code == 401
    response = await api.client.post("/v1/admin/cache/invalidate", json={"tags": ["delivery"]}, headers=ADMIN)
    assert response.json() == {"removed": 1}  # "delivery" is the ingest tag of the delivery policy sections
    assert (await ask(api, "How long does delivery take?"))["cache"] == "miss"


@pytest.mark.parametrize(
    "reply",
    [
        FakeReply(text="I'm not sure, a member of our team will follow up.", action="handoff"),
        FakeReply(text="An answer that cites nothing.", cite_first=False),
        FakeReply(error=Unavailable("down")),  # the extractive fallback answers: not cached
    ],
    ids=["handoff", "ungrounded", "fallback"],
)
async def test_only_good_answers_are_cached(cached: tuple[Api, FakeProvider], reply: FakeReply) -> None:
    api, fake = cached
    fake.default = reply
    await ask(api, "How long does delivery take?")
    assert (await ask(api, "How long does delivery take?"))["cache"] == "miss"


async def test_errors_are_never_cached(sqlite_url: str, embedder: Embedder) -> None:
    broken = FakeProvider(name="gemini", default=FakeReply(error=Unavailable("down")))
    async with running_api(make_settings(sqlite_url, **UNLIMITED), embedder, [broken]) as api:
        first = await ask(api, "How long does delivery take?")
        second = await ask(api, "How long does delivery take?")
    assert first["action"] == second["action"] == "handoff"
    assert second["cache"] == "miss"


async def test_cut_stream_is_not_cached_and_a_hit_replays_as_a_stream(cached: tuple[Api, FakeProvider]) -> None:
    api, fake = cached
    fake.replies = [FakeReply(text="Delivery takes one to two working days.", chunks=5, cut_after=2)]
    cut = parse_sse((await api.client.post("/v1/chat", json={"message": "How long does delivery take?",
                                                               "stream": True})).text)  # fmt: skip
    assert cut[-1][0] == "error"
    streamed = {"message": "How long does delivery take?", "stream": True}
    fresh_response = await api.client.post("/v1/chat", json=streamed)
    fresh = parse_sse(fresh_response.text)
    assert fresh[-1][0] == "done"
    assert fresh[-1][1]["cache"] == "miss"
    assert fresh_response.headers["x-cache"] == "MISS"
    replay_response = await api.client.post("/v1/chat", json=streamed)
    assert replay_response.headers["x-cache"] == "HIT-EXACT"  # the header agrees with the replayed stream
    replay = parse_sse(replay_response.text)
    assert next(kind for kind, _ in replay) == "meta"
    assert replay[-1][1]["cache"] == "exact"
    text = "".join(str(data["text"]) for kind, data in replay if kind == "delta")
    assert text == replay[-1][1]["reply"]


async def test_concurrent_identical_misses_make_one_provider_call(cached: tuple[Api, FakeProvider]) -> None:
    api, fake = cached
    fake.default = FakeReply(text="Standard delivery takes one to two working days.", first_token_delay_s=0.3)
    bodies = await asyncio.gather(*(ask(api, "How long does delivery take?") for _ in range(10)))
    assert len(fake.requests) == 1
    assert sorted(str(b["cache"]) for b in bodies).count("miss") == 1
    assert len({b["reply"] for b in bodies}) == 1


async def test_concurrent_misses_share_a_reply_that_is_not_cached(cached: tuple[Api, FakeProvider]) -> None:
    """A handoff is never cached, but identical requests waiting for it get it too instead of each calling the
    provider again (a failing provider would otherwise be asked once per waiter); each is recorded as a miss."""
    api, fake = cached
    fake.default = FakeReply(
        text="I'm not sure, a member of our team will follow up.", action="handoff", first_token_delay_s=0.3
    )
    bodies = await asyncio.gather(*(ask(api, "How long does delivery take?") for _ in range(6)))
    assert len(fake.requests) == 1
    assert {(b["cache"], b["action"], b["provider"]) for b in bodies} == {("miss", "handoff", "gemini")}
    rows = []
    for body in bodies:
        (row,) = await api.conversations.history(str(body["session_id"]))
        assert (row.cache_state, row.ai_response) == ("miss", body["reply"])
        rows.append(row)
    # One call was made and paid for: the waiters' records carry no tokens and no cost of their own.
    assert sorted(row.tokens_out > 0 for row in rows) == [False] * 5 + [True]
    assert sum(row.cost_usd for row in rows) == max(row.cost_usd for row in rows) > 0
    fake.default = FakeReply(text="Standard delivery takes one to two working days.")
    assert (await ask(api, "How long does delivery take?"))["cache"] == "miss"  # and still nothing cached


async def test_concurrent_streamed_misses_make_one_provider_call(cached: tuple[Api, FakeProvider]) -> None:
    api, fake = cached
    fake.default = FakeReply(text="Standard delivery takes one to two working days.", first_token_delay_s=0.3)

    async def stream() -> list[tuple[str, dict[str, object]]]:
        body = {"message": "How long does delivery take?", "stream": True}
        return parse_sse((await api.client.post("/v1/chat", json=body)).text)

    streams, plain = await asyncio.gather(
        asyncio.gather(*(stream() for _ in range(5))), ask(api, "How long does delivery take?")
    )
    assert len(fake.requests) == 1
    done = [events[-1] for events in streams]
    assert {kind for kind, _ in done} == {"done"}
    states = sorted([*(str(data["cache"]) for _, data in done), str(plain["cache"])])
    assert states == ["exact"] * 5 + ["miss"]
    for events in streams:
        text = "".join(str(data["text"]) for kind, data in events if kind == "delta")
        # The same text streamed and replayed (a streamed miss sent the newline before its control line too).
        assert text == events[-1][1]["reply"] == "Standard delivery takes one to two working days."


@pytest.mark.parametrize("mode", ["blackhole", "cut", "latency"])
async def test_redis_outage_bypasses_the_cache_without_failing(
    sqlite_url: str, embedder: Embedder, blackhole_redis: TcpProxy, mode: str
) -> None:
    fake = FakeProvider(name="gemini", model="gemini-test")
    settings = make_settings(
        sqlite_url, redis_url=f"redis://127.0.0.1:{blackhole_redis.port}/0", cache_timeout_s=0.2,
        tenant="t" + secrets.token_hex(6), **UNLIMITED,  # a tenant of its own: nothing left by other runs
    )  # fmt: skip
    async with running_api(settings, embedder, [fake, ExtractiveProvider(0.5)]) as api:
        await ask(api, "How long does delivery take?")  # healthy: cached in Redis
        assert (await ask(api, "How long does delivery take?"))["cache"] == "exact"
        if mode == "latency":
            blackhole_redis.add_latency(1.0)
        else:
            getattr(blackhole_redis, mode)()
        await asyncio.sleep(settings.cache_near_ms / 1000)  # the answer read before is no longer reused (near.py)
        for _ in range(3):
            started = time.perf_counter()
            body = await ask(api, "How long does delivery take?")
            assert time.perf_counter() - started < 1.5
            assert body["action"] == "answer"
        assert api.services.cache is not None
        assert not api.services.cache.available  # bypassed for a moment; a metric and a log line say so


async def wait_for_provider_call(fake: FakeProvider, calls: int = 1) -> None:
    deadline = time.monotonic() + 10
    while len(fake.requests) < calls:
        assert time.monotonic() < deadline, "the provider was never called"
        await asyncio.sleep(0.01)


async def test_an_answer_computed_while_its_document_changed_is_not_cached(cached: tuple[Api, FakeProvider]) -> None:
    """The document changes while the provider is still answering from the old text: that answer is shown to
    whoever asked, but never written to the cache after the invalidation that removed its siblings."""
    api, fake = cached
    question = "How long does delivery take?"
    fake.replies = [FakeReply(text="Standard delivery takes three days.", first_token_delay_s=1.0)]
    asking = asyncio.create_task(ask(api, question))
    await wait_for_provider_call(fake)  # retrieval has read the old document; the provider is answering
    await save_delivery_times(api)
    old = await asking
    assert (old["cache"], old["reply"]) == ("miss", "Standard delivery takes three days.")
    fake.default = FakeReply(text="Orders arrive within 2 hours.")
    again = await ask(api, question)
    assert (again["cache"], again["reply"]) == ("miss", "Orders arrive within 2 hours.")
    assert (await ask(api, question))["cache"] == "exact"  # answers computed after the change are cached


async def leader_and_waiters(
    api: Api, fake: FakeProvider, count: int, *, delay_s: float
) -> tuple[asyncio.Task[dict[str, object]], list[asyncio.Task[dict[str, object]]]]:
    """A request whose provider call takes ``delay_s``, and ``count`` identical ones sent while it is answering."""
    question = "How long does delivery take?"
    fake.default = FakeReply(text="Standard delivery takes one to two working days.", first_token_delay_s=delay_s)
    leader = asyncio.create_task(ask(api, question))
    await wait_for_provider_call(fake)
    return leader, [asyncio.create_task(ask(api, question)) for _ in range(count)]


async def test_a_reply_another_model_continued_is_shown_but_not_cached(sqlite_url: str, embedder: Embedder) -> None:
    """Gemini is cut mid-reply; Ollama, asked to go on, starts again from the beginning. The shopper saw it as it
    came, and it was cached as the answer, stitched words and all (review, session 26): a reply two models wrote is
    never cached."""
    gemini = FakeProvider(name="gemini", model="g", default=FakeReply(text="Standard delivery takes one to two days.",
                                                                      chunks=4, cut_after=1))  # fmt: skip
    ollama = FakeProvider(name="ollama", model="o", default=FakeReply(text="Standard delivery takes one to two days."))
    question = "How long does delivery take?"
    async with running_api(make_settings(sqlite_url, **UNLIMITED), embedder, [gemini, ollama]) as api:
        events = parse_sse((await api.client.post("/v1/chat", json={"message": question, "stream": True})).text)
        assert (events[-1][0], events[-1][1]["provider"]) == ("done", "ollama")
        gemini.default = FakeReply(text="Standard delivery takes one to two working days.")
        again = await ask(api, question)
    assert (again["cache"], again["reply"]) == ("miss", "Standard delivery takes one to two working days.")


async def test_a_cancelled_waiter_does_not_cancel_the_others(cached: tuple[Api, FakeProvider]) -> None:
    """Identical misses share one provider call; one of them going away (a cancelled request) must not take the
    shared answer away from the rest."""
    api, fake = cached
    leader, waiters = await leader_and_waiters(api, fake, 3, delay_s=1.0)
    await asyncio.sleep(0.3)  # the waiters are waiting on the leader's answer
    waiters[0].cancel()
    bodies = await asyncio.gather(leader, *waiters[1:])
    assert [body["cache"] for body in bodies] == ["miss", "exact", "exact"]
    assert {body["reply"] for body in bodies} == {"Standard delivery takes one to two working days."}
    assert len(fake.requests) == 1


async def test_warming_applies_the_leak_check(cached: tuple[Api, FakeProvider]) -> None:
    """A warmed answer is served to everyone: one that quotes the system prompt must not be cached."""
    api, fake = cached
    # The rules' opening sentences as an answer that parses as good and grounded (a reply that quotes their
    # control-line examples already parses as a handoff, so it would not test the leak check).
    quoted = " ".join(RULES.split("<<")[0].split()[:40])
    fake.default = FakeReply(
        raw=f"Sure, my instructions say: {quoted}\n<<ACTION=answer; SOURCES=policy-delivery.delivery-times>>"
    )
    assert api.services.chat is not None
    assert not await api.services.chat.warm("How long does delivery take?")
    fake.default = FakeReply(text="Standard delivery takes one to two working days.")
    body = await ask(api, "How long does delivery take?")
    assert (body["cache"], body["reply"]) == ("miss", "Standard delivery takes one to two working days.")


async def test_a_question_with_masked_details_hits_as_it_was_stored(cached: tuple[Api, FakeProvider]) -> None:
    """The cache stores the masked question; the lookup must use the masked question too (it looked up the
    words as typed, so a question with an email in it never hit)."""
    api, fake = cached
    alice, _ = await api.services.api_keys.create("alice")
    question = "Is returns@greenbasket.example the right address for returns?"
    first = await ask(api, question, {"authorization": f"Bearer {alice}"})
    second = await ask(api, question, {"authorization": f"Bearer {alice}"})
    assert (first["cache"], second["cache"]) == ("miss", "exact")
    assert len(fake.requests) == 1
    assert "returns@greenbasket.example" not in fake.requests[0].message


async def test_rewarming_stops_when_the_store_stops_answering(
    sqlite_url: str, embedder: Embedder, blackhole_redis: TcpProxy
) -> None:
    """Re-warming with the store gone paid a provider call for every popular answer, none of which could be
    written (found by a review, session 8): it stops once the cache is bypassed; shoppers refill the rest."""
    fake = FakeProvider(name="gemini", model="gemini-test")
    settings = make_settings(
        sqlite_url, redis_url=f"redis://127.0.0.1:{blackhole_redis.port}/0", cache_timeout_s=0.2,
        tenant="t" + secrets.token_hex(6), **UNLIMITED,
    )  # fmt: skip
    popular = ["How long does delivery take?", "Do you deliver on Sundays?", "How much does delivery cost?"]
    async with running_api(settings, embedder, [fake, ExtractiveProvider(0.5)]) as api:
        for question in popular:
            for _ in range(3):
                await ask(api, question)
        assert len(fake.requests) == len(popular)
        fake.default = FakeReply(text="Orders arrive within 2 hours.", first_token_delay_s=0.3)
        response = await api.client.post("/v1/admin/cache/invalidate", json={"tags": ["delivery"]}, headers=ADMIN)
        assert response.json()["removed"] == len(popular)
        with capture_logs() as logs:
            blackhole_redis.blackhole()  # gone while the first re-warmed answer is being computed
            assert api.services.invalidator is not None
            await asyncio.wait_for(api.services.invalidator.settled(), 10)
        rewarmed = fake.requests[len(popular) :]
        assert len(rewarmed) <= 1  # the one under way when the store went; none after
        stopped = [entry for entry in logs if entry["event"] == "cache_rewarm_stopped"]
        assert [entry["left"] for entry in stopped] == [len(popular) - 1]  # it started, then stopped
        blackhole_redis.pass_through()


async def test_an_answer_computed_while_a_document_was_added_is_not_cached(cached: tuple[Api, FakeProvider]) -> None:
    """No version check reaches an answer that could not see a document added while it was computed ("sorry,
    matcha is not in our range" while matcha was being added): it is shown, not cached."""
    api, fake = cached
    question = "Do you sell matcha green tea powder?"
    fake.replies = [FakeReply(text="Sorry, matcha is not in our range.", chunks=4, chunk_delay_s=0.3)]
    asking = asyncio.create_task(ask(api, question))
    await wait_for_provider_call(fake)
    await add_matcha(api)
    assert (await asking)["reply"] == "Sorry, matcha is not in our range."
    fake.default = FakeReply(text="Yes: organic matcha green tea powder, EUR 14.90 a tin.")
    again = await ask(api, question)
    assert (again["cache"], again["reply"]) == ("miss", "Yes: organic matcha green tea powder, EUR 14.90 a tin.")


async def test_an_invalidation_the_store_did_not_confirm_fails_loudly_and_is_retried(
    sqlite_url: str, embedder: Embedder, blackhole_redis: TcpProxy
) -> None:
    """Redis does not answer the invalidation: the admin learns it (503, not "removed: 0"), and the replica retries
    the tags on its next knowledge poll, so the stale answers are gone once Redis is back."""
    fake = FakeProvider(name="gemini", model="gemini-test")
    settings = make_settings(
        sqlite_url, redis_url=f"redis://127.0.0.1:{blackhole_redis.port}/0", cache_timeout_s=0.2,
        tenant="t" + secrets.token_hex(6), **UNLIMITED,
    )  # fmt: skip
    async with running_api(settings, embedder, [fake, ExtractiveProvider(0.5)]) as api:
        question = "How long does delivery take?"
        await ask(api, question)
        assert (await ask(api, question))["cache"] == "exact"
        blackhole_redis.blackhole()
        started = time.perf_counter()
        response = await api.client.post("/v1/admin/cache/invalidate", json={"tags": ["delivery"]}, headers=ADMIN)
        assert time.perf_counter() - started < 5
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "cache_unavailable"
        invalidator = api.services.invalidator
        assert invalidator is not None
        assert "delivery" in invalidator.pending
        blackhole_redis.pass_through()
        await invalidator.poll()  # what the watcher does every interval
        assert not invalidator.pending
        fake.default = FakeReply(text="Orders arrive within 2 hours.")
        assert api.services.cache is not None
        api.services.cache._bypass_until = 0.0  # the lookups' own short bypass after the outage is not under test
        again = await ask(api, question)
        assert (again["cache"], again["reply"]) == ("miss", "Orders arrive within 2 hours.")


async def test_an_invalidation_is_not_skipped_while_lookups_bypass_the_store(cached: tuple[Api, FakeProvider]) -> None:
    """Lookups skip a store that just failed (for a couple of seconds); an invalidation must not: it would be lost."""
    api, _ = cached
    await ask(api, "How long does delivery take?")
    cache = api.services.cache
    assert cache is not None
    cache._bypass_until = time.monotonic() + 60  # as after one timed-out lookup
    response = await api.client.post("/v1/admin/cache/invalidate", json={"tags": ["delivery"]}, headers=ADMIN)
    assert response.json() == {"removed": 1}
    cache._bypass_until = 0.0
    assert (await ask(api, "How long does delivery take?"))["cache"] == "miss"


async def test_a_popular_answer_is_rewarmed_in_the_locale_it_was_asked_in(cached: tuple[Api, FakeProvider]) -> None:
    api, fake = cached
    body = {"message": "Combien de temps prend la livraison ?", "locale": "fr"}
    cited = []
    for _ in range(3):  # a miss, then two hits: popular
        response = await api.client.post("/v1/chat", json=body)
        assert response.status_code == 200, response.text
        cited = [citation["id"] for citation in response.json()["citations"]]
    fake.default = FakeReply(text="La livraison prend deux heures.")
    response = await api.client.post("/v1/admin/cache/invalidate", json={"tags": cited[:1]}, headers=ADMIN)
    assert response.json() == {"removed": 1}
    assert api.services.invalidator is not None
    await api.services.invalidator.settled()
    assert len(fake.requests) == 2  # re-warmed once
    assert fake.requests[-1].locale == "fr"
    again = (await api.client.post("/v1/chat", json=body)).json()
    assert (again["cache"], again["reply"]) == ("exact", "La livraison prend deux heures.")


async def test_products_added_after_start_up_are_guarded(cached: tuple[Api, FakeProvider], embedder: Embedder) -> None:
    """The product guard learns the catalogue as it changes: through the admin API on this replica, and through
    the knowledge poll when another process (a replica, `helpline kb ingest`) wrote it."""
    api, fake = cached
    guard = api.services.cache.guard if api.services.cache is not None else None
    assert guard is not None
    # Each against a question naming no product: only the product guard tells them apart.
    aurora, zephyr = "Is the Aurora kettle dishwasher safe?", "Is the Zephyr kettle dishwasher safe?"
    plain = "Is the kettle safe to put in a dishwasher?"
    assert (guard.conflict(aurora, plain), guard.conflict(zephyr, plain)) == (None, None)  # neither is known yet
    product = {"kind": "product", "text": "A 1.7 litre glass kettle with a steel base."}
    response = await api.client.put(
        "/v1/admin/kb/documents/prod-aurora", json={**product, "title": "Aurora kettle"}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    assert (guard.conflict(aurora, plain), guard.conflict(zephyr, plain)) == ("product", None)
    # Written by another process: this replica learns it on its next poll.
    other = KnowledgeBase(KnowledgeRepository(api.services.sessions), embedder)
    await other.load()
    await other.upsert(SourceDocument("prod-zephyr", "product", "Zephyr kettle", product["text"], {}, [], "test"))
    assert api.services.invalidator is not None
    await api.services.invalidator.poll()
    assert guard.conflict(zephyr, plain) == "product"
    first = await ask(api, aurora)
    second = await ask(api, zephyr)
    assert (first["cache"], second["cache"]) == ("miss", "miss")
    assert len(fake.requests) == 2


async def test_a_popular_follow_up_is_not_rewarmed_as_a_first_message(cached: tuple[Api, FakeProvider]) -> None:
    """Re-warming asks each popular question as a first message; a follow-up's popularity must not make it
    write a first-message answer nobody asked for in that form (and pay a provider call for it)."""
    api, fake = cached
    first, follow_up = "How long does delivery take?", "Do you deliver on Sundays?"
    states = []
    for _ in range(3):  # three sessions with the same two turns: a miss each, then two hits each
        opened = await ask(api, first)
        followed = await api.client.post("/v1/chat", json={"message": follow_up, "session_id": opened["session_id"]})
        assert followed.status_code == 200, followed.text
        states.append((opened["cache"], followed.json()["cache"]))
    assert states == [("miss", "miss"), ("exact", "exact"), ("exact", "exact")]
    assert len(fake.requests) == 2
    response = await api.client.post("/v1/admin/cache/invalidate", json={"tags": ["delivery"]}, headers=ADMIN)
    assert response.json() == {"removed": 2}
    assert api.services.invalidator is not None
    await api.services.invalidator.settled()
    assert [request.message for request in fake.requests[2:]] == [first]  # only the first message re-warmed
    assert (await ask(api, follow_up))["cache"] == "miss"


@contextlib.asynccontextmanager
async def two_replicas(
    sqlite_url: str, embedder: Embedder, reply: FakeReply | None = None, **overrides: object
) -> AsyncIterator[tuple[Api, FakeProvider, Api, FakeProvider]]:
    """Replicas A and B of one store on one Redis (a tenant of their own) and one database, each with its own
    provider (answering ``reply``, if given): (A, A's provider, B, B's provider)."""
    settings = make_settings(
        sqlite_url, redis_url="redis://127.0.0.1:6379/0", tenant="t" + secrets.token_hex(6), kb_refresh_s=3600,
        **{**UNLIMITED, **overrides},
    )  # fmt: skip
    fake_a, fake_b = (FakeProvider(name="gemini", model=name, default=reply or FakeReply()) for name in ("a", "b"))
    async with (
        running_api(settings, embedder, [fake_a, ExtractiveProvider(0.5)]) as a,
        running_api(settings, embedder, [fake_b, ExtractiveProvider(0.5)]) as b,
    ):
        yield a, fake_a, b, fake_b


async def test_replicas_repeating_an_invalidation_keep_the_rewarmed_answers_and_refuse_stale_ones(
    sqlite_url: str, embedder: Embedder
) -> None:
    """Two replicas on one Redis and one database. A document changes on replica A, which drops its answers and
    re-warms the popular one. Replica B learns of the change on its next poll and invalidates it too: that must
    not throw away A's re-warmed answer (it drew on the new version), nor pay for re-warming it again. And while
    B still has the old text, what B answers from it is never cached: A's invalidation told the store which
    version is current."""
    question, cited = "How long does delivery take?", DELIVERY_TIMES
    async with two_replicas(sqlite_url, embedder) as (a, fake_a, b, fake_b):
        for _ in range(3):  # a miss, then two hits: popular
            body = await ask(a, question)
        assert cited in [citation["id"] for citation in body["citations"]]  # type: ignore[attr-defined]
        fake_a.default = FakeReply(text="Orders arrive within 2 hours.")
        assert await save_delivery_times(a) == 1
        assert a.services.invalidator is not None
        assert b.services.invalidator is not None
        await a.services.invalidator.settled()
        assert len(fake_a.requests) == 2  # the first answer, then the re-warm
        # B has not polled yet, and cannot read the change before it answers (its database is slow): it answers
        # from the old text, and that answer is not cached.
        b.services.chat.catch_up = None
        british = {"message": question, "locale": "en-GB"}  # a scope of its own: not re-warmed
        stale = (await b.client.post("/v1/chat", json=british)).json()
        assert cited in [citation["id"] for citation in stale["citations"]]
        assert (await b.client.post("/v1/chat", json=british)).json()["cache"] == "miss"
        await b.services.invalidator.poll()  # B learns of the change and invalidates it again
        await b.services.invalidator.settled()
        hit = await ask(b, question)
        assert (hit["cache"], hit["reply"]) == ("exact", "Orders arrive within 2 hours.")
        fresh = (await b.client.post("/v1/chat", json=british)).json()
        again = (await b.client.post("/v1/chat", json=british)).json()
        assert (fresh["cache"], again["cache"]) == ("miss", "exact")  # from the new text: cached as usual
        assert len(fake_b.requests) == 3  # the two stale answers and the fresh one: no re-warm of its own


async def test_streamed_requests_following_an_identical_one_see_its_text_as_it_comes(
    cached: tuple[Api, FakeProvider],
) -> None:
    """Streamed requests that share another's provider call are not left silent until it has finished: they are
    sent its text as it streams, then its outcome."""
    api, fake = cached
    fake.default = FakeReply(text="Standard delivery takes one to two working days.", chunks=4, chunk_delay_s=0.4)
    chat = api.services.chat
    assert chat is not None

    async def stream() -> list[tuple[float, ChatEvent]]:
        prepared = await chat.prepare("How long does delivery take?", principal=ANONYMOUS, request_id="r")
        return [(time.monotonic(), event) async for event in chat.chat_stream(prepared)]

    leading = asyncio.create_task(stream())
    await wait_for_provider_call(fake)
    followers = await asyncio.gather(stream(), stream())
    led = await leading
    assert len(fake.requests) == 1
    finished = led[-1][0]
    text = "".join(str(event.data["text"]) for _, event in led if event.kind == "delta")
    for events in followers:
        first = next(at for at, event in events if event.kind == "delta")
        assert first < finished - 0.5  # while the first request was still streaming (about 1.2 s in all)
        assert "".join(str(event.data["text"]) for _, event in events if event.kind == "delta") == text
        assert (events[-1][1].kind, events[-1][1].data["cache"]) == ("done", "exact")


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
async def test_a_request_that_waited_for_an_answer_refused_as_stale_gets_a_fresh_one(
    cached: tuple[Api, FakeProvider], streamed: bool
) -> None:
    """A request asked after a document changed, which joined a call still answering from the old text, must not
    be handed that answer (as a cache hit, even): the cache refused it, and the request gets a fresh answer."""
    api, fake = cached
    question = "How long does delivery take?"
    fake.replies = [FakeReply(text="Standard delivery takes three days.", chunks=4, chunk_delay_s=0.3)]

    async def asked() -> dict[str, object]:
        if not streamed:
            return await ask(api, question)
        events = parse_sse((await api.client.post("/v1/chat", json={"message": question, "stream": True})).text)
        assert events[-1][0] == "done"
        return events[-1][1]

    asking = asyncio.create_task(asked())
    await wait_for_provider_call(fake)
    await save_delivery_times(api)
    fake.default = FakeReply(text="Orders arrive within 2 hours.")
    assert not asking.done()
    # The same question: it joins the call in flight (streamed, it is not sent that call's text as it streams: the
    # call began before the change).
    waiter = await asked()
    old = await asking
    assert old["reply"] == "Standard delivery takes three days."
    assert (waiter["cache"], waiter["reply"]) == ("miss", "Orders arrive within 2 hours.")
    assert len(fake.requests) == 2


@pytest.mark.parametrize("bypassed", ["when the knowledge was read", "when the answer came"])
async def test_a_request_asked_after_a_change_never_gets_an_old_answer_the_store_could_not_check(
    sqlite_url: str, embedder: Embedder, bypassed: str
) -> None:
    """As above, with the cache store bypassed for a moment (one call timed out) when the call read the knowledge,
    or when its answer came: the store cannot refuse the answer then, and this process's own knowledge of the
    change must (found by a review, session 26: the request asked after the PUT was served the old text as an
    exact hit)."""
    settings = make_settings(
        sqlite_url, redis_url="redis://127.0.0.1:6379/0", tenant="t" + secrets.token_hex(6), kb_refresh_s=3600,
        **UNLIMITED,
    )  # fmt: skip
    fake = FakeProvider(name="gemini", model="gemini-test", default=FakeReply(text="Orders arrive within 2 hours."))
    fake.replies = [FakeReply(text="Standard delivery takes three days.", first_token_delay_s=1.5)]
    question = "How long does delivery take?"
    async with running_api(settings, embedder, [fake, ExtractiveProvider(0.5)]) as api:
        cache = api.services.cache
        assert cache is not None
        if bypassed == "when the knowledge was read":
            cache._bypass_until = time.monotonic() + 60
        asking = asyncio.create_task(ask(api, question))
        await wait_for_provider_call(fake)  # it has read the old text
        cache._bypass_until = 0.0
        await save_delivery_times(api)  # 200: the change went through
        waiter = asyncio.create_task(ask(api, question))  # asked after it: joins the call still answering
        await asyncio.sleep(0.3)
        assert not asking.done()
        if bypassed == "when the answer came":
            cache._bypass_until = time.monotonic() + 60
        old, fresh = await asking, await waiter
    assert old["reply"] == "Standard delivery takes three days."
    assert (fresh["cache"], fresh["reply"]) == ("miss", "Orders arrive within 2 hours.")
    assert len(fake.requests) == 2


async def test_a_store_outage_with_a_removal_owed_does_not_double_the_provider_calls(
    sqlite_url: str, embedder: Embedder
) -> None:
    """Redis is down and a change's removal is owed: the watcher retries it every second, and those tries change
    nothing of the knowledge. Identical requests still share one call (review helper-53: a retry during a call made
    its reply stale, and its waiters each called again)."""
    settings = make_settings(
        sqlite_url, redis_url="redis://127.0.0.1:1/0", tenant="t" + secrets.token_hex(6), kb_refresh_s=1.5,
        cache_timeout_s=0.2, **UNLIMITED,
    )  # fmt: skip
    fake = FakeProvider(name="gemini", model="g", default=FakeReply(text="Two days.", first_token_delay_s=2.5))
    async with running_api(settings, embedder, [fake, ExtractiveProvider(0.5)]) as api:
        assert api.services.cache is not None
        body = {"title": "Gift wrap", "text": "We gift wrap for 3 EUR.", "kind": "policy"}
        response = await api.client.put("/v1/admin/kb/documents/policy-giftwrap", json=body, headers=ADMIN)
        assert response.status_code == 503, response.text  # saved; its removal is owed, retried every second
        await asyncio.sleep(2.0)  # past the watcher's first retry
        before = api.services.cache.invalidations
        await asyncio.gather(*(ask(api, "How long does delivery take?") for _ in range(3)))
        retries = api.services.cache.invalidations - before
    assert retries >= 2  # the watcher tried again meanwhile
    assert len(fake.requests) == 1


async def test_a_removal_a_request_left_owed_is_retried_at_once_not_after_the_watchers_interval(
    sqlite_url: str, embedder: Embedder
) -> None:
    """A PUT while Redis is down leaves its removal owed (503; no cached answer is served meanwhile): the watcher
    retries it at once, then every second, rather than once the interval it was waiting out is over."""
    settings = make_settings(
        sqlite_url, redis_url="redis://127.0.0.1:1/0", tenant="t" + secrets.token_hex(6), kb_refresh_s=3600,
        cache_timeout_s=0.2, **UNLIMITED,
    )  # fmt: skip
    async with running_api(settings, embedder, [FakeProvider(name="gemini"), ExtractiveProvider(0.5)]) as api:
        assert api.services.cache is not None
        assert api.services.invalidator is not None
        body = {"title": "Gift wrap", "text": "We gift wrap for 3 EUR.", "kind": "policy"}
        response = await api.client.put("/v1/admin/kb/documents/policy-giftwrap", json=body, headers=ADMIN)
        assert response.status_code == 503, response.text
        assert api.services.invalidator.owed
        tried = api.services.cache.invalidations
        await asyncio.sleep(1.5)
        assert api.services.cache.invalidations > tried  # the watcher tried again, well before its hour was over


async def test_when_the_call_everyone_waits_for_is_cancelled_one_of_them_calls_again(
    cached: tuple[Api, FakeProvider],
) -> None:
    """The request making the call goes away: its waiters do not all call the provider at once; one calls, the
    others wait for it."""
    api, fake = cached
    leader, waiters = await leader_and_waiters(api, fake, 4, delay_s=0.5)
    await asyncio.sleep(0.1)
    leader.cancel()
    bodies = await asyncio.gather(*waiters)
    assert len(fake.requests) == 2  # the cancelled call, and one for the four
    assert sorted(str(body["cache"]) for body in bodies) == ["exact", "exact", "exact", "miss"]


async def test_concurrent_identical_misses_on_two_replicas_make_one_provider_call(
    sqlite_url: str, embedder: Embedder
) -> None:
    """Two replicas on one Redis, plain and streamed requests for the same question on both, the provider slower
    than the cross-replica lock's lifetime (renewed while it works): one call in all."""
    slow = FakeReply(text="Standard delivery takes one to two working days.", first_token_delay_s=1.2)
    question = "How long does delivery take?"
    async with two_replicas(sqlite_url, embedder, slow) as (a, fake_a, b, fake_b):
        for api in (a, b):
            cache = api.services.cache
            assert cache is not None
            cache.settings = dataclasses.replace(cache.settings, lock_ttl_s=0.3)  # a quarter of the call's time

        async def streamed(api: Api) -> dict[str, object]:
            events = parse_sse((await api.client.post("/v1/chat", json={"message": question, "stream": True})).text)
            assert events[-1][0] == "done"
            return events[-1][1]

        first = asyncio.create_task(ask(a, question))
        await wait_for_provider_call(fake_a)
        bodies = await asyncio.gather(first, ask(a, question), ask(b, question), ask(b, question), streamed(b))
    assert len(fake_a.requests) + len(fake_b.requests) == 1
    assert {body["reply"] for body in bodies} == {"Standard delivery takes one to two working days."}
    assert sorted(str(body["cache"]) for body in bodies) == ["exact"] * 4 + ["miss"]


async def test_a_provider_hanging_mid_reply_holds_neither_replica_for_long(sqlite_url: str, embedder: Embedder) -> None:
    """The model sends its first words and then nothing. Replica A's shopper used to wait the whole-reply deadline
    for it, and replica B's, waiting on A's call across replicas, that long and then its own call as long again:
    about 94 s with the defaults. Each call now drops the model at its stall deadline and the knowledge base
    answers; B, which cannot reuse a last-resort answer (never cached), makes its own call, as short."""
    hanging = FakeReply(text="Standard delivery takes one to two working days.", chunks=4, chunk_delay_s=60)
    timings = {"first_token_timeout_s": 0.5, "stall_timeout_s": 0.5, "provider_timeout_s": 5.0}
    async with two_replicas(sqlite_url, embedder, hanging, **timings) as (a, fake_a, b, fake_b):
        first, second, second_s = await asked_on_both(a, fake_a, b)
    assert (first["provider"], second["provider"]) == ("extractive", "extractive")
    assert second["action"] == "answer"
    assert second_s < 2.5  # two stall deadlines and the lookups, not the whole-reply deadline (5 s), once or twice
    assert (len(fake_a.requests), len(fake_b.requests)) == (1, 1)
    assert fake_a.cancelled == fake_b.cancelled == 1


async def test_a_request_that_waited_for_a_peers_call_is_answered_within_its_own_deadline(
    sqlite_url: str, embedder: Embedder
) -> None:
    """A's model trickles on past the deadline (2 s). B waits for A's call only while a model could still answer
    B after (half the deadline, less a margin), then asks its own, with what is left of B's deadline, not a whole
    one: B is answered by the knowledge base at its own deadline, not at A's and then a whole one of its own."""
    trickling = FakeReply(text="Standard delivery takes one to two working days.", chunks=100, chunk_delay_s=0.1)
    timings = {"first_token_timeout_s": 0.5, "stall_timeout_s": 0.5, "provider_timeout_s": 2.0}
    async with two_replicas(sqlite_url, embedder, trickling, **timings) as (a, fake_a, b, fake_b):
        first, second, second_s = await asked_on_both(a, fake_a, b)
    assert (first["provider"], second["provider"]) == ("extractive", "extractive")
    assert 2.0 <= second_s < 3.0  # B's deadline, not A's and then a whole one of B's own (4 s)
    assert (len(fake_a.requests), len(fake_b.requests)) == (1, 1)


async def prepared_on(api: Api, question: str) -> tuple[Prepared, AnswerCache]:
    """``question`` prepared on ``api`` as a shopper's (its key and scope), and that replica's cache: for a test
    that holds the call or lock such a question would wait for."""
    chat, cache = api.services.chat, api.services.cache
    assert chat is not None
    assert cache is not None
    return await chat.prepare(question, principal=ANONYMOUS, request_id="held"), cache


async def test_a_request_never_waits_for_an_identical_ones_call_past_its_own_deadline(
    sqlite_url: str, embedder: Embedder
) -> None:
    """Rounds of calls that each ended with nothing to share, each led by a younger request (with a later
    deadline), could hold a plain request waiting past its own deadline (review helper-43). Here the call it waits
    for, in this process, is simply held open: at its deadline the request stops waiting, and with nothing of
    the deadline left the knowledge base answers at once. That answer stands in for models nobody asked: it is not
    cached, even with fallback answers cached (the next shopper gets a model's)."""
    settings = make_settings(
        sqlite_url, first_token_timeout_s=0.2, provider_timeout_s=1.0, cache_fallback_answers=True, **UNLIMITED
    )
    fake = FakeProvider(name="gemini", model="gemini-test")
    question = "How long does delivery take?"
    async with running_api(settings, embedder, [fake, ExtractiveProvider(0.5)]) as api:
        held, cache = await prepared_on(api, question)
        async with cache.single_flight(cache.entry_key(held.message, held.scope)) as (_, leading):
            assert leading
            started = time.perf_counter()
            body = await asyncio.wait_for(ask(api, question), 5)
            elapsed = time.perf_counter() - started
        assert (body["provider"], body["action"]) == ("extractive", "answer")
        assert 2.0 <= elapsed < 2.6  # its deadline, and a second's grace for the call's bookkeeping
        assert fake.requests == []
        again = await ask(api, question)
    assert (again["cache"], again["provider"]) == ("miss", "gemini")


async def test_a_request_waits_for_another_replicas_call_only_while_a_model_could_answer_it_after(
    sqlite_url: str, embedder: Embedder
) -> None:
    """Across replicas the wait was ``lock_wait_s`` (first-token plus whole-reply deadline, 2.5 s here), longer
    than the request's own deadline (1.5 s); and a wait to its deadline would leave it (and every request joining
    it meanwhile) only the knowledge base's answer. It waits while a model could still answer after: 1.5 s less
    the 1 s a model must have left (``model_start_s``) and a margin of 0.25 s, then asks its own."""
    question = "How long does delivery take?"
    timings = {"first_token_timeout_s": 1.0, "provider_timeout_s": 1.5}
    async with two_replicas(sqlite_url, embedder, None, **timings) as (a, _, b, fake_b):
        held, cache = await prepared_on(a, question)
        async with cache.peer_lock(held.message, held.scope) as found:
            assert found is None  # A holds the lock, as if it were answering
            started = time.perf_counter()
            body = await ask(b, question)
            elapsed = time.perf_counter() - started
    assert (body["provider"], body["action"]) == ("gemini", "answer")
    assert 0.25 <= elapsed < 1.0
    assert len(fake_b.requests) == 1


async def asked_on_both(a: Api, fake_a: FakeProvider, b: Api) -> tuple[dict[str, object], dict[str, object], float]:
    """One question on replica A and, once A's provider is working on it, on replica B: both bodies, and how long
    B's shopper waited (from A's question on)."""
    question = "How long does delivery take?"
    started = time.perf_counter()
    first = asyncio.create_task(ask(a, question))
    await wait_for_provider_call(fake_a)
    second = await ask(b, question)
    second_s = time.perf_counter() - started
    return await first, second, second_s


async def test_a_replica_that_invalidated_an_older_version_late_sets_it_right(
    sqlite_url: str, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica B reads version 2 of a document; replica A then saves version 3 and invalidates it; B's
    invalidation of version 2 lands last. Version 3 stays current (versions are ordered; before, B's next read of
    the knowledge set it right): answers drawn from it are cached."""
    cited, save = DELIVERY_TIMES, save_delivery_times

    async with two_replicas(sqlite_url, embedder) as (a, _fake_a, b, _fake_b):
        await save(a, "Every order arrives within 3 hours.")  # version 2
        knowledge, read = b.services.knowledge, b.services.knowledge.refresh
        saved: list[bool] = []

        async def read_then_a_saves() -> list[str]:
            changed = await read()
            if not saved:  # version 3 is saved and invalidated between B's read and B's invalidation
                saved.append(True)
                await save(a, "Every order now arrives within 2 hours.")
            return changed

        monkeypatch.setattr(knowledge, "refresh", read_then_a_saves)
        assert b.services.invalidator is not None
        await b.services.invalidator.poll()
        assert saved
        question = {"message": "How long does delivery take?", "locale": "en-GB"}  # not re-warmed by A
        first = (await a.client.post("/v1/chat", json=question)).json()
        assert cited in [citation["id"] for citation in first["citations"]]
        again = (await a.client.post("/v1/chat", json=question)).json()
        assert (first["cache"], again["cache"]) == ("miss", "exact")  # version 3's answer was cached


async def test_a_replica_whose_late_invalidation_named_an_older_version_caches_nothing_from_it(
    sqlite_url: str, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, and B's next read of the database fails: B answers from its copy of version 2 until it can read
    again. Those answers are refused by the store, so no replica serves them (found by a review, session 19: B's
    late invalidation set the store back to version 2, and A served B's old answer as a hit)."""
    async with two_replicas(sqlite_url, embedder) as (a, _fake_a, b, fake_b):
        await save_delivery_times(a, "Every order arrives within 3 hours.")  # version 2
        knowledge, read = b.services.knowledge, b.services.knowledge.refresh
        reads: list[bool] = []

        async def read_then_a_saves_then_the_database_fails() -> list[str]:
            reads.append(True)
            if len(reads) > 1:
                raise ConnectionError("the database went away")
            changed = await read()
            await save_delivery_times(a)  # version 3 is saved and invalidated before B's invalidation lands
            return changed

        monkeypatch.setattr(knowledge, "refresh", read_then_a_saves_then_the_database_fails)
        assert b.services.invalidator is not None
        await b.services.invalidator.poll()
        assert len(reads) == 2  # B read again after invalidating, and could not
        assert "3 hours" in (knowledge.get(DELIVERY_TIMES) or pytest.fail("no document")).text  # B's copy is old
        question = {"message": "How long does delivery take?", "locale": "en-GB"}  # not re-warmed by A
        fake_b.default = FakeReply(text="Every order arrives within 3 hours.")
        stale = (await b.client.post("/v1/chat", json=question)).json()
        assert DELIVERY_TIMES in [citation["id"] for citation in stale["citations"]]
        assert (await b.client.post("/v1/chat", json=question)).json()["cache"] == "miss"  # refused by the store
        first = (await a.client.post("/v1/chat", json=question)).json()
        again = (await a.client.post("/v1/chat", json=question)).json()
        assert (first["cache"], again["cache"]) == ("miss", "exact")  # A answers from version 3 and caches it
        assert first["reply"] != stale["reply"]


async def test_streamed_requests_whose_call_went_away_before_any_text_do_not_all_call_again(
    cached: tuple[Api, FakeProvider],
) -> None:
    """The request making the call is cancelled before the provider sent anything: the streamed requests
    following it go round again together, one makes the next call and the others follow it."""
    api, fake = cached
    chat = api.services.chat
    assert chat is not None
    leader, _ = await leader_and_waiters(api, fake, 0, delay_s=0.5)

    async def stream() -> list[ChatEvent]:
        prepared = await chat.prepare("How long does delivery take?", principal=ANONYMOUS, request_id="r")
        return [event async for event in chat.chat_stream(prepared)]

    followers = [asyncio.create_task(stream()) for _ in range(3)]
    await asyncio.sleep(0.1)
    leader.cancel()
    streams = await asyncio.gather(*followers)
    assert len(fake.requests) == 2  # the cancelled call, and one for the three
    assert sorted(str(events[-1].data["cache"]) for events in streams) == ["exact", "exact", "miss"]


async def first_delta_then_leave(chat: ChatService, question: str) -> str:
    """A streamed request whose shopper goes away after the first piece of text; that piece."""
    prepared = await chat.prepare(question, principal=ANONYMOUS, request_id="gone")
    async with contextlib.aclosing(chat.chat_stream(prepared)) as events:
        async for event in events:
            if event.kind == "delta":
                return str(event.data["text"])
    raise AssertionError("no text came")


async def test_a_leader_whose_shopper_leaves_keeps_answering_those_following_it(
    cached: tuple[Api, FakeProvider],
) -> None:
    """The shopper whose request makes the call goes away mid-reply: the streamed requests following it still get
    the whole answer (before, they got reply_cut), and the call is recorded and cached as usual. A call nobody
    follows is still stopped when its shopper leaves."""
    api, fake = cached
    chat = api.services.chat
    assert chat is not None
    question = "How long does delivery take?"
    fake.default = FakeReply(
        text="Standard delivery takes one to two working days.", first_token_delay_s=0.5, chunks=4, chunk_delay_s=0.3
    )

    async def stream() -> list[ChatEvent]:
        prepared = await chat.prepare(question, principal=ANONYMOUS, request_id="r")
        return [event async for event in chat.chat_stream(prepared)]

    leaving = asyncio.create_task(first_delta_then_leave(chat, question))  # leaves once the follower follows
    await wait_for_provider_call(fake)
    following = asyncio.create_task(stream())
    await leaving
    events = await following
    assert (events[-1].kind, events[-1].data["reply"]) == ("done", "Standard delivery takes one to two working days.")
    assert len(fake.requests) == 1
    assert fake.cancelled == 0
    assert (await ask(api, question))["cache"] == "exact"
    assert await api.conversations.count() == 3  # the shopper who left is recorded too
    fake.default = FakeReply(text="Orders are packed the same day.", chunks=4, chunk_delay_s=0.3)
    await first_delta_then_leave(chat, "When are orders packed?")  # alone: the call stops with its shopper
    deadline = time.monotonic() + 5
    while fake.cancelled == 0:
        assert time.monotonic() < deadline, "the call nobody followed was not stopped"
        await asyncio.sleep(0.02)


async def test_a_follower_of_a_cut_reply_records_why_it_was_cut(cached: tuple[Api, FakeProvider]) -> None:
    """The reply a streamed request follows is cut: the follower ends with the same error, and its record says why
    the call it followed stopped (the operators see the provider's reason on both, not a fixed text)."""
    api, fake = cached
    chat = api.services.chat
    assert chat is not None
    fake.default = FakeReply(text="Delivery takes one to two working days.", chunks=5, cut_after=2, chunk_delay_s=0.3)

    async def stream() -> tuple[str, list[ChatEvent]]:
        prepared = await chat.prepare("How long does delivery take?", principal=ANONYMOUS, request_id="r")
        return prepared.session_id, [event async for event in chat.chat_stream(prepared)]

    leading = asyncio.create_task(stream())
    await wait_for_provider_call(fake)
    (follower_session, followed), (leader_session, led) = await asyncio.gather(stream(), leading)
    assert len(fake.requests) == 1
    assert [events[-1].data["code"] for events in (led, followed)] == ["reply_cut", "reply_cut"]
    (leader_row,) = await api.conversations.history(leader_session)
    (follower_row,) = await api.conversations.history(follower_session)
    assert leader_row.error is not None
    assert leader_row.error.startswith("reply cut: ")
    reason = leader_row.error.removeprefix("reply cut: ")
    assert follower_row.error == f"reply cut: the reply this one followed was cut ({reason})"


async def test_shoppers_asking_a_question_being_rewarmed_wait_for_it(sqlite_url: str, embedder: Embedder) -> None:
    """A document change removes a popular answer, which is re-warmed in the background. Shoppers on both replicas
    who ask that question meanwhile get the re-warmed answer: one provider call in all. The re-warm used to call
    the provider outside the single flight and the answer lock, and a shopper's request made a second call
    (found by a review, session 22)."""
    question = "How long does delivery take?"
    async with two_replicas(sqlite_url, embedder) as (a, fake_a, b, fake_b):
        for _ in range(3):  # popular
            await ask(a, question)
        new = FakeReply(text="Every order now arrives within 2 hours.", first_token_delay_s=1.0)
        fake_a.default = fake_b.default = new
        calls_before = len(fake_a.requests)
        await save_delivery_times(a)
        await wait_for_provider_call(fake_a, calls_before + 1)  # the re-warm's call is under way
        answers = await asyncio.gather(*(ask(api, question) for api in (a, b) for _ in range(5)))
        assert a.services.invalidator is not None
        await a.services.invalidator.settled()
        assert {str(body["reply"]) for body in answers} == {new.text}
        assert len(fake_a.requests) - calls_before + len(fake_b.requests) == 1


async def test_a_leader_whose_shopper_leaves_keeps_answering_a_plain_request_waiting_for_it(
    cached: tuple[Api, FakeProvider],
) -> None:
    """A plain (not streamed) request waits for an identical streamed call; the streamed call's shopper leaves.
    The call goes on for the request waiting (before, only streamed followers kept it: it was stopped and the
    waiter made a second call, found by a review, session 22)."""
    api, fake = cached
    chat = api.services.chat
    question, whole = "How long does delivery take?", "Standard delivery takes one to two working days."
    fake.default = FakeReply(text=whole, chunks=5, chunk_delay_s=0.3)
    leader = await chat.prepare(question, principal=ANONYMOUS, request_id="leader")
    async with contextlib.aclosing(chat.chat_stream(leader)) as led:
        async for event in led:
            if event.kind == "delta":
                break
        waiter = asyncio.create_task(api.client.post("/v1/chat", json={"message": question}))
        await asyncio.sleep(0.2)  # the plain request is waiting for the call
    body = (await waiter).json()  # the leader's shopper has gone
    assert body["reply"] == whole
    assert (len(fake.requests), fake.cancelled) == (1, 0)


@pytest.mark.parametrize("ending", ["cut", "left"])
async def test_a_request_arriving_as_a_call_ends_without_an_answer_makes_its_own(
    sqlite_url: str, embedder: Embedder, blackhole_redis: TcpProxy, ending: str
) -> None:
    """A streamed call is cut by its provider, or stopped because its shopper left with nobody following. An
    identical streamed request that arrives while the call's request is still letting go (recording the cut,
    unlocking in Redis: 20 ms a way here) used to join the dead call: it was sent the partial text, then
    reply_cut, with no provider call of its own (found by a review, session 22). The call is over once it ends
    without an answer: the newcomer makes its own and gets the whole reply."""
    whole = "Standard delivery takes one to two working days."
    fake = FakeProvider(name="gemini", model="gemini-test", default=FakeReply(text=whole))
    first = FakeReply(text=whole, chunks=5, chunk_delay_s=0.2, cut_after=2 if ending == "cut" else None)
    fake.replies = [first]
    settings = settings_through(blackhole_redis, sqlite_url, "t" + secrets.token_hex(6), cache_timeout_s=1.0)
    async with running_api(settings, embedder, [fake, ExtractiveProvider(0.5)]) as api:
        chat = api.services.chat
        question = "How long does delivery take?"
        newcomer = await chat.prepare(question, principal=ANONYMOUS, request_id="newcomer")  # a miss
        leader = await chat.prepare(question, principal=ANONYMOUS, request_id="leader")
        blackhole_redis.add_latency(0.02)
        led = chat.chat_stream(leader)
        try:
            async for event in led:
                if (ending == "cut" and event.kind == "error") or (ending == "left" and event.kind == "delta"):
                    break  # the leader's shopper has seen the cut (its request is still letting go), or leaves
            if ending == "left":
                await led.aclose()  # gone: the call nobody follows is stopped
            events = [event async for event in chat.chat_stream(newcomer)]  # at once
        finally:
            await led.aclose()
        assert (events[-1].kind, "".join(str(e.data.get("text", "")) for e in events)) == ("done", whole)
        assert len(fake.requests) == 2


async def test_a_lock_holder_whose_cache_is_bypassed_still_lets_go_of_its_lock(
    sqlite_url: str, embedder: Embedder
) -> None:
    """Replica A holds the answer lock; a moment of slowness puts A's cache in bypass before its answer lands. A
    still sends its unlock (before, a bypass skipped it), so B's waiter learns at once that A is done instead of
    polling a lock nobody holds until it lapses (found by a review, session 7)."""
    slow = FakeReply(text="Standard delivery takes one to two working days.", first_token_delay_s=1.0)
    question = "How long does delivery take?"
    async with two_replicas(sqlite_url, embedder, slow) as (a, fake_a, b, _fake_b):
        cache_a = a.services.cache
        assert cache_a is not None
        leader = asyncio.create_task(ask(a, question))
        await wait_for_provider_call(fake_a)
        waiter = asyncio.create_task(ask(b, question))
        await asyncio.sleep(0.3)
        cache_a._bypass_until = time.monotonic() + 2.0  # as after one timed-out call on replica A
        assert (await leader)["cache"] == "miss"
        finished = time.perf_counter()
        await waiter
        waited = time.perf_counter() - finished
    assert waited < 1.5, f"B waited {waited:.1f} s after A had finished (the lock was left to lapse: 3 s)"


async def test_an_invalidation_on_a_slow_store_is_bounded(
    sqlite_url: str, embedder: Embedder, blackhole_redis: TcpProxy
) -> None:
    """Redis slow but within each call's timeout: ranking the popular answers of 60 tags read them one call at a
    time (6.2 s at 0.1 s a round trip) and held the admin's request. The ranking now has one deadline, half the
    invalidation's, and the answers still go (found by a review, session 7)."""
    fake = FakeProvider(name="gemini", model="gemini-test")
    settings = settings_through(blackhole_redis, sqlite_url, "t" + secrets.token_hex(6), cache_timeout_s=1.0)
    async with running_api(settings, embedder, [fake, ExtractiveProvider(0.5)]) as api:
        for _ in range(3):  # popular: asked three times
            await ask(api, "How long does delivery take?")
        blackhole_redis.add_latency(0.05)  # each way: a round trip of 0.1 s, well within the 1 s per call
        tags = [DELIVERY_TIMES, *(f"faq-unused-{n}" for n in range(59))]
        started = time.perf_counter()
        response = await api.client.post("/v1/admin/cache/invalidate", json={"tags": tags}, headers=ADMIN)
        took = time.perf_counter() - started
        assert response.status_code == 200, response.text
        assert response.json()["removed"] >= 1
    # The deadline, the wait for peers' near copies, and 0.5 s for a loaded machine (2.27 s seen in a full run on a
    # busy one); the unbounded ranking took 6.2 s.
    assert took < 2.0 + settings.cache_near_ms / 1000 + 0.5, f"the invalidation took {took:.1f} s"


async def test_a_document_saved_through_the_admin_api_keeps_its_ingest_tags(cached: tuple[Api, FakeProvider]) -> None:
    """`PUT /v1/admin/kb/documents/{id}` replaced the document's ingest tags with none: answers drawn on the new
    text did not carry them, and an invalidation by tag left them stale (found by a review, session 7)."""
    api, _fake = cached
    body = {
        "title": "How do I create a Greenbasket account?",
        "text": "Sign up in the app with your email.",
        "kind": "faq",
    }
    response = await api.client.put("/v1/admin/kb/documents/faq-create-account", json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "faq-create-account", "removed": 0, "created": False}
    stored = await KnowledgeRepository(api.services.sessions).get("faq-create-account")
    assert stored is not None
    assert stored.tags == ["account"]
    assert (await ask(api, "How do I create a Greenbasket account?"))["cache"] == "miss"
    assert (await ask(api, "How do I create a Greenbasket account?"))["cache"] == "exact"
    response = await api.client.post("/v1/admin/cache/invalidate", json={"tags": ["account"]}, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["removed"] >= 1


MATCHA = {"kind": "product", "title": "Organic matcha green tea powder",
          "text": "Ceremonial-grade organic matcha green tea powder from Japan, 30 g tin, EUR 14.90."}  # fmt: skip


async def add_matcha(api: Api) -> int:
    """Add the matcha product through the admin API; how many cached answers it removed."""
    response = await api.client.put("/v1/admin/kb/documents/prod-matcha", json=MATCHA, headers=ADMIN)
    assert response.status_code == 200, response.text
    removed: int = response.json()["removed"]
    return removed


async def test_an_added_document_removes_the_answers_given_without_it(cached: tuple[Api, FakeProvider]) -> None:
    """An answer given before a document existed cites other documents, so no tag reaches it: "we don't sell
    matcha" stayed cached for the whole TTL after matcha was added (found by a review, session 8). Adding the
    document removes the answers whose question retrieval now gives it to, and only those."""
    api, fake = cached
    question, unrelated = "Do you sell matcha green tea powder?", "Which payment methods do you accept?"
    fake.replies = [FakeReply(text="Sorry, matcha is not in our range."), FakeReply(text="Cards and PayPal.")]
    for _ in range(3):  # popular: re-warmed once removed
        await ask(api, question)
    await ask(api, unrelated)
    assert len(fake.requests) == 2
    fake.default = FakeReply(text="Yes: organic matcha green tea powder, EUR 14.90 a tin.")
    assert await add_matcha(api) == 1
    assert api.services.invalidator is not None
    await api.services.invalidator.settled()  # re-warmed in the background from the new catalogue
    again = await ask(api, question)
    assert (again["cache"], again["reply"]) == ("exact", "Yes: organic matcha green tea powder, EUR 14.90 a tin.")
    citations = again["citations"]
    assert isinstance(citations, list)
    assert "prod-matcha" in {citation["id"] for citation in citations}
    other = await ask(api, unrelated)
    assert (other["cache"], other["reply"]) == ("exact", "Cards and PayPal.")  # it never retrieves matcha
    assert len(fake.requests) == 3
    # A second replica polling the same addition keeps the answer drawn on the document.
    await api.services.invalidator.reach(["prod-matcha"])
    assert (await ask(api, question))["cache"] == "exact"


async def test_a_document_added_by_another_process_reaches_every_replica_on_its_poll(
    sqlite_url: str, embedder: Embedder
) -> None:
    """`helpline kb ingest` or another replica adds the document: each replica, on its next knowledge poll, removes
    from the shared store the answers it gave without it (a replica that had not polled yet may have cached one
    after the first replica's poll)."""
    tenant = "t" + secrets.token_hex(6)
    settings = make_settings(sqlite_url, redis_url="redis://127.0.0.1:6379/0", tenant=tenant, kb_refresh_s=3600,
                             **UNLIMITED)  # fmt: skip
    question = "Do you sell matcha green tea powder?"
    fake = FakeProvider(name="gemini", model="m", default=FakeReply(text="Sorry, matcha is not in our range."))
    async with running_api(settings, embedder, [fake, ExtractiveProvider(0.5)]) as api:
        assert (await ask(api, question))["cache"] == "miss"
        assert (await ask(api, question))["cache"] == "exact"
        other = KnowledgeBase(KnowledgeRepository(api.services.sessions), embedder)
        await other.load()
        await other.upsert(SourceDocument("prod-matcha", "product", MATCHA["title"], MATCHA["text"], {}, [], "test"))
        assert (await ask(api, question))["cache"] == "exact"  # not polled yet
        assert api.services.invalidator is not None
        fake.default = FakeReply(text="Yes, we sell organic matcha.")
        await api.services.invalidator.poll()
        await api.services.invalidator.settled()  # asked three times: popular, re-warmed from the new catalogue
        again = await ask(api, question)
    assert (again["cache"], again["reply"]) == ("exact", "Yes, we sell organic matcha.")
    assert len(fake.requests) == 2


async def test_a_replica_that_has_not_polled_an_added_document_caches_nothing_without_it(
    sqlite_url: str, embedder: Embedder
) -> None:
    """Replica A adds matcha to the catalogue; replica B has not polled it yet and answers "no matcha" from its
    copy. That answer is not cached (A's invalidation declared the knowledge revision it read, and B's copy is
    older), so no replica serves it once B's copy has matcha (found by a review, session 19: it was cached until
    B's own poll removed it, up to KB_REFRESH_S later). Once B has polled, its answers are cached again."""
    question = {"message": "Do you sell matcha green tea powder?", "locale": "en-GB"}  # not re-warmed by A
    async with two_replicas(sqlite_url, embedder) as (a, _fake_a, b, fake_b):
        assert b.services.invalidator is not None
        # B cannot catch up before it answers (as when its database does not answer in time; see the next tests):
        # the store's refusal is what keeps its answer out of the cache.
        b.services.chat.catch_up = None
        await add_matcha(a)
        fake_b.default = FakeReply(text="Sorry, matcha is not in our range.")
        stale = (await b.client.post("/v1/chat", json=question)).json()
        assert "prod-matcha" not in {citation["id"] for citation in stale["citations"]}  # B's copy has no matcha
        assert (await b.client.post("/v1/chat", json=question)).json()["cache"] == "miss"  # refused: not cached
        await b.services.invalidator.poll()
        fake_b.default = FakeReply(text="Yes: organic matcha green tea powder, EUR 14.90 a tin.")
        fresh = (await b.client.post("/v1/chat", json=question)).json()
        again = (await b.client.post("/v1/chat", json=question)).json()
        assert "prod-matcha" in {citation["id"] for citation in fresh["citations"]}
        assert (fresh["cache"], again["cache"], again["reply"]) == ("miss", "exact", fresh["reply"])
        assert len(fake_b.requests) == 3


async def test_a_replica_reads_a_change_made_on_another_before_it_answers(sqlite_url: str, embedder: Embedder) -> None:
    """Replica A changes the delivery times (its PUT returned 200); replica B, which has not polled, is asked
    next: it reads the change before it answers, not up to KB_REFRESH_S later (found by a review, session 26:
    B's provider was given the old text), and its answer is cached as any other."""
    async with two_replicas(sqlite_url, embedder, FakeReply(text="Within 2 hours.")) as (a, _fake_a, b, fake_b):
        await save_delivery_times(a)
        first = await ask(b, "How long does delivery take?")
        again = await ask(b, "How long does delivery take?")
    given = {p.id: p.text for p in fake_b.requests[0].passages}
    assert "within 2 hours" in given[DELIVERY_TIMES]
    assert (first["cache"], again["cache"]) == ("miss", "exact")


async def test_a_replica_that_cannot_read_a_change_waits_for_it_once_and_briefly(
    sqlite_url: str, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B's database does not answer its read of the change: the first request waits CATCH_UP_S for it, then
    answers from B's copy (not cached: the store refuses it); the next ones do not wait at all for a while."""
    async with two_replicas(sqlite_url, embedder, FakeReply(text="Three days.")) as (a, _fake_a, b, fake_b):
        hung = asyncio.Event()

        async def hanging() -> list[str]:
            await hung.wait()
            return []

        monkeypatch.setattr(b.services.knowledge, "refresh", hanging)
        await save_delivery_times(a)
        started = time.monotonic()
        first = await ask(b, "How long does delivery take?")
        waited = time.monotonic() - started
        started = time.monotonic()
        second = await ask(b, "How long does delivery take?")
        unwaited = time.monotonic() - started
        hung.set()
    assert 1.0 <= waited < 3.0
    assert unwaited < 0.8
    assert (first["cache"], second["cache"]) == ("miss", "miss")  # from the old copy: never cached
    assert "within 2 hours" not in {p.id: p.text for p in fake_b.requests[0].passages}[DELIVERY_TIMES]


async def test_deleting_a_document_removes_it_and_the_answers_that_drew_on_it(
    cached: tuple[Api, FakeProvider],
) -> None:
    """A discontinued product must leave the knowledge base and every cached answer about it."""
    api, fake = cached
    await add_matcha(api)
    question, unrelated = "Do you sell matcha green tea powder?", "Which payment methods do you accept?"
    fake.replies = [FakeReply(text="Yes: organic matcha, EUR 14.90 a tin."), FakeReply(text="Cards and PayPal.")]
    first = await ask(api, question)
    cited = first["citations"]
    assert isinstance(cited, list)
    assert "prod-matcha" in {citation["id"] for citation in cited}
    await ask(api, unrelated)
    assert (await api.client.delete("/v1/admin/kb/documents/prod-matcha")).status_code == 401
    response = await api.client.delete("/v1/admin/kb/documents/prod-matcha", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "prod-matcha", "removed": 1}
    assert api.services.knowledge.get("prod-matcha") is None
    assert await KnowledgeRepository(api.services.sessions).get("prod-matcha") is None
    fake.default = FakeReply(text="Sorry, matcha is not in our range.")
    again = await ask(api, question)
    assert (again["cache"], again["reply"]) == ("miss", "Sorry, matcha is not in our range.")
    assert "prod-matcha" not in {p.id for p in fake.requests[-1].passages}  # no longer retrieved
    assert (await ask(api, unrelated))["cache"] == "exact"  # it never drew on the product
    missing = await api.client.delete("/v1/admin/kb/documents/prod-matcha", headers=ADMIN)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "document_not_found")
    invalid = await api.client.delete("/v1/admin/kb/documents/bad%20id!", headers=ADMIN)
    assert invalid.status_code == 422


async def test_a_document_deleted_through_a_replica_with_an_older_copy_takes_its_answers_with_it(
    sqlite_url: str, embedder: Embedder
) -> None:
    """Replica A saves a new text and caches an answer drawn on it; replica B, which has not polled that change,
    deletes the document. B's deletion is newer than A's version, whatever B's copy held: the answer goes (found
    by a review, session 20: the deletion was ordered after the version B last had, older than A's, so the store
    kept A's answer and served it after the document was gone)."""
    question = {"message": "How long does delivery take?", "locale": "en-GB"}
    async with two_replicas(sqlite_url, embedder) as (a, fake_a, b, fake_b):
        await save_delivery_times(a)
        fake_a.default = FakeReply(text="Every order now arrives within 2 hours.")
        fake_b.default = FakeReply(text="Delivery times are on our shipping page.")
        first = (await a.client.post("/v1/chat", json=question)).json()
        again = (await a.client.post("/v1/chat", json=question)).json()
        assert DELIVERY_TIMES in [citation["id"] for citation in first["citations"]]
        assert (first["cache"], again["cache"]) == ("miss", "exact")
        assert b.services.knowledge.version(DELIVERY_TIMES) != a.services.knowledge.version(DELIVERY_TIMES)
        response = await b.client.delete(f"/v1/admin/kb/documents/{DELIVERY_TIMES}", headers=ADMIN)
        assert response.status_code == 200, response.text
        assert response.json()["removed"] >= 1
        from_b = (await b.client.post("/v1/chat", json=question)).json()
        from_a = (await a.client.post("/v1/chat", json=question)).json()
        assert from_b["cache"] == "miss"  # then cached, drawn without the document: A's hit is that answer
        assert (from_a["cache"], from_a["reply"]) == ("exact", from_b["reply"])
        for after in (from_b, from_a):
            assert after["reply"] != first["reply"]
            assert DELIVERY_TIMES not in [citation["id"] for citation in after["citations"]]


async def test_knowledge_restored_from_a_backup_takes_the_cached_answers_with_it(
    sqlite_url: str, embedder: Embedder
) -> None:
    """The database goes back to a backup taken before a document's change: its knowledge revision is lower than
    the store's marks, which came from the newer knowledge. The replica that sees it first removes everything the
    store holds for the store's tenant, so the answer drawn on the text that is gone is not served, and answers are
    cached again from the restored knowledge (found by a review, session 20: the newer marks kept that answer and
    refused every new one until they expired, two hours)."""
    question = {"message": "How long does delivery take?", "locale": "en-GB"}
    path = sqlite_url.removeprefix("sqlite+aiosqlite:///")
    backup_query = "SELECT text, content_hash, revision FROM kb_documents WHERE id = ?"
    with sqlite3.connect(path) as database:
        backup = database.execute(backup_query, (DELIVERY_TIMES,)).fetchone()
        counter = database.execute("SELECT revision FROM kb_revision").fetchone()
    async with two_replicas(sqlite_url, embedder) as (a, fake_a, b, fake_b):
        assert a.services.invalidator is not None
        assert b.services.invalidator is not None
        await save_delivery_times(a)
        fake_a.default = fake_b.default = FakeReply(text="Every order now arrives within 2 hours.")
        new = [(await a.client.post("/v1/chat", json=question)).json()["cache"] for _ in range(2)]
        assert new == ["miss", "exact"]
        with sqlite3.connect(path) as database:  # the restore
            database.execute(
                "UPDATE kb_documents SET text = ?, content_hash = ?, revision = ? WHERE id = ?",
                (*backup, DELIVERY_TIMES),
            )
            database.execute("UPDATE kb_revision SET revision = ?", counter)
        with capture_logs() as logs:
            await b.services.invalidator.poll()
        fake_a.default = fake_b.default = FakeReply(text="Standard delivery takes one to two working days.")
        restored = [(await b.client.post("/v1/chat", json=question)).json() for _ in range(2)]
        assert [(body["cache"], body["reply"]) for body in restored] == [
            ("miss", "Standard delivery takes one to two working days."),
            ("exact", "Standard delivery takes one to two working days."),
        ]
        assert [line["event"] for line in logs if line["event"] in {"knowledge_went_back", "cache_reset"}] == [
            "knowledge_went_back", "cache_reset"
        ]  # fmt: skip
        assert b.services.invalidator.owed is False
        await a.services.invalidator.poll()  # A follows without a second reset, and its answers are cached too
        assert a.services.invalidator.went_back is False
        british = {**question, "locale": "en-US"}
        assert [(await a.client.post("/v1/chat", json=british)).json()["cache"] for _ in range(2)] == ["miss", "exact"]


async def test_two_databases_on_one_cache_tenant_keep_their_answers_and_revisions_apart(
    sqlite_url: str, database_urls: dict[str, str], embedder: Embedder
) -> None:
    """Two stores, each with its database (SQLite and PostgreSQL), whose services share one Redis and one tenant
    (a staging and a production store left on the default tenant). Each store's shoppers get their own store's
    answers, and a change in the store with the longer history does not make the other one take it for a restored
    backup and empty the cache store, on every poll (before the keys carried the database's identity: the second
    store was served the first's answer, exact, and each of its polls removed everything)."""
    with sqlite3.connect(sqlite_url.removeprefix("sqlite+aiosqlite:///")) as database:  # a long history
        database.execute("UPDATE kb_revision SET revision = revision + 100000")
    shared = {"redis_url": "redis://127.0.0.1:6379/0", "tenant": "t" + secrets.token_hex(6), "kb_refresh_s": 3600}
    fake_a = FakeProvider(name="gemini", model="a", default=FakeReply(text="Store A delivers in two days."))
    fake_b = FakeProvider(name="gemini", model="b", default=FakeReply(text="Store B delivers in a week."))
    async with (
        running_api(make_settings(sqlite_url, **shared, **UNLIMITED), embedder, [fake_a, ExtractiveProvider(0.5)]) as a,
        running_api(make_settings(database_urls["postgresql"], **shared, **UNLIMITED), embedder,
                    [fake_b, ExtractiveProvider(0.5)]) as b,
    ):  # fmt: skip
        assert b.services.invalidator is not None
        question = "How long does delivery take?"
        assert [(await ask(a, question))["cache"] for _ in range(2)] == ["miss", "exact"]
        from_b = [await ask(b, question) for _ in range(2)]
        assert [(body["cache"], body["reply"]) for body in from_b] == [
            ("miss", "Store B delivers in a week."), ("exact", "Store B delivers in a week.")
        ]  # fmt: skip
        await save_delivery_times(a)  # declares store A's revision (above 100000) to the cache store
        assert [(await ask(a, question))["cache"] for _ in range(2)] == ["miss", "exact"]
        with capture_logs() as logs:
            await b.services.invalidator.poll()
        assert [line for line in logs if line["event"] in {"knowledge_went_back", "cache_reset"}] == []
        assert ((await ask(a, question))["cache"], (await ask(b, question))["cache"]) == ("exact", "exact")


async def test_a_reset_the_store_did_not_confirm_holds_reads_until_one_does(
    sqlite_url: str, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The knowledge went back and the first reset fails (it may have removed the knowledge mark that showed it
    before failing): no cached answer is served until a later round's reset goes through; a request's round (an
    admin PUT, with a budget) leaves the reset, a scan of the store, to the watcher."""
    path = sqlite_url.removeprefix("sqlite+aiosqlite:///")
    async with two_replicas(sqlite_url, embedder) as (a, _fake_a, b, _fake_b):
        invalidator, cache = b.services.invalidator, b.services.cache
        assert invalidator is not None
        assert cache is not None
        await save_delivery_times(a)
        with sqlite3.connect(path) as database:  # the restore: back to before the change
            database.execute("UPDATE kb_revision SET revision = revision - 1")
        reset = cache.reset
        calls: list[str] = []

        async def fails_once(reason: str) -> int:
            calls.append(reason)
            if len(calls) == 1:
                await reset(reason)  # the knowledge mark that showed it is gone, but the store's answer is lost
                raise CacheUnavailable("the store did not answer")
            return await reset(reason)

        monkeypatch.setattr(cache, "reset", fails_once)
        with pytest.raises(CacheUnavailable):
            await invalidator.sync(5.0)  # a request's round: it sees the knowledge go back, and leaves the reset
        assert (calls, invalidator.went_back, cache.reads_held) == ([], True, True)
        await invalidator.poll()
        assert (len(calls), invalidator.went_back, cache.reads_held) == (1, True, True)
        await invalidator.poll()
        assert (len(calls), invalidator.went_back, cache.reads_held) == (2, False, False)


async def test_a_restore_followed_by_a_change_still_replaces_the_marks_of_the_knowledge_that_is_gone(
    sqlite_url: str, embedder: Embedder
) -> None:
    """As above, but a document is added after the restore before any replica polls: the database's revision is
    back at the store's knowledge mark, so nothing looks gone back. The replica that polls sees the restored
    document changed under its copy and names its restored version with the revision its copy was read at, at or
    above the newer mark's: that mark cannot come from this database's history and is replaced, so the answer
    drawn on the text that is gone goes (found by a review, session 20: the newer mark kept it)."""
    question = {"message": "How long does delivery take?", "locale": "en-GB"}
    path = sqlite_url.removeprefix("sqlite+aiosqlite:///")
    with sqlite3.connect(path) as database:
        backup = database.execute(
            "SELECT text, content_hash, revision FROM kb_documents WHERE id = ?", (DELIVERY_TIMES,)
        ).fetchone()
        counter = database.execute("SELECT revision FROM kb_revision").fetchone()
    async with two_replicas(sqlite_url, embedder) as (a, fake_a, b, fake_b):
        assert a.services.invalidator is not None
        await save_delivery_times(a)
        fake_a.default = fake_b.default = FakeReply(text="Every order now arrives within 2 hours.")
        assert [(await a.client.post("/v1/chat", json=question)).json()["cache"] for _ in range(2)] == ["miss", "exact"]
        with sqlite3.connect(path) as database:  # the restore
            restore = "UPDATE kb_documents SET text = ?, content_hash = ?, revision = ? WHERE id = ?"
            database.execute(restore, (*backup, DELIVERY_TIMES))
            database.execute("UPDATE kb_revision SET revision = ?", counter)
        await add_matcha(b)  # the revision the store's knowledge mark names again
        await a.services.invalidator.poll()
        fake_a.default = FakeReply(text="Standard delivery takes one to two working days.")
        restored = [(await a.client.post("/v1/chat", json=question)).json() for _ in range(2)]
        assert [(body["cache"], body["reply"]) for body in restored] == [
            ("miss", "Standard delivery takes one to two working days."),
            ("exact", "Standard delivery takes one to two working days."),
        ]


@pytest.mark.parametrize("allowed", [False, True])
async def test_last_resort_answers_are_cached_only_when_a_setting_says_so(
    sqlite_url: str, embedder: Embedder, allowed: bool
) -> None:
    """Gemini down, the knowledge base's own answer stands in: not cached by default (the model should answer once it
    is back), cached with CACHE_FALLBACK_ANSWERS."""
    down = FakeProvider(name="gemini", default=FakeReply(error=Unavailable("down")))
    settings = make_settings(sqlite_url, cache_fallback_answers=allowed, **UNLIMITED)
    async with running_api(settings, embedder, [down, ExtractiveProvider(0.5)]) as api:
        first = await ask(api, "How long does delivery take?")
        second = await ask(api, "How long does delivery take?")
    assert (first["provider"], first["action"]) == ("extractive", "answer")
    assert second["cache"] == ("exact" if allowed else "miss")
    assert second["reply"] == first["reply"]
