"""Identical streamed misses across replicas (cache.relay): one provider call, its text relayed as it streams.

Two replicas on one Redis and one database, each with its own scripted provider. Replica A's request takes the
answer's lock and calls its provider; B's identical streamed requests follow A's call through the relay stream
instead of waiting in silence and then (after the first-token timeout) calling B's provider as well."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from helpline.cache import relay as relay_module
from helpline.cache.backend import RELAY_READ_COUNT, RELAY_START
from helpline.cache.relay import CUT, END, HEAD, TEXT, RelayWriter, header
from helpline.cache.service import AnswerCache, Flight, Relay
from helpline.chat.service import RELAY_CODEC, ChatEvent, ChatService
from helpline.knowledge.embeddings import Embedder
from helpline.providers.fake import FakeProvider, FakeReply
from helpline.store.repositories import ANONYMOUS
from tests.cache.test_cache_api import (
    first_delta_then_leave,
    prepared_on,
    save_delivery_times,
    two_replicas,
    wait_for_provider_call,
)
from tests.conftest import Api

QUESTION = "How long does delivery take?"
REPLY = "Standard delivery takes one to two working days, and express delivery arrives the next working day."
# A streamed request on another replica waits this long for the call it would follow to begin streaming.
# Most replies below come in pieces 0.3 s apart: a stall timeout well above that keeps a busy CI machine from
# ending a call mid-reply (it did once, at 0.5 s).
TIMINGS = {"first_token_timeout_s": 0.5, "stall_timeout_s": 1.5, "provider_timeout_s": 10.0}

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


Append = Callable[[str, Sequence[tuple[bytes, bytes]], float], Awaitable[bool]]


async def relayed_through(
    a: Api, fake_a: FakeProvider, b: Api, store: Callable[[Append], Append]
) -> tuple[Timed, Timed]:
    """A streamed request on A, whose relay writes go through ``store`` (given the real write), followed by one on
    B once A's provider works on it: (A's events, B's events)."""
    cache = a.services.cache
    assert cache is not None
    cache.backend.relay_append = store(cache.backend.relay_append)  # type: ignore[method-assign,assignment]
    leading = asyncio.create_task(stream_on(a))
    await wait_for_provider_call(fake_a)
    events = await stream_on(b)
    return await leading, events


class SecondWrite:
    """A's relay writes (see relayed_through), with ``act`` done once before the second that carries entries (the
    first holds the header and the first words)."""

    def __init__(self, act: Callable[[], Awaitable[None]]) -> None:
        self.act = act
        self.written = 0
        self.acted = False

    def __call__(self, append: Append) -> Append:
        async def store(key: str, entries: Sequence[tuple[bytes, bytes]], ttl_s: float) -> bool:
            if self.written == 1 and not self.acted and entries:
                self.acted = True
                await self.act()
            added = await append(key, entries, ttl_s)
            self.written += added and bool(entries)
            return added

        return store


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


async def test_streamed_requests_on_another_replica_wait_for_a_plain_requests_call_however_long_it_takes(
    sqlite_url: str, embedder: Embedder
) -> None:
    """A plain request on A makes the call: its reply comes whole, well after the first-token timeout (2.4 s against
    1.5 s). B's streamed requests used to give up on it after that timeout (no text came to the relay) and call B's
    provider: two calls for one answer. A's relay now starts as soon as somebody reads it (its header, before any
    text), so B's requests follow A's call as they would an identical plain request's in their own process."""
    slow = FakeReply(text=REPLY, chunks=4, chunk_delay_s=0.8)
    timings = {**TIMINGS, "first_token_timeout_s": 1.5}  # B sees the header within it on a busy machine too
    async with two_replicas(sqlite_url, embedder, slow, **timings) as (a, fake_a, b, fake_b):
        first = asyncio.create_task(a.client.post("/v1/chat", json={"message": QUESTION}))
        await wait_for_provider_call(fake_a)
        followed = await asyncio.gather(stream_on(b), stream_on(b))
        assert (await first).json()["reply"] == REPLY
    assert (len(fake_a.requests), len(fake_b.requests)) == (1, 0)
    for events in followed:
        done = events[-1][1]
        assert (done.kind, done.data["cache"], done.data["reply"], text_of(events)) == ("done", "exact", REPLY, REPLY)


async def test_a_holder_gone_before_any_text_leaves_its_followers_to_make_their_own_call(
    sqlite_url: str, embedder: Embedder
) -> None:
    """B follows A's call from its header, before any text; then A is gone (its lock let go of, no outcome). B's
    shopper, shown nothing yet, is not left with an error: B makes its own call and answers."""
    timings = {**TIMINGS, "first_token_timeout_s": 1.5}  # B sees the header within it on a busy machine too
    async with two_replicas(sqlite_url, embedder, FakeReply(text=REPLY), **timings) as (a, _, b, fake_b):
        async with holding(a) as (_, cache, key):
            following = asyncio.create_task(stream_on(b))
            deadline = time.monotonic() + 5
            while not fake_b.requests and not following.done():  # B reads A's stream, its header and nothing more
                lock = cache.keys.lock(key)
                stream = cache.keys.relay(key, (await cache.backend.peek(key, lock))[1] or b"")
                if await cache.backend.relay_read(stream, RELAY_START):
                    break
                assert time.monotonic() < deadline, "A's relay never began"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert not following.done()
            assert fake_b.requests == []
        events = await asyncio.wait_for(following, 10)  # A let go of its lock without an outcome
    assert (events[-1][1].kind, text_of(events)) == ("done", REPLY)
    assert len(fake_b.requests) == 1


async def test_a_call_nobody_follows_does_not_wait_for_a_check_for_readers_at_its_end() -> None:
    """While nobody reads its relay, a holder's writer asks the store now and then whether somebody does. A call
    that ends while such a check is on its way (a slow store) lets its shopper go at once: nothing is left to write
    for anybody, so the check finishes in the background (the cache's close awaits it)."""
    checks: list[Sequence[tuple[bytes, bytes]]] = []
    answer = asyncio.Event()

    async def append(entries: Sequence[tuple[bytes, bytes]]) -> bool | None:
        checks.append(entries)
        await answer.wait()
        return False  # nobody reads

    flight = Flight()
    flight.origin = (1, 0, 0)  # its call has read the knowledge
    writer = flight.mirror = RelayWriter(append, RELAY_CODEC, flight)
    deadline = time.monotonic() + 5
    while not checks:
        assert time.monotonic() < deadline, "the writer never checked for a reader"
        await asyncio.sleep(0.01)
    flight.land(None)
    left = await asyncio.wait_for(writer.close(5.0), 0.5)  # not the 5 s: the check is not waited for
    assert left is not None
    answer.set()
    await asyncio.wait_for(left, 1)
    assert [list(entries) for entries in checks] == [[]]  # a check, and nothing written after it


def test_a_call_that_has_not_read_the_knowledge_yet_never_holds_the_event_loop() -> None:
    """A streamed call shows text while its relay cannot be followed yet (the store did not answer the read of its
    marks: no header to write). Its writer must pause between looks, not spin: an early version of the header's
    check looped without ever yielding (review helper-48), freezing the whole replica. Run in a thread of its own,
    so that a spinning loop fails this test instead of hanging the suite."""
    done: list[str] = []

    async def scenario() -> None:
        async def append(entries: Sequence[tuple[bytes, bytes]]) -> bool | None:
            raise AssertionError("nothing may be written for a call nobody can follow")

        flight = Flight()  # origin None: its marks were never read
        writer = flight.mirror = RelayWriter(append, RELAY_CODEC, flight)
        flight.publish("Standard delivery takes ")
        await asyncio.sleep(0.3)  # the loop turns meanwhile
        flight.land(None)
        left = await writer.close(1.0)
        if left is not None:
            await left
        done.append("over")

    thread = threading.Thread(target=lambda: asyncio.run(scenario()), daemon=True)
    thread.start()
    thread.join(5)
    assert done == ["over"]


async def test_a_holder_followed_before_its_first_words_notices_its_reader_leave() -> None:
    """A holder's header is read by another replica, then that reader leaves before any text came (its shopper
    went). The holder keeps asking whether somebody reads while it has nothing to write (review helper-48: it
    stopped asking once the header was written), so its call is no longer kept going for nobody: ``wanted``
    turns false, and its own shopper's leaving would stop it."""
    reading = True
    written: list[bytes] = []

    async def append(entries: Sequence[tuple[bytes, bytes]]) -> bool | None:
        if reading:
            written.extend(kind for kind, _ in entries)
        return reading

    flight = Flight()
    flight.origin = (1, 0, 0)
    writer = flight.mirror = RelayWriter(append, RELAY_CODEC, flight)
    deadline = time.monotonic() + 5
    while written != [HEAD]:
        assert time.monotonic() < deadline, "the header was never written"
        await asyncio.sleep(0.01)
    assert flight.wanted
    reading = False
    while flight.wanted:
        assert time.monotonic() < deadline, "the holder never noticed its reader leave"
        await asyncio.sleep(0.01)
    flight.land(None)
    left = await writer.close(1.0)
    if left is not None:
        await left
    assert written == [HEAD]


async def test_an_outcome_that_comes_right_after_a_write_goes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The call ends while its last words are being written to a reader. The outcome must follow at once: the
    writer's pause cleared the end's wake-up and slept a whole check interval first (review helper-49), so the
    holder let go of its lock before its outcome when that interval had grown. (The interval is 2 s here, so a
    lost wake-up cannot pass for a slow machine.)"""
    monkeypatch.setattr(relay_module, "RELAY_IDLE_FLUSH_S", 2.0)
    written: list[tuple[float, bytes]] = []
    ended = asyncio.Event()
    flight = Flight()
    flight.origin = (1, 0, 0)

    async def append(entries: Sequence[tuple[bytes, bytes]]) -> bool | None:
        written.extend((time.monotonic(), kind) for kind, _ in entries)
        if any(kind == TEXT for kind, _ in entries):
            flight.land(None)  # the call is over (cut) while its last words go
        if any(kind == CUT for kind, _ in entries):
            ended.set()
        return True  # somebody reads

    writer = flight.mirror = RelayWriter(append, RELAY_CODEC, flight)
    flight.publish("Standard delivery takes ")
    await asyncio.wait_for(ended.wait(), 5)
    assert await writer.close(1.0) is None
    kinds = [kind for _, kind in written]
    assert kinds == [HEAD, TEXT, CUT]
    assert written[-1][0] - written[1][0] < 1.0


@contextlib.asynccontextmanager
async def holding(api: Api) -> AsyncIterator[tuple[Flight, AnswerCache, str]]:
    """``api`` (replica A) as if one of its requests were answering QUESTION: it leads the flight, holds the lock
    and relays what the test publishes to the flight; (the flight, A's cache, the entry key)."""
    held, cache = await prepared_on(api, QUESTION)
    key = cache.entry_key(held.message, held.scope)
    async with cache.single_flight(key) as (flight, leading):
        assert leading
        relay = Relay(flight, RELAY_CODEC, follow=False, deadline=time.monotonic() + 60)
        async with cache.peer_lock(held.message, held.scope, relay=relay) as found:
            assert found is None  # A makes the call
            flight.origin = await cache.marks()  # as its call reads the knowledge
            yield flight, cache, key


async def test_a_followed_call_is_given_up_once_its_holder_is_gone_not_while_it_is_quiet(
    sqlite_url: str, embedder: Embedder
) -> None:
    """A's relayed text pauses for longer than a stall timeout and a second (2.5 s here; the router may be handing
    the reply to the next model, or A recording it): B's request keeps following while A holds the lock. Then A is
    gone without an outcome (its lock released; a dead replica's lapses): B ends cut at once, with what was shown,
    not at its deadline (10 s), and makes no call for a reply already half shown."""
    async with two_replicas(sqlite_url, embedder, None, **TIMINGS) as (a, _, b, fake_b), holding(a) as held:
        flight, cache, key = held
        flight.publish("Standard delivery takes ")
        following = asyncio.create_task(stream_on(b))
        await asyncio.sleep(2.5)
        assert not following.done()
        flight.publish("one to two working days.")
        await asyncio.sleep(0.3)
        lock = cache.keys.lock(key)
        _, token = await cache.backend.peek(key, lock)
        assert token is not None
        await cache.backend.unlock(lock, token.decode())  # A is gone
        started = time.monotonic()
        events = await asyncio.wait_for(following, 10)
        elapsed = time.monotonic() - started
    assert text_of(events) == "Standard delivery takes one to two working days."
    assert (events[-1][1].kind, events[-1][1].data["code"]) == ("error", "reply_cut")
    assert elapsed < 1.0
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


@pytest.mark.parametrize("pieces", [1, RELAY_READ_COUNT + 44], ids=["short", "past-one-read"])
async def test_a_request_arriving_after_a_relayed_call_was_cut_makes_its_own(
    sqlite_url: str, embedder: Embedder, pieces: int
) -> None:
    """A's call was cut after some text and A has not let go of the lock yet (it records the cut, then unlocks). A
    request arriving on B meanwhile must not replay that dead call's partial text and its reply_cut: it makes its
    own call and gets a whole reply (the same rule as for a call in its own process, session 22), however many
    pieces the dead call wrote (more than one read of the stream returns, written here straight to the store)."""
    reply = FakeReply(text=REPLY)
    async with two_replicas(sqlite_url, embedder, reply, **TIMINGS) as (a, _, b, fake_b), holding(a) as held:
        flight, cache, key = held
        lock = cache.keys.lock(key)
        stream = cache.keys.relay(key, (await cache.backend.peek(key, lock))[1] or b"")
        await cache.backend.relay_poll(key, lock, stream, RELAY_START, 5)  # somebody reads it
        if pieces == 1:  # through A's relay writer
            flight.publish("Standard delivery takes ")
            await asyncio.sleep(0.3)  # A's writer finds the reader and writes
            flight.cut = "the stream ended before its final chunk"
            flight.land(None)
            await asyncio.sleep(0.3)  # the text and the cut are in the relay stream; the lock is still held
        else:
            texts = [(TEXT, b"%d:word " % (5 * piece)) for piece in range(pieces)]
            assert await cache.backend.relay_append(
                stream, [(HEAD, header(flight.origin)), *texts, (CUT, b"the stream ended")], 30
            )
        assert (await cache.backend.relay_read(stream, RELAY_START))[0][1] == HEAD  # its stream is there
        events = await asyncio.wait_for(stream_on(b), 10)
    assert (events[-1][1].kind, text_of(events)) == ("done", REPLY)
    assert len(fake_b.requests) == 1


async def leave_after(chat: ChatService, deltas: int) -> str:
    """A streamed request whose shopper goes away after ``deltas`` pieces of text; the text it was shown."""
    prepared = await chat.prepare(QUESTION, principal=ANONYMOUS, request_id="gone")
    shown, seen = "", 0
    async with contextlib.aclosing(chat.chat_stream(prepared)) as events:
        async for event in events:
            if event.kind == "delta":
                shown, seen = shown + str(event.data["text"]), seen + 1
                if seen == deltas:
                    return shown
    raise AssertionError("not enough text came")


async def test_the_holders_call_goes_on_for_other_replicas_when_its_shopper_leaves(
    sqlite_url: str, embedder: Embedder
) -> None:
    """A's shopper leaves mid-reply and nobody on A follows, but two of B's requests do: A's call goes on for them
    (as it does for requests following it on A), and they get the whole answer, not reply_cut (review helper-45)."""
    slow = FakeReply(text=REPLY, chunks=8, chunk_delay_s=0.3)
    async with two_replicas(sqlite_url, embedder, slow, **TIMINGS) as (a, fake_a, b, fake_b):
        chat = a.services.chat
        assert chat is not None
        leaving = asyncio.create_task(leave_after(chat, 4))
        await wait_for_provider_call(fake_a)
        await asyncio.sleep(0.1)
        following = asyncio.gather(stream_on(b), stream_on(b))
        await leaving
        followed = await following
    for events in followed:
        assert (events[-1][1].kind, text_of(events)) == ("done", REPLY)
    assert (len(fake_a.requests), fake_a.cancelled, len(fake_b.requests)) == (1, 0, 0)


async def test_a_request_asked_after_an_invalidation_does_not_follow_a_call_that_read_the_old_knowledge(
    sqlite_url: str, embedder: Embedder
) -> None:
    """A streams an answer drawn on the old delivery policy; the policy changes (through B); then a shopper asks
    on B. B must not follow A's call (its answer is from a version that is gone, review helper-45): it answers
    from the new text, as it would not join a call of its own process begun before an invalidation."""
    old = FakeReply(text="Standard delivery takes three days.", chunks=12, chunk_delay_s=0.3)  # a 3.6 s call
    async with two_replicas(sqlite_url, embedder, old, **TIMINGS) as (a, fake_a, b, fake_b):
        fake_b.default = FakeReply(text="Orders arrive within 2 hours.")
        leading = asyncio.create_task(stream_on(a))
        await wait_for_provider_call(fake_a)
        await save_delivery_times(b)
        assert not leading.done()
        events = await stream_on(b)  # asked after the change
        await leading
    done = events[-1][1]
    assert (done.kind, done.data["reply"], text_of(events)) == (
        "done",
        "Orders arrive within 2 hours.",
        done.data["reply"],
    )
    assert len(fake_b.requests) == 1


async def test_a_relay_write_that_fails_leaves_no_hole_in_the_followers_text(
    sqlite_url: str, embedder: Embedder
) -> None:
    """One of A's relay writes fails (a store hiccup): its text goes with the next write, so B's shopper reads the
    same words as A's, none missing (review helper-45: they were dropped), and the hiccup does not switch A's cache
    off for every request."""
    slow = FakeReply(text=REPLY, chunks=6, chunk_delay_s=0.3)

    async def hiccup() -> None:
        raise ConnectionError("a hiccup")

    second = SecondWrite(hiccup)
    async with two_replicas(sqlite_url, embedder, slow, **TIMINGS) as (a, fake_a, b, fake_b):
        led, events = await relayed_through(a, fake_a, b, second)
        assert a.services.cache is not None
        assert a.services.cache.available
    assert (second.acted, second.written >= 2) == (True, True)
    assert text_of(events) == text_of(led) == REPLY
    assert events[-1][1].kind == "done"
    assert fake_b.requests == []


async def test_an_answer_whose_relayed_outcome_was_lost_is_taken_from_the_cache(
    sqlite_url: str, embedder: Embedder
) -> None:
    """A's last writes (its last words and its outcome) fail; A stored the answer and let go of the lock. B's
    request, which was following, takes the answer from the cache with the words it had not been sent yet, and
    ends done, not cut (reviews helper-45 and helper-46)."""
    slow = FakeReply(text=REPLY, chunks=4, chunk_delay_s=0.3)

    def no_ending(append: Append) -> Append:
        async def store(key: str, entries: Sequence[tuple[bytes, bytes]], ttl_s: float) -> bool:
            if any(kind in (END, CUT) or b"next working day" in payload for kind, payload in entries):
                raise ConnectionError("the last writes fail")  # the last words, and the outcome
            return await append(key, entries, ttl_s)

        return store

    async with two_replicas(sqlite_url, embedder, slow, **TIMINGS) as (a, fake_a, b, fake_b):
        _, events = await relayed_through(a, fake_a, b, no_ending)
    done = events[-1][1]
    assert (done.kind, done.data["cache"], text_of(events)) == ("done", "exact", REPLY)
    assert fake_b.requests == []


async def test_a_lone_follower_whose_shopper_leaves_stops_following(sqlite_url: str, embedder: Embedder) -> None:
    """The only request on B following A's call goes away: B stops following (nothing recorded for a shopper who
    left and whom nobody else on B waits with), while A's call goes on for A's shopper."""
    slow = FakeReply(text=REPLY, chunks=6, chunk_delay_s=0.3)
    async with two_replicas(sqlite_url, embedder, slow, **TIMINGS) as (a, fake_a, b, _):
        chat = b.services.chat
        assert chat is not None
        leading = asyncio.create_task(stream_on(a))
        await wait_for_provider_call(fake_a)
        assert await leave_after(chat, 1)
        led = await leading
        await asyncio.sleep(0.5)
        recorded = await a.conversations.count()
    assert text_of(led) == REPLY
    assert recorded == 1  # A's shopper's only


async def test_a_relay_write_that_lands_after_its_timeout_is_not_shown_twice(
    sqlite_url: str, embedder: Embedder
) -> None:
    """One of A's writes is slow (Redis busy for 0.3 s, twice the store timeout): A writes its text again, and then
    the slow write lands too. B's shopper reads each word once, in order (review helper-46: "…and eStandard delivery
    takes one…")."""
    slow = FakeReply(text=REPLY, chunks=6, chunk_delay_s=0.3)
    second = SecondWrite(lambda: asyncio.sleep(0.3))
    async with two_replicas(sqlite_url, embedder, slow, **TIMINGS) as (a, fake_a, b, fake_b):
        led, events = await relayed_through(a, fake_a, b, second)
    assert second.acted
    assert text_of(events) == text_of(led) == REPLY
    assert fake_b.requests == []


async def test_a_call_from_a_copy_of_the_knowledge_older_than_an_invalidation_named_is_not_followed(
    sqlite_url: str, embedder: Embedder
) -> None:
    """The policy changes through B, which names the new knowledge revision in its invalidation. A has not read
    the change yet (it polls every few seconds): a call A starts now reads the store's current marks but A's old
    text. B's shopper must not follow it (review helper-46): B answers from the new text."""
    old = FakeReply(text="Standard delivery takes three days.", chunks=6, chunk_delay_s=0.3)
    async with two_replicas(sqlite_url, embedder, old, **TIMINGS) as (a, fake_a, b, fake_b):
        fake_b.default = FakeReply(text="Orders arrive within 2 hours.")
        a.services.chat.catch_up = None  # A cannot read the change before it calls (its database is slow)
        await save_delivery_times(b)
        leading = asyncio.create_task(stream_on(a))  # A still has the old text
        await wait_for_provider_call(fake_a)
        events = await stream_on(b)
        await leading
    done = events[-1][1]
    assert (done.kind, done.data["reply"]) == ("done", "Orders arrive within 2 hours.")
    assert len(fake_b.requests) == 1


async def test_an_outcome_written_after_the_unlock_still_reaches_the_followers(
    sqlite_url: str, embedder: Embedder
) -> None:
    """A's outcome (a handoff, never cached) is written slowly, and lands after A let go of the lock. B's
    followers wait a moment for it rather than end cut at once (review helper-46)."""
    handoff = FakeReply(text="Let me pass you to a colleague who can look into this.", action="handoff", chunks=4,
                        chunk_delay_s=0.3)  # fmt: skip

    def slow_end(append: Append) -> Append:
        async def store(key: str, entries: Sequence[tuple[bytes, bytes]], ttl_s: float) -> bool:
            if any(kind == END for kind, _ in entries):
                await asyncio.sleep(0.25)  # longer than the store timeout (0.15 s): A stops waiting for it
            return await append(key, entries, ttl_s)

        return store

    async with two_replicas(sqlite_url, embedder, handoff, **TIMINGS) as (a, fake_a, b, fake_b):
        _, events = await relayed_through(a, fake_a, b, slow_end)
    assert (events[-1][1].kind, events[-1][1].data["action"]) == ("done", "handoff")
    assert fake_b.requests == []


async def test_a_plain_miss_nobody_follows_makes_no_relay_write(sqlite_url: str, embedder: Embedder) -> None:
    """A plain request's answer, stored in the cache, with nobody on another replica reading its call: its shopper
    waits for no relay write (review helper-47: every plain miss paid one, up to the store timeout when slow); a
    request arriving now finds the answer in the cache."""
    writes: list[int] = []

    def counted(append: Append) -> Append:
        async def store(key: str, entries: Sequence[tuple[bytes, bytes]], ttl_s: float) -> bool:
            writes.append(len(entries))
            await asyncio.sleep(0.2)  # a slow store: whoever waits for this write shows it
            return await append(key, entries, ttl_s)

        return store

    async with two_replicas(sqlite_url, embedder, FakeReply(text=REPLY), **TIMINGS) as (a, _, b, fake_b):
        cache = a.services.cache
        assert cache is not None
        cache.backend.relay_append = counted(cache.backend.relay_append)  # type: ignore[method-assign,assignment]
        started = time.perf_counter()
        response = await a.client.post("/v1/chat", json={"message": QUESTION})
        took = time.perf_counter() - started
        assert response.json()["cache"] == "miss"
        assert (await b.client.post("/v1/chat", json={"message": QUESTION})).json()["cache"] == "exact"
    assert writes == []
    assert took < 0.2
    assert fake_b.requests == []


async def test_an_outcome_whose_write_fails_once_is_written_again(sqlite_url: str, embedder: Embedder) -> None:
    """The write of A's outcome (a handoff: never cached, so the relay is the only way B's followers get it) fails
    once: it is tried again before A lets go, and B's followers end done, not cut (review helper-47)."""
    handoff = FakeReply(text="Let me pass you to a colleague who can look into this.", action="handoff", chunks=4,
                        chunk_delay_s=0.3)  # fmt: skip
    failed = 0

    def once(append: Append) -> Append:
        async def store(key: str, entries: Sequence[tuple[bytes, bytes]], ttl_s: float) -> bool:
            nonlocal failed
            if not failed and any(kind == END for kind, _ in entries):
                failed += 1
                raise ConnectionError("a hiccup")
            return await append(key, entries, ttl_s)

        return store

    async with two_replicas(sqlite_url, embedder, handoff, **TIMINGS) as (a, fake_a, b, fake_b):
        _, events = await relayed_through(a, fake_a, b, once)
    assert failed == 1
    assert (events[-1][1].kind, events[-1][1].data["action"]) == ("done", "handoff")
    assert fake_b.requests == []


async def test_a_stream_entry_the_follower_cannot_read_ends_its_reply_at_once(
    sqlite_url: str, embedder: Embedder
) -> None:
    """A's stream holds a piece of text this release cannot read (another release's format, during a rolling
    upgrade): B's request ends its reply cut at once with what it could show, rather than wait for nothing."""
    async with two_replicas(sqlite_url, embedder, None, **TIMINGS) as (a, _, b, fake_b), holding(a) as held:
        flight, cache, key = held
        lock = cache.keys.lock(key)
        stream = cache.keys.relay(key, (await cache.backend.peek(key, lock))[1] or b"")
        await cache.backend.relay_poll(key, lock, stream, RELAY_START, 5)  # somebody reads it
        readable, unreadable = (TEXT, b"0:Standard delivery "), (TEXT, b"takes one to two working days.")
        assert await cache.backend.relay_append(stream, [(HEAD, header(flight.origin)), readable, unreadable], 30)
        started = time.monotonic()
        events = await asyncio.wait_for(stream_on(b), 10)
        elapsed = time.monotonic() - started
    assert text_of(events) == "Standard delivery "
    assert (events[-1][1].kind, events[-1][1].data["code"]) == ("error", "reply_cut")
    assert elapsed < 2.0
    assert fake_b.requests == []
