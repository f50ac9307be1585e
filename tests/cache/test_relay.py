"""Identical streamed misses across replicas (cache.relay): one provider call, its text relayed as it streams.

Two replicas on one Redis and one database, each with its own scripted provider. Replica A's request takes the
answer's lock and calls its provider; B's identical streamed requests follow A's call through the relay stream
instead of waiting in silence and then (after the first-token timeout) calling B's provider as well."""

from __future__ import annotations

import asyncio
import time

import pytest

from helpline.cache.service import Relay
from helpline.chat.service import RELAY_CODEC, ChatEvent
from helpline.knowledge.embeddings import Embedder
from helpline.providers.fake import FakeReply
from helpline.store.repositories import ANONYMOUS
from tests.cache.test_cache_api import first_delta_then_leave, prepared_on, two_replicas, wait_for_provider_call
from tests.conftest import Api

QUESTION = "How long does delivery take?"
REPLY = "Standard delivery takes one to two working days, and express delivery arrives the next working day."
# A streamed request on another replica waits this long for the call it would follow to begin streaming.
TIMINGS = {"first_token_timeout_s": 0.5, "stall_timeout_s": 0.5, "provider_timeout_s": 10.0}

Timed = list[tuple[float, ChatEvent]]


async def stream_on(api: Api, question: str = QUESTION) -> Timed:
    """A streamed request on ``api``, through the chat service: its events, each with when it came."""
    chat = api.services.chat
    assert chat is not None
    prepared = await chat.prepare(question, principal=ANONYMOUS, request_id="relay-test")
    return [(time.monotonic(), event) async for event in chat.chat_stream(prepared)]


def text_of(events: Timed) -> str:
    return "".join(str(event.data["text"]) for _, event in events if event.kind == "delta")


def first_text_at(events: Timed) -> float:
    return next(at for at, event in events if event.kind == "delta")


async def streamed_on_both(a: Api, fake_a_calls: list[object], b: Api, followers: int = 2) -> tuple[Timed, list[Timed]]:
    """A streamed request on A and, once A's provider works on it, ``followers`` identical ones on B."""
    leading = asyncio.create_task(stream_on(a))
    deadline = time.monotonic() + 10
    while not fake_a_calls:
        assert time.monotonic() < deadline, "A's provider was never called"
        await asyncio.sleep(0.01)
    followed = await asyncio.gather(*(stream_on(b) for _ in range(followers)))
    return await leading, list(followed)


async def test_streamed_requests_on_another_replica_follow_its_call_as_it_streams(
    sqlite_url: str, embedder: Embedder
) -> None:
    """A's reply takes about 2 s, four times the first-token timeout. B's requests used to wait that timeout in
    silence and then make their own call (one provider call per replica). They are sent A's text while A streams
    it, the same text, then the answer as A cached it: one provider call in all."""
    slow = FakeReply(text=REPLY, chunks=6, chunk_delay_s=0.4)
    async with two_replicas(sqlite_url, embedder, slow, **TIMINGS) as (a, fake_a, b, fake_b):
        led, followed = await streamed_on_both(a, fake_a.requests, b)  # type: ignore[arg-type]
    assert (len(fake_a.requests), len(fake_b.requests)) == (1, 0)
    assert (led[-1][1].kind, led[-1][1].data["cache"]) == ("done", "miss")
    finished = led[-1][0]
    for events in followed:
        assert first_text_at(events) < finished - 1.0  # while A was still streaming
        assert text_of(events) == text_of(led) == REPLY
        done = events[-1][1]
        assert (done.kind, done.data["cache"], done.data["reply"]) == ("done", "exact", REPLY)


@pytest.mark.parametrize("leader_streams", [True, False], ids=["streamed", "plain"])
async def test_a_reply_not_worth_caching_reaches_identical_streamed_requests_on_another_replica(
    sqlite_url: str, embedder: Embedder, leader_streams: bool
) -> None:
    """A handoff is never cached, so B's requests could not find it in the cache: when A let go of the lock they
    made calls of their own. The relay carries A's outcome itself: B's requests get the handoff, as a miss that
    cost them nothing, and B's provider is never asked. (A plain request on A relays no text, only its outcome.)"""
    handoff = FakeReply(text="Let me pass you to a colleague who can look into this.", action="handoff", chunks=4,
                        chunk_delay_s=0.3 if leader_streams else 0.05)  # fmt: skip
    async with two_replicas(sqlite_url, embedder, handoff, **TIMINGS) as (a, fake_a, b, fake_b):
        if leader_streams:
            led, followed = await streamed_on_both(a, fake_a.requests, b)  # type: ignore[arg-type]
            assert (led[-1][1].kind, led[-1][1].data["action"]) == ("done", "handoff")
        else:
            first = asyncio.create_task(a.client.post("/v1/chat", json={"message": QUESTION}))
            await wait_for_provider_call(fake_a)
            followed = list(await asyncio.gather(stream_on(b), stream_on(b)))
            assert (await first).json()["action"] == "handoff"
    assert (len(fake_a.requests), len(fake_b.requests)) == (1, 0)
    for events in followed:
        done = events[-1][1]
        assert (done.kind, done.data["cache"], done.data["action"]) == ("done", "miss", "handoff")
        assert (done.data["provider"], done.data["model"]) == ("gemini", "a")  # A's model's reply
        assert text_of(events) == done.data["reply"] == "Let me pass you to a colleague who can look into this."


async def test_a_reply_cut_on_its_replica_ends_cut_on_the_other(sqlite_url: str, embedder: Embedder) -> None:
    """A's model stops halfway: A's shopper gets the text so far and then the reply_cut error; so do B's, who were
    following it (the same text, the same ending), and B makes no call of its own for a reply already half shown."""
    cut = FakeReply(text=REPLY, chunks=6, chunk_delay_s=0.3, cut_after=3)
    async with two_replicas(sqlite_url, embedder, cut, **TIMINGS) as (a, fake_a, b, fake_b):
        led, followed = await streamed_on_both(a, fake_a.requests, b)  # type: ignore[arg-type]
    assert (led[-1][1].kind, led[-1][1].data["code"]) == ("error", "reply_cut")
    assert text_of(led)
    for events in followed:
        assert text_of(events) == text_of(led)
        assert (events[-1][1].kind, events[-1][1].data["code"]) == ("error", "reply_cut")
    assert len(fake_b.requests) == 0


async def test_a_followed_call_that_goes_quiet_is_given_up_within_the_stall_timeout(
    sqlite_url: str, embedder: Embedder
) -> None:
    """A holds the lock and has relayed some text, then nothing more (its replica stopped, or lost its Redis):
    B's request shows that text and ends cut once the stream has been quiet for the stall timeout and a second's
    grace, not after its whole deadline (10 s here)."""
    async with two_replicas(sqlite_url, embedder, None, **TIMINGS) as (a, _, b, fake_b):
        held, cache = await prepared_on(a, QUESTION)
        async with cache.single_flight(cache.entry_key(held.message, held.scope)) as (flight, leading):
            assert leading
            relay = Relay(flight, RELAY_CODEC, follow=False, quiet_s=60, deadline=time.monotonic() + 60)
            async with cache.peer_lock(held.message, held.scope, relay=relay) as found:
                assert found is None  # A makes the call
                flight.publish("Standard delivery takes ")
                started = time.monotonic()
                events = await asyncio.wait_for(stream_on(b), 10)
                elapsed = time.monotonic() - started
    assert text_of(events) == "Standard delivery takes "
    assert (events[-1][1].kind, events[-1][1].data["code"]) == ("error", "reply_cut")
    assert 1.5 <= elapsed < 3.0  # stall timeout 0.5 s + 1 s grace, and the polls
    assert fake_b.requests == []


async def test_a_request_following_another_replicas_call_keeps_following_for_others_when_its_shopper_leaves(
    sqlite_url: str, embedder: Embedder
) -> None:
    """On B, one request follows A's call through the relay and a second follows that one (the same replica's
    flight). The first one's shopper leaves at the first words: the second still gets the whole answer, as it would
    following a call made on B (it used to end cut: B stopped following when the request it followed stopped)."""
    slow = FakeReply(text=REPLY, first_token_delay_s=0.8, chunks=6, chunk_delay_s=0.3)
    timings = {**TIMINGS, "first_token_timeout_s": 1.5}
    async with two_replicas(sqlite_url, embedder, slow, **timings) as (a, fake_a, b, fake_b):
        chat = b.services.chat
        assert chat is not None
        leading = asyncio.create_task(stream_on(a))
        await wait_for_provider_call(fake_a)
        leaving = asyncio.create_task(first_delta_then_leave(chat, QUESTION))
        await asyncio.sleep(0.2)  # B's first request is waiting for A's text: the second joins it
        following = asyncio.create_task(stream_on(b))
        assert await leaving
        events, led = await following, await leading
    done = events[-1][1]
    assert (done.kind, done.data["cache"], done.data["reply"]) == ("done", "exact", REPLY)
    assert text_of(events) == text_of(led) == REPLY
    assert (len(fake_a.requests), len(fake_b.requests)) == (1, 0)


async def test_a_request_arriving_after_a_relayed_call_was_cut_makes_its_own(
    sqlite_url: str, embedder: Embedder
) -> None:
    """A's call was cut after some text and A has not let go of the lock yet (it records the cut, then unlocks). A
    request arriving on B meanwhile must not replay that dead call's partial text and its reply_cut: it makes its
    own call and gets a whole reply (the same rule as for a call in its own process, session 22)."""
    async with two_replicas(sqlite_url, embedder, FakeReply(text=REPLY), **TIMINGS) as (a, _, b, fake_b):
        held, cache = await prepared_on(a, QUESTION)
        async with cache.single_flight(cache.entry_key(held.message, held.scope)) as (flight, leading):
            assert leading
            relay = Relay(flight, RELAY_CODEC, follow=False, quiet_s=60, deadline=time.monotonic() + 60)
            async with cache.peer_lock(held.message, held.scope, relay=relay) as found:
                assert found is None
                flight.publish("Standard delivery takes ")
                flight.cut = "the stream ended before its final chunk"
                flight.land(None)
                await asyncio.sleep(0.2)  # the text and the cut are in the relay stream; the lock is still held
                events = await asyncio.wait_for(stream_on(b), 10)
    assert (events[-1][1].kind, text_of(events)) == ("done", REPLY)
    assert len(fake_b.requests) == 1
