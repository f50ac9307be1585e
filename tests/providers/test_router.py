"""The fallback router with scripted providers: failover, hedging, breakers, cooldowns, cut streams."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import statistics
import time
from collections.abc import AsyncGenerator
from dataclasses import replace

import pytest
import uvloop

from helpline.chat.reply import parse_reply
from helpline.providers.base import (
    CompletionRequest,
    RateLimited,
    SafetyRefusal,
    StreamChunk,
    StreamCut,
    Unavailable,
)
from helpline.providers.breaker import CircuitBreaker
from helpline.providers.extractive import ExtractiveProvider
from helpline.providers.fake import FakeProvider, FakeReply
from helpline.providers.router import APOLOGY_REPLY, Attempt, FallbackRouter, RouterTimings, Slot

FAST = RouterTimings(
    first_token_s=0.2, reply_s=2.0, stall_s=0.3, health_interval_s=0.3, breaker_failures=2, breaker_window_s=30
)
REQUEST = CompletionRequest("How long does delivery take?")


def fakes(*names: str) -> list[FakeProvider]:
    return [
        FakeProvider(name=name, model=f"{name}-model", default=FakeReply(text=f"answer from {name}")) for name in names
    ]


async def collect(router: FallbackRouter, live: bool = True) -> list[StreamChunk]:
    return [chunk async for chunk in router.stream(REQUEST, live=live)]


def text_of(chunks: list[StreamChunk]) -> str:
    return parse_reply("".join(c.text for c in chunks), ()).text


async def test_healthy_primary_answers() -> None:
    primary, secondary = fakes("primary", "secondary")
    chunks = await collect(FallbackRouter([primary, secondary], FAST))
    assert text_of(chunks) == "answer from primary"
    assert chunks[-1].done
    assert chunks[-1].provider == "primary"
    assert secondary.requests == []


@pytest.mark.parametrize("live", [True, False])
async def test_error_before_first_token_fails_over(live: bool) -> None:
    primary, secondary = fakes("primary", "secondary")
    primary.default = FakeReply(error=Unavailable("503"))
    router = FallbackRouter([primary, secondary], FAST)
    chunks = await collect(router, live)
    assert text_of(chunks) == "answer from secondary"
    assert {c.provider for c in chunks} == {"secondary"}


async def test_hung_primary_costs_only_the_first_token_deadline() -> None:
    primary, secondary = fakes("primary", "secondary")
    primary.default = FakeReply(first_token_delay_s=30)
    router = FallbackRouter([primary, secondary], FAST)
    started = time.perf_counter()
    chunks = await collect(router)
    elapsed = time.perf_counter() - started
    assert text_of(chunks) == "answer from secondary"
    assert FAST.first_token_s <= elapsed < FAST.first_token_s + 0.15
    assert primary.cancelled == 1  # the loser of the race is cancelled


async def test_slow_primary_still_wins_when_the_hedge_is_slower() -> None:
    primary, secondary = fakes("primary", "secondary")
    primary.default = FakeReply(text="late but first", first_token_delay_s=0.3)
    secondary.default = FakeReply(first_token_delay_s=5)
    chunks = await collect(FallbackRouter([primary, secondary], FAST))
    assert text_of(chunks) == "late but first"
    assert secondary.cancelled == 1


async def test_breaker_opens_then_skips_the_dead_provider_quickly_and_recovers() -> None:
    primary, secondary = fakes("primary", "secondary")
    primary.default = FakeReply(error=Unavailable("down"))
    router = FallbackRouter([primary, secondary], FAST)
    for _ in range(FAST.breaker_failures):
        await collect(router)
    assert router.slots[0].breaker.state == "open"
    calls = len(primary.requests)
    baseline = FallbackRouter([secondary], FAST)
    direct, skipped = [], []
    for _ in range(21):  # medians: the machine is shared, single timings jitter
        started = time.perf_counter()
        await collect(baseline)
        direct.append(time.perf_counter() - started)
        started = time.perf_counter()
        chunks = await collect(router)
        skipped.append(time.perf_counter() - started)
    assert statistics.median(skipped) - statistics.median(direct) < 0.005
    assert len(primary.requests) == calls  # not even tried
    assert chunks[-1].provider == "secondary"
    # Recovery: a passing health check lets one probe through, and its success closes the breaker.
    primary.default = FakeReply(text="back again")
    await router.check_health()
    states: list[str] = [router.slots[0].breaker.state]
    assert text_of(await collect(router)) == "back again"
    states.append(router.slots[0].breaker.state)
    assert states == ["half_open", "closed"]


async def test_rate_limit_retry_after_is_a_cooldown() -> None:
    primary, secondary = fakes("primary", "secondary")
    primary.replies = [FakeReply(error=RateLimited("429", retry_after_s=0.3))]
    router = FallbackRouter([primary, secondary], FAST)
    assert (await collect(router))[-1].provider == "secondary"
    assert (await collect(router))[-1].provider == "secondary"
    assert len(primary.requests) == 1  # skipped during the cooldown
    await asyncio.sleep(0.35)
    assert (await collect(router))[-1].provider == "primary"


async def test_live_cut_is_continued_by_the_next_provider_with_the_text_so_far() -> None:
    primary, secondary = fakes("primary", "secondary")
    primary.default = FakeReply(text="Delivery takes one to two working days.", chunks=4, cut_after=2)
    secondary.default = FakeReply(text=" working days.", cite_first=False)
    router = FallbackRouter([primary, secondary], FAST)
    chunks = await collect(router)
    shown = "".join(c.text for c in chunks if c.provider == "primary")
    assert shown
    assert secondary.requests[0].partial == shown
    assert chunks[-1].done
    assert chunks[-1].provider == "secondary"


@pytest.mark.parametrize("live", [True, False])
async def test_a_stream_that_lost_only_its_end_after_the_control_line_is_complete(live: bool) -> None:
    """The model wrote its whole reply, control line last, and only the stream's final chunk was lost: not a cut
    reply for the next model to continue (a review, session 26, found the continuation written after the control
    line, shown and cached with it)."""
    primary, secondary = fakes("primary", "secondary")
    primary.default = FakeReply(text="Delivery takes one to two working days.", chunks=3, cut_after=3)
    chunks = await collect(FallbackRouter([primary, secondary], FAST), live=live)
    assert text_of(chunks) == "Delivery takes one to two working days."
    assert (chunks[-1].done, chunks[-1].provider, secondary.requests) == (True, "primary", [])


@dataclasses.dataclass
class RefusedAtTheEnd(FakeProvider):
    """Writes its whole reply, control line included, and then refuses it (Gemini's SAFETY / SPII finish)."""

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamChunk, None]:
        self.requests.append(request)
        yield StreamChunk("Here is what you asked for.\n<<ACTION=answer; SOURCES=x>>")
        raise SafetyRefusal("blocked: SPII", provider=self.name)


@pytest.mark.parametrize("live", [True, False])
async def test_a_reply_refused_after_its_control_line_is_not_passed_off_as_complete(live: bool) -> None:
    """Only a lost end (a cut, a stall) makes a reply with its control line complete, never a refusal (review
    helper-53: a reply Gemini blocked for personal data was shown, and cached for everyone)."""
    primary = RefusedAtTheEnd(name="primary", model="primary-model")
    secondary = FakeProvider(name="secondary", model="secondary-model", default=FakeReply(text="Two days."))
    chunks: list[StreamChunk] = []
    with contextlib.suppress(StreamCut):
        async for chunk in FallbackRouter([primary, secondary], FAST).stream(REQUEST, live=live):
            chunks.append(chunk)
    assert not (chunks and chunks[-1].done and chunks[-1].provider == "primary")


async def test_live_cut_that_nobody_can_continue_ends_in_stream_cut() -> None:
    primary = FakeProvider(name="primary", default=FakeReply(text="Delivery takes one to two days.", cut_after=1))
    router = FallbackRouter([primary, ExtractiveProvider(0.5)], FAST)
    shown: list[StreamChunk] = []

    async def consume() -> None:
        async for chunk in router.stream(REQUEST, live=True):
            shown.append(chunk)

    with pytest.raises(StreamCut):
        await consume()
    assert shown
    assert not any(chunk.done for chunk in shown)


async def test_cut_before_anything_was_shown_restarts_elsewhere() -> None:
    primary = FakeProvider(name="primary", default=FakeReply(text="Delivery takes one to two days.", cut_after=1))
    router = FallbackRouter([primary, ExtractiveProvider(0.5)], FAST)
    completion = await router.complete(REQUEST)
    assert completion.provider == "extractive"
    assert "Delivery takes" not in completion.text


@pytest.mark.parametrize("live", [True, False], ids=["live", "whole"])
async def test_a_provider_hanging_mid_reply_hands_over_at_its_stall_deadline(live: bool) -> None:
    """A model that sent its first words and then nothing more used to hold the shopper for the whole-reply
    deadline; silence of ``stall_s`` after the first token is now a failure like a cut stream."""
    primary, secondary = fakes("primary", "secondary")
    primary.default = FakeReply(text="Delivery takes one to two working days.", chunks=4, chunk_delay_s=30)
    secondary.default = FakeReply(text=" working days." if live else "answer from secondary", cite_first=False)
    router = FallbackRouter([primary, secondary], FAST)
    started = time.perf_counter()
    chunks = await collect(router, live)
    elapsed = time.perf_counter() - started
    assert chunks[-1].done
    assert chunks[-1].provider == "secondary"
    assert FAST.stall_s <= elapsed < FAST.stall_s + 0.6  # not the call's deadline (2 s)
    assert primary.cancelled == 1
    shown = "".join(c.text for c in chunks if c.provider == "primary")
    if live:  # the words already shown are continued, not repeated
        assert shown
        assert "Delivery takes one to two working days.".startswith(shown)
        assert secondary.requests[0].partial == shown
    else:  # nothing was shown: the next provider answers from scratch
        assert shown == ""
        assert secondary.requests[0].partial == ""
        assert text_of(chunks) == "answer from secondary"


def trickling(name: str) -> FakeProvider:
    """A model that never falls silent for the stall deadline and never finishes: 100 pieces, 0.1 s apart."""
    return FakeProvider(name=name, default=FakeReply(chunks=100, chunk_delay_s=0.1))


def knowledge_base() -> FakeProvider:
    """A last resort standing in for the extractive answerer: answers at once and cannot continue a reply."""
    return FakeProvider(name="last", can_continue=False, default=FakeReply(text="from the knowledge base"))


@pytest.mark.parametrize("live", [True, False], ids=["live", "whole"])
async def test_the_whole_chain_ends_by_the_calls_deadline(live: bool) -> None:
    """The deadline is the call's, not each provider's: two models trickling on used to cost it twice over (and
    four models four times), before the knowledge base answered. Now, past it, only the last resort is asked."""
    primary, secondary = trickling("primary"), trickling("secondary")
    last = knowledge_base()
    router = FallbackRouter([primary, secondary, last], FAST)
    started = time.perf_counter()
    chunks: list[StreamChunk] = []
    with pytest.raises(StreamCut) if live else contextlib.nullcontext():
        async for chunk in router.stream(REQUEST, live=live):
            chunks.append(chunk)
    elapsed = time.perf_counter() - started
    assert FAST.reply_s <= elapsed < FAST.reply_s + 0.6
    assert secondary.requests == []  # too late to start another model
    assert primary.cancelled == 1
    if live:  # words were shown and the last resort cannot continue them: cut, never passed off as complete
        assert not any(chunk.done for chunk in chunks)
        assert last.requests == []
    else:  # it answers although the call's deadline has passed: it has a deadline of its own
        assert text_of(chunks) == "from the knowledge base"
        assert chunks[-1].provider == "last"


async def test_no_model_is_started_with_less_than_half_the_calls_deadline_left() -> None:
    timings = replace(FAST, reply_s=3.0)  # a model needs 1.5 s of it left
    primary = FakeProvider(name="primary", default=FakeReply(chunks=30, chunk_delay_s=0.1, cut_after=20))
    secondary = fakes("secondary")[0]
    last = knowledge_base()
    started = time.perf_counter()
    completion = await FallbackRouter([primary, secondary, last], timings).complete(REQUEST)
    elapsed = time.perf_counter() - started
    assert completion.provider == "last"  # cut at ~2 s: 1 s left, a model would mostly be cut too
    assert secondary.requests == []
    assert elapsed < timings.reply_s


@pytest.mark.parametrize("live", [True, False], ids=["live", "whole"])
async def test_a_call_with_little_of_its_deadline_left_asks_only_the_last_resort(live: bool) -> None:
    """A request that spent most of its deadline waiting for an identical one's call: a model started with what
    is left would show words and be cut (live), or be waited for in vain, and its breaker would count a deadline
    it never had a chance to meet. The last resort answers at once; the model's breaker stays closed."""
    primary = FakeProvider(name="primary", default=FakeReply(text="from the model", chunk_delay_s=0.2))
    last = knowledge_base()
    router = FallbackRouter([primary, last], FAST)
    for _ in range(FAST.breaker_failures + 1):
        started = time.perf_counter()
        chunks = [chunk async for chunk in router.stream(REQUEST, live=live, budget_s=FAST.first_token_s + 0.1)]
        assert time.perf_counter() - started < 0.2
        assert text_of(chunks) == "from the knowledge base"
    assert primary.requests == []
    assert router.slots[0].breaker.state == "closed"
    assert (await router.complete(REQUEST)).provider == "primary"  # a whole deadline: the model answers


def test_the_last_resort_asked_as_the_deadline_fires_has_a_deadline_of_its_own_on_uvloop() -> None:
    """uvloop's timers may fire up to a millisecond before time.monotonic reaches their time: the call's deadline
    failed the model, yet the clock said it had not passed, and the last resort was given what was left of it
    (nothing): a last resort that awaits anything then failed, and the shopper got the apology (4 calls in 30)."""
    timings = RouterTimings(first_token_s=0.02, reply_s=0.1, stall_s=0.05)

    async def calls() -> list[str]:
        providers = []
        for _ in range(40):  # before the fix, 5 to 9 of 40 were apologies
            primary = FakeProvider(name="primary", default=FakeReply(chunks=100, chunk_delay_s=0.002))
            last = FakeProvider(
                name="last", can_continue=False, default=FakeReply(text="from the knowledge base", chunk_delay_s=0.001)
            )
            providers.append((await FallbackRouter([primary, last], timings).complete(REQUEST)).provider)
        return providers

    assert set(uvloop.run(calls())) == {"last"}


async def test_a_provider_that_finishes_in_time_is_not_cut_by_the_calls_deadline() -> None:
    """Only silence counts as a stall: a slow but steady model keeps its turn for as long as the call allows."""
    primary = FakeProvider(name="primary", default=FakeReply(text="steady " * 30, chunks=30, chunk_delay_s=0.05))
    completion = await FallbackRouter([primary, fakes("secondary")[0]], FAST).complete(REQUEST)
    assert completion.provider == "primary"
    assert parse_reply(completion.text, ()).text == ("steady " * 30).strip()


@pytest.mark.parametrize("raw", ["", "<<ACTION=answer; SOURCES=>>", "   \n", "\u2026\n<<ACTION=answer; SOURCES=>>"])
async def test_empty_reply_is_a_failure(raw: str) -> None:
    primary, secondary = fakes("primary", "secondary")
    primary.default = FakeReply(raw=raw)
    completion = await FallbackRouter([primary, secondary], FAST).complete(REQUEST)
    assert completion.provider == "secondary"


async def test_every_provider_down_gives_an_apology_and_handoff() -> None:
    primary, secondary = fakes("primary", "secondary")
    primary.default = secondary.default = FakeReply(error=Unavailable("down"))
    completion = await FallbackRouter([primary, secondary], FAST).complete(REQUEST)
    reply = parse_reply(completion.text, ())
    assert reply.action == "handoff"
    assert reply.text == APOLOGY_REPLY
    assert completion.provider == "none"


async def test_background_health_check_restores_a_recovered_provider_within_one_interval() -> None:
    primary, secondary = fakes("primary", "secondary")
    primary.default = FakeReply(error=Unavailable("down"))
    router = FallbackRouter([primary, secondary], FAST)
    for _ in range(FAST.breaker_failures):
        await collect(router)
    assert router.slots[0].breaker.state == "open"
    primary.default = FakeReply(text="recovered")
    checks = asyncio.create_task(router.run_health_checks())
    try:
        await asyncio.sleep(FAST.health_interval_s * 1.2)
        assert text_of(await collect(router)) == "recovered"  # the half-open probe
    finally:
        checks.cancel()


async def test_a_consumer_that_goes_away_cancels_the_provider_call() -> None:
    primary = FakeProvider(name="primary", default=FakeReply(text="a long answer " * 20, chunks=20, chunk_delay_s=0.05))
    router = FallbackRouter([primary], FAST)
    stream = router.stream(REQUEST)
    assert (await anext(stream)).text  # the shopper saw the first words ...
    await stream.aclose()  # ... and closed the page: the provider's stream is cancelled, not left running
    await asyncio.sleep(0.05)
    assert primary.cancelled == 1


async def test_a_consumer_that_goes_away_while_providers_race_stops_their_calls() -> None:
    """Before any token (the shopper closed the page while waiting): the attempt used to go on without anyone,
    to its end or its deadline."""
    primary = FakeProvider(name="primary", default=FakeReply(first_token_delay_s=0.15))
    router = FallbackRouter([primary], FAST)
    stream = router.stream(REQUEST)
    waiting = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await stream.aclose()
    await asyncio.sleep(0.05)
    assert primary.cancelled == 1


async def test_an_abandoned_probe_lets_the_next_request_probe() -> None:
    """A half-open breaker lets one probe through; a probe that ended with no verdict (its shopper left) used to
    keep the breaker half-open with its probe out forever: the provider was never asked again."""
    primary, secondary = fakes("primary", "secondary")
    primary.default = FakeReply(error=Unavailable("down"))
    router = FallbackRouter([primary, secondary], FAST)
    for _ in range(FAST.breaker_failures):
        await collect(router)
    primary.default = FakeReply(text="back again", first_token_delay_s=0.15)
    await router.check_health()
    states: list[str] = [router.slots[0].breaker.state]
    stream = router.stream(REQUEST)
    waiting = asyncio.create_task(anext(stream))  # the probe ...
    await asyncio.sleep(0.05)
    waiting.cancel()  # ... whose shopper leaves before its first token
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await stream.aclose()
    assert text_of(await collect(router)) == "back again"  # probed again, and closed
    states.append(router.slots[0].breaker.state)
    assert states == ["half_open", "closed"]


async def test_a_model_still_streaming_at_the_calls_deadline_is_not_charged_to_its_breaker() -> None:
    """Steady text but no end by the call's deadline (a long reply, or half a deadline left): the call gives up on
    it, but a working model is not skipped next time as if it were down."""
    timings = replace(FAST, reply_s=0.6)
    primary, last = trickling("primary"), knowledge_base()
    router = FallbackRouter([primary, last], timings)
    for _ in range(FAST.breaker_failures + 1):
        assert (await router.complete(REQUEST)).provider == "last"
    assert router.slots[0].breaker.state == "closed"
    assert len(primary.requests) == FAST.breaker_failures + 1


class SlowToStop(FakeProvider):
    """Streams one piece, then waits; once cancelled it takes a while to stop (a slow clean-up, like a drain)."""

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamChunk, None]:
        yield StreamChunk("Standard delivery ")
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.shield(asyncio.sleep(2.0))  # far from the 0.1 s deadline: a loaded machine cannot blur them


async def test_a_deadline_that_fires_while_an_attempt_stops_is_not_lost() -> None:
    """Attempt.cancel waits for the attempt's task to end; a cancellation of its caller meanwhile (a deadline) used
    to be swallowed with the attempt's own, so the caller went on as if nothing had happened."""
    slot = Slot(SlowToStop(name="slow"), CircuitBreaker(5, 30.0, 30.0))
    attempt = Attempt(
        slot, CompletionRequest("How long does delivery take?"), RouterTimings(), time.monotonic, time.monotonic() + 30
    )
    attempt.start()
    await asyncio.wait_for(asyncio.shield(attempt.first), 5)  # streaming: its first piece is in
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await attempt.cancel()
    assert time.monotonic() - started < 1.5  # the deadline, not the attempt's clean-up (2 s)
    assert attempt.task is not None
    await asyncio.wait([attempt.task], timeout=5)  # it still stops, in its own time
    assert attempt.task.cancelled()
