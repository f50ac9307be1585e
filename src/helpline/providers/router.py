"""The fallback router: itself a provider. It tries its providers in order and never leaves a shopper empty.

Per provider: a circuit breaker, a Retry-After cooldown, a first-token deadline and a stall deadline. Per call: one
deadline for the whole reply, across every provider it tries.
- A provider that fails before its first token (any error of the tree in ``base``) hands over to the next one.
- A stream that sends nothing for ``stall_s`` after its first token has stalled (a provider hanging mid-reply): it
  fails, and the next provider takes over as for a cut stream below.
- The call's deadline (``reply_s``) bounds the whole fallback chain, not each provider: when it passes, whatever
  still runs is cancelled and the chain's last provider (the extractive answerer in every configured chain, which
  answers at once) is asked, with a deadline of its own. No other provider is started with less than half the
  call's deadline left (``RouterTimings.model_start_s``): it would mostly be cut. One still streaming when the
  deadline comes is given up on without a breaker failure (:class:`CallDeadline`): it may be working normally.
- A caller that goes away (while providers race, or mid-stream) stops every attempt it started; a half-open
  breaker's probe that ends so, with no verdict, lets the next request probe.
- Hedging: when the newest attempt has sent no token within ``first_token_s``, the next provider starts too and
  whichever streams first wins; the loser is cancelled (its breaker counts the miss).
- A stream cut after some text: when the text is live (already shown), the next provider that can continue is
  given the text so far; if none can, the stream ends with :class:`StreamCut`. When nothing was shown yet, the
  next provider simply answers from scratch. A cut reply is never passed off as complete.
- When every provider has failed, the shopper gets a canned apology with ``action: handoff``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import structlog

from helpline.chat.reply import ends_with_control, has_words, strip_control
from helpline.observability.metrics import record_provider_call, set_breaker_state, set_provider_up
from helpline.providers.base import (
    BadResponse,
    Completion,
    CompletionRequest,
    Provider,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    StreamChunk,
    StreamCut,
    control_line,
)
from helpline.providers.breaker import CircuitBreaker


class CallDeadline(ProviderTimeout):
    """A reply still streaming when the call's deadline came: the call gives up on it, but it is no provider fault
    (not counted by its breaker: a model given half a deadline may be working normally)."""


APOLOGY_REPLY = (
    "I'm sorry, I can't answer right now. A member of our support team will follow up with you as soon as possible."
)
log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RouterTimings:
    first_token_s: float = 4.0
    reply_s: float = 30.0  # the whole call, across providers (the last resort then gets as long again)
    stall_s: float = 4.0  # silence after the first token that counts as a provider hanging mid-reply

    @property
    def model_start_s(self) -> float:
        """What must be left of the call's deadline to start a model: half of it, and never less than the
        first-token deadline. A model needs time to write a whole reply: one started later would mostly be cut (a
        paid call wasted, words shown for nothing, and a breaker failure it never had a chance to avoid)."""
        return max(self.first_token_s, self.reply_s / 2)

    health_interval_s: float = 10.0
    health_timeout_s: float = 2.0
    breaker_failures: int = 5
    breaker_window_s: float = 30.0


@dataclass
class Slot:
    """A provider and what the router knows about it."""

    provider: Provider
    breaker: CircuitBreaker
    cooldown_until: float = 0.0
    healthy: bool = True
    last_error: str = ""


@dataclass
class Attempt:
    """One provider's stream, pumped into a queue by a task so the router can race and cancel attempts."""

    slot: Slot
    request: CompletionRequest
    timings: RouterTimings
    clock: Callable[[], float]
    deadline: float  # on ``clock``: its whole reply is in by then, or it has failed
    probe: bool = False  # let through a half-open breaker: its outcome decides the breaker
    started: float = 0.0
    queue: asyncio.Queue[StreamChunk | ProviderError] = field(default_factory=asyncio.Queue)
    first: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    task: asyncio.Task[None] | None = None
    text: str = ""  # what its stream has written so far

    def start(self) -> Attempt:
        self.started = self.clock()
        self.task = asyncio.create_task(self._pump(), name=f"provider-{self.slot.provider.name}")
        return self

    @property
    def name(self) -> str:
        return self.slot.provider.name

    def missed_first_token(self, now: float) -> bool:
        return not self.first.done() and now - self.started >= self.timings.first_token_s

    async def _pump(self) -> None:
        error: ProviderError | None
        try:
            async with asyncio.timeout(max(0.0, self.deadline - self.clock())):
                error = await self._forward()
        except TimeoutError:
            if self.first.done():  # streaming steadily, but the call's time is up: no fault of its own
                error = CallDeadline("the call's deadline came before the reply's end", provider=self.name)
            else:
                error = ProviderTimeout("no first token by the call's deadline", provider=self.name)
        except ProviderError as raised:
            error = raised
        except Exception as raised:  # noqa: BLE001 - an adapter let a vendor error through: still a provider failure
            error = BadResponse(f"unexpected {type(raised).__name__}: {raised}", provider=self.name)
        lost_end = isinstance(error, StreamCut | ProviderTimeout)  # not a refusal (a safety block), not a bad body
        if lost_end and ends_with_control(self.text) and has_words(strip_control(self.text)):
            # The model had written its whole reply (its control line comes last); only the stream's end was lost
            # (a cut connection, a stall before the final chunk). Not a cut reply: a continuation would be written
            # after its control line, and shown and cached with it (found by a review, session 26).
            log.info("provider_stream_end_lost", provider=self.name, error=type(error).__name__)
            self.queue.put_nowait(StreamChunk(done=True))
            return
        if error is not None:
            self._fail(error)

    async def _forward(self) -> ProviderError | None:
        """Queue the provider's chunks; the error that ended the stream early, if any."""
        loop = asyncio.get_running_loop()
        # aclosing: an attempt cancelled between two chunks closes its stream here, on the loop, instead of leaving
        # it (and the vendor's generators inside it) to a garbage collector in another thread (transport.ended).
        async with contextlib.aclosing(self.slot.provider.stream(self.request)) as stream:
            try:
                async with asyncio.timeout(None) as stall:  # armed from the first token on, again at every chunk
                    async for chunk in stream:
                        self.text += chunk.text
                        if chunk.done and not has_words(strip_control(self.text)):  # nothing, or only "…"
                            return BadResponse("empty reply", provider=self.name)
                        await self.queue.put(chunk)
                        if (chunk.text or chunk.done) and not self.first.done():
                            self.first.set_result(None)
                        if chunk.done:
                            return None
                        if self.first.done():
                            stall.reschedule(loop.time() + self.timings.stall_s)
            except TimeoutError:
                if not stall.expired():
                    raise  # the call's deadline, not a stall: _pump reports it
                return ProviderTimeout(f"stalled: nothing for {self.timings.stall_s} s mid-reply", provider=self.name)
        return StreamCut("the stream ended before its final chunk", provider=self.name)

    def _fail(self, error: ProviderError) -> None:
        if not self.first.done():
            self.first.set_exception(error)
        else:
            self.queue.put_nowait(error)

    async def chunks(self) -> AsyncIterator[StreamChunk]:
        while True:
            item = await self.queue.get()
            if isinstance(item, ProviderError):
                raise item
            yield item
            if item.done:
                return

    def abandon(self) -> None:
        """Stop it without waiting for its end: its caller is itself going away (cancelled while racing)."""
        if self.task is not None:
            self.task.cancel()
        self._settled()

    async def cancel(self) -> None:
        try:
            if self.task is not None and not self.task.done():
                self.task.cancel()
                try:
                    await self.task
                except asyncio.CancelledError:
                    # The attempt's own end is expected. A cancellation of the caller while it waited for that end
                    # (its deadline, a shopper gone) is not, and goes on: swallowed, a deadline was simply lost.
                    caller = asyncio.current_task()
                    if caller is not None and caller.cancelling():
                        raise
        finally:
            self._settled()

    def _settled(self) -> None:
        if self.first.done() and not self.first.cancelled():
            self.first.exception()  # mark retrieved: a lost race is not an unhandled error
        elif not self.first.done():
            self.first.cancel()
        if self.probe:  # ended with no verdict (its caller left, or the call's time was up): probe again
            self.slot.breaker.release_probe()


class FallbackRouter:
    name = "router"
    model = "router"
    can_continue = True

    def __init__(
        self,
        providers: Sequence[Provider],
        timings: RouterTimings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not providers:
            raise ValueError("the router needs at least one provider")
        self.timings = timings or RouterTimings()
        self._clock = clock
        self.slots = [
            Slot(
                p,
                CircuitBreaker(
                    self.timings.breaker_failures, self.timings.breaker_window_s, self.timings.health_interval_s, clock
                ),
            )
            for p in providers
        ]

    def reset_state(self) -> None:
        """Forget breaker history and cooldowns (operators after an incident; benchmarks between scenarios)."""
        for slot in self.slots:
            slot.breaker.record_success()
            slot.cooldown_until = 0.0

    @property
    def providers(self) -> list[Provider]:
        return [slot.provider for slot in self.slots]

    # -- the Provider protocol -------------------------------------------------------------------------------

    async def complete(self, request: CompletionRequest, *, budget_s: float | None = None) -> Completion:
        """The whole reply; nothing is shown before the end, so a cut attempt is simply retried elsewhere."""
        text, provider, model, tokens_in, tokens_out = "", "none", "none", 0, 0
        async for chunk in self.stream(request, live=False, budget_s=budget_s):
            text += chunk.text
            provider, model = chunk.provider, chunk.model
            tokens_in, tokens_out = chunk.tokens_in or tokens_in, chunk.tokens_out or tokens_out
        return Completion(text, provider, model, tokens_in, tokens_out)

    async def stream(
        self, request: CompletionRequest, *, live: bool = True, budget_s: float | None = None
    ) -> AsyncGenerator[StreamChunk, None]:
        """Chunks labelled with the provider that wrote them; ends with a ``done`` chunk or raises StreamCut.

        ``budget_s``: what is left of the caller's deadline (a request that already waited for a peer's call),
        instead of a whole ``reply_s``; with less than ``timings.model_start_s`` left, only the last resort
        answers."""
        order = iter(self.slots)
        deadline = self._clock() + (self.timings.reply_s if budget_s is None else min(budget_s, self.timings.reply_s))
        shown = ""
        while True:
            attempt = await self._race(order, replace(request, partial=shown) if shown else request, deadline)
            if attempt is None:
                break
            try:
                async for chunk in self._deliver(attempt, live):
                    shown += chunk.text if live else ""
                    yield chunk
            except ProviderError as error:
                self._record_failure(attempt.slot, error)
                if live and shown.strip():
                    order = iter([slot for slot in order if slot.provider.can_continue])
            else:
                return
            finally:
                await attempt.cancel()
        if live and shown.strip():
            raise StreamCut("the reply was cut and no provider could continue it")
        text = f"{APOLOGY_REPLY}\n{control_line('handoff')}"
        yield StreamChunk(text, provider="none", model="none")
        yield StreamChunk(done=True, tokens_in=0, tokens_out=0, provider="none", model="none")

    async def _deliver(self, attempt: Attempt, live: bool) -> AsyncIterator[StreamChunk]:
        """The winning attempt's chunks: forwarded as they come (live) or only once complete."""
        buffered: list[StreamChunk] = []
        provider, model = attempt.slot.provider.name, attempt.slot.provider.model
        async for chunk in attempt.chunks():
            labelled = replace(chunk, provider=provider, model=model)
            if live:
                yield labelled
            else:
                buffered.append(labelled)
        attempt.slot.breaker.record_success()
        record_provider_call(provider)
        set_breaker_state(provider, attempt.slot.breaker.state)
        for chunk in buffered:
            yield chunk

    async def health(self) -> bool:
        return any(slot.healthy for slot in self.slots)

    def count_tokens(self, text: str) -> int:
        return self.slots[0].provider.count_tokens(text)

    # -- choosing and racing providers -----------------------------------------------------------------------

    def _next_attempt(self, order: Iterator[Slot], request: CompletionRequest, deadline: float) -> Attempt | None:
        """The next provider of ``order`` that may be tried now. With less than ``model_start_s`` of the call's
        deadline left, only the last resort is; then it gets a deadline of its own (the call's may have passed:
        the event loop's timers, uvloop's in particular, may fire a little before ``clock`` reaches it)."""
        now = self._clock()
        last_resort = self.slots[-1]
        late = deadline - now < self.timings.model_start_s
        for slot in order:
            if slot is not last_resort and late:
                log.info("provider_skipped", provider=slot.provider.name, reason="call_deadline")
                continue
            if slot.cooldown_until > now:
                log.info("provider_skipped", provider=slot.provider.name, reason="rate_limit_cooldown")
                continue
            if not slot.breaker.allow():
                log.info("provider_skipped", provider=slot.provider.name, reason="breaker_open")
                continue
            own = now + self.timings.reply_s if late else deadline
            probe = slot.breaker.state == "half_open"
            return Attempt(slot, request, self.timings, self._clock, own, probe).start()
        return None

    async def _race(self, order: Iterator[Slot], request: CompletionRequest, deadline: float) -> Attempt | None:
        """Start providers in order until one streams; while every running attempt is past its first-token
        deadline, start the next provider too (hedging). Returns the first attempt to stream, or None."""
        pending: list[Attempt] = []
        try:
            return await self._racing(order, request, deadline, pending)
        except BaseException:
            for attempt in pending:  # the caller went away while racing: none of them goes on without it
                attempt.abandon()
            raise

    async def _racing(
        self, order: Iterator[Slot], request: CompletionRequest, deadline: float, pending: list[Attempt]
    ) -> Attempt | None:
        exhausted = False
        while True:
            now = self._clock()
            fresh = [a for a in pending if not a.missed_first_token(now)]
            if not fresh and not exhausted:
                attempt = self._next_attempt(order, request, deadline)
                exhausted = attempt is None
                if attempt is not None:
                    if pending:
                        log.info("provider_hedged", slow=[a.name for a in pending], hedge=attempt.name)
                    pending.append(attempt)
                    fresh.append(attempt)
            if not pending:
                return None
            timeout = None if exhausted else max(0.0, min(a.started for a in fresh) + self.timings.first_token_s - now)
            done, _ = await asyncio.wait(
                [a.first for a in pending], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            winner = self._settle(pending, done)
            if winner is not None:
                await self._cancel_losers(pending, winner)
                return winner

    def _settle(self, pending: list[Attempt], done: set[asyncio.Future[None]]) -> Attempt | None:
        """Drop attempts that failed before their first token; return the first one that streams."""
        for attempt in list(pending):
            if attempt.first not in done:
                continue
            error = attempt.first.exception()
            if error is None:
                return attempt
            pending.remove(attempt)
            self._record_failure(attempt.slot, error)
        return None

    async def _cancel_losers(self, pending: list[Attempt], winner: Attempt) -> None:
        now = self._clock()
        for attempt in pending:
            if attempt is winner:
                continue
            if attempt.missed_first_token(now):
                self._record_failure(attempt.slot, ProviderTimeout("lost the race after its first-token deadline"))
            await attempt.cancel()

    def _record_failure(self, slot: Slot, error: BaseException) -> None:
        if not isinstance(error, CallDeadline):  # a slow but working model: not a reason to skip it next time
            slot.breaker.record_failure()
        record_provider_call(slot.provider.name, error)
        set_breaker_state(slot.provider.name, slot.breaker.state)
        slot.last_error = f"{type(error).__name__}: {error}"
        if isinstance(error, RateLimited) and error.retry_after_s:
            slot.cooldown_until = self._clock() + error.retry_after_s
        log.warning("provider_failed", provider=slot.provider.name, error=type(error).__name__, detail=str(error))

    # -- background health checks ----------------------------------------------------------------------------

    async def check_health(self) -> None:
        """One round of cheap health checks; a healthy provider with an open breaker may be probed again."""
        for slot in self.slots:
            try:
                healthy = await asyncio.wait_for(slot.provider.health(), self.timings.health_timeout_s)
            except Exception:  # noqa: BLE001 - any failure of a health check means unhealthy
                healthy = False
            slot.healthy = healthy
            if healthy:
                slot.breaker.health_ok()
            set_provider_up(slot.provider.name, healthy)
            set_breaker_state(slot.provider.name, slot.breaker.state)

    async def run_health_checks(self) -> None:
        """Forever, one round per interval (the first after one interval: providers start presumed healthy)."""
        while True:
            await asyncio.sleep(self.timings.health_interval_s)
            await self.check_health()
