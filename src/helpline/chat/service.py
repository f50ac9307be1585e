"""ChatService: input checks, session ownership, retrieval, the provider router, reply checks, the record.

Routes stay thin; the logic is here. ``chat`` answers in one piece; ``chat_stream`` yields the contract's SSE
events (meta, delta…, then done or error). Both go through the same preparation and the same record.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson
import structlog

from helpline.cache.keys import CacheScope, context_digest
from helpline.cache.policy import (
    cacheable,
    echoes,
    is_personal,
    names_the_asker,
    owner_scope,
    unknown_details,
    word_forms,
)
from helpline.cache.relay import RelayCodec
from helpline.cache.service import AnswerCache, CachedAnswer, CacheHit, Flight, Relay
from helpline.chat.prompts import STORE_NAME, SYSTEM_RULES, estimate_tokens, prompt_fingerprint
from helpline.chat.reply import BLOCKED_REPLY, ControlLineFilter, ParsedReply, PromptLeakGuard, parse_reply
from helpline.config import Settings
from helpline.errors import InvalidInput, NotFound
from helpline.knowledge.base import KnowledgeBase, Passage
from helpline.knowledge.embeddings import Vectors
from helpline.observability.context import annotate
from helpline.privacy import redact
from helpline.providers.base import Citation, CompletionRequest, StreamChunk, StreamCut, Turn
from helpline.providers.router import FallbackRouter
from helpline.store.repositories import (
    ANONYMOUS,
    ConversationRecord,
    ConversationRepository,
    Principal,
    as_message,
)

log = structlog.get_logger(__name__)
EventKind = Literal["meta", "delta", "done", "error"]


@dataclass(slots=True)
class ChatResult:
    reply: str
    session_id: str
    message_id: str
    provider: str
    model: str
    cache: str
    action: str
    citations: list[dict[str, str]]
    latency_ms: int
    request_id: str
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0

    def body(self) -> dict[str, Any]:
        """The contract's 200 body."""
        return {
            "reply": self.reply,
            "session_id": self.session_id,
            "message_id": self.message_id,
            "provider": self.provider,
            "model": self.model,
            "cache": self.cache,
            "action": self.action,
            "citations": self.citations,
            "latency_ms": self.latency_ms,
            "request_id": self.request_id,
        }


@dataclass(frozen=True, slots=True)
class ChatEvent:
    kind: EventKind
    data: dict[str, Any]


@dataclass(slots=True)
class Prepared:
    """A validated question, in an owned session, with its context retrieved."""

    message: str
    session_id: str
    principal: Principal
    request_id: str
    locale: str | None
    history: tuple[Turn, ...]
    vector: Vectors | None  # None when the exact tier answered before any embedding was needed
    scope: CacheScope
    hit: CacheHit | None = None
    passages: tuple[Passage, ...] = ()
    started: float = field(default_factory=time.perf_counter)
    original: str = ""  # the shopper's words as typed, kept only in the conversation record
    # The cache's invalidation generation when retrieval read the knowledge: the answer is cached only if no
    # whole-tag invalidation came in between (None: not read, or the store could not say; then it is not cached).
    # A document change is checked by version instead (see versions_of).
    generation: int | None = None
    # This process's knowledge epoch when retrieval read it: an answer finished under another epoch is not cached
    # (a document added meanwhile reaches no version check; see KnowledgeBase.epoch).
    knowledge_epoch: int = -1
    # The knowledge revision of that copy: the store refuses the answer if a replica invalidated from a newer one.
    knowledge_revision: int | None = None
    # Set when this request makes the call for identical ones: its text is published here as it streams.
    relay: Flight | None = None
    answered: bool = False  # a streamed request following another's flight has finished its own reply
    relays_seen: set[str] = field(default_factory=set)  # other replicas' calls it followed (cache.relay)
    hurried: bool = False  # its provider call had too little of its deadline left for a model (see _call_budget)

    @property
    def recorded(self) -> str:
        return self.original or self.message

    @property
    def elapsed_ms(self) -> int:
        return round((time.perf_counter() - self.started) * 1000)

    def record(self, reply: str, provider: str, model: str, **fields: Any) -> ConversationRecord:
        """This exchange for the store: who asked what, when and how fast, plus the outcome's ``fields``."""
        return ConversationRecord(
            session_id=self.session_id, user_query=self.recorded, ai_response=reply, model_used=model,
            provider=provider, response_time_ms=self.elapsed_ms, request_id=self.request_id,
            user_key_id=self.principal.key_id, locale=self.locale, **fields,
        )  # fmt: skip

    @property
    def request(self) -> CompletionRequest:
        return CompletionRequest(self.message, self.passages, self.history, self.locale)


@dataclass(slots=True)
class Usage:
    provider: str = "none"
    model: str = "none"
    tokens_in: int = 0
    tokens_out: int = 0
    continued: bool = False  # written by two models: one was cut mid-reply and the next continued it

    def add(self, chunk: StreamChunk) -> None:
        if chunk.provider:
            writer = (chunk.provider, chunk.model)
            self.continued = self.continued or (self.provider != "none" and (self.provider, self.model) != writer)
            self.provider, self.model = chunk.provider, chunk.model
        self.tokens_in = chunk.tokens_in if chunk.tokens_in is not None else self.tokens_in
        self.tokens_out = chunk.tokens_out if chunk.tokens_out is not None else self.tokens_out


@dataclass(frozen=True, slots=True)
class SharedReply:
    """A reply not worth caching (a handoff, a fallback's), handed to identical requests that waited for it."""

    reply: ParsedReply
    usage: Usage
    # Refused by the cache as drawn from a document that changed meanwhile: requests that waited for it (asked
    # since the change) get a fresh answer instead; one already shown as it streamed is finished as it is.
    stale: bool = False

    @staticmethod
    def usable(landed: object) -> bool:
        return landed is not None and not (isinstance(landed, SharedReply) and landed.stale)


def _relay_encode(landed: object, shown: bool) -> bytes | None:
    """A flight's outcome for identical requests on other replicas (cache.relay); None: nothing they could use (a
    stale reply is used only to finish a stream already shown)."""
    if isinstance(landed, CacheHit):
        return orjson.dumps({"v": RELAY_FORMAT, "hit": asdict(landed.answer)})
    if isinstance(landed, SharedReply) and (shown or not landed.stale):
        usage = {"provider": landed.usage.provider, "model": landed.usage.model}
        return orjson.dumps({"v": RELAY_FORMAT, "reply": asdict(landed.reply), "usage": usage, "stale": landed.stale})
    return None


def _relay_decode(payload: bytes) -> CacheHit | SharedReply | None:
    try:
        data = orjson.loads(payload)
        if data.get("v") != RELAY_FORMAT:  # another release's, during a rolling upgrade
            return None
        if "hit" in data:
            answer = CachedAnswer(**data["hit"])
            return CacheHit(answer, "exact", 1.0, answer.question)
        reply = data["reply"]
        citations = tuple(Citation(**citation) for citation in reply.pop("citations"))
        return SharedReply(ParsedReply(**reply, citations=citations), Usage(**data["usage"]), stale=data["stale"])
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        log.warning("cache_relay_unreadable", error=type(error).__name__)
        return None


RELAY_FORMAT = 1


def _text_of(landed: CacheHit | SharedReply) -> str:
    """The reply's text, as the shopper reads it."""
    return landed.answer.reply if isinstance(landed, CacheHit) else landed.reply.text


RELAY_CODEC = RelayCodec(_relay_encode, _relay_decode, stored=lambda landed: isinstance(landed, CacheHit))


def _reply_error(reply: ParsedReply) -> str | None:
    if reply.blocked:
        return "blocked: the model's reply quoted the system prompt"
    return None if reply.grounded else "ungrounded: the reply cited no passage it was given"


def drawn_on(passages: tuple[Passage, ...]) -> list[str]:
    """The tags a cached answer carries: the ids of the documents it was given, and their ingest tags."""
    return sorted({p.id for p in passages} | {tag for p in passages for tag in p.tags})


def versions_of(passages: tuple[Passage, ...]) -> dict[str, str]:
    """Which version of each document an answer drew on (its content hash)."""
    return {p.id: p.version for p in passages if p.version}


def clean_message(raw: str, max_chars: int) -> str:
    """The message as we will answer it: trimmed, non-empty, within the length limit."""
    message = raw.strip()
    if not message:
        raise InvalidInput("message must not be empty", code="message_empty")
    if len(message) > max_chars:
        raise InvalidInput(f"message is longer than {max_chars} characters", code="message_too_long")
    return message


REPLAY_CHUNK_CHARS = 48  # a cached answer is replayed as a stream in pieces of about this size
# How long past its own deadline a request still waits for the call it joined: that call's bookkeeping (the record,
# the cache write) comes after its own deadline's work.
LAND_GRACE_S = 1.0
# What a request that waited for another replica keeps beyond a model's start (RouterTimings.model_start_s) for the
# work before the router starts one (retrieval, the prompt).
START_MARGIN_S = 0.25
# How long a miss waits for this process's copy of the knowledge to catch up with a change another replica made
# (a read of the database: tens of milliseconds), before it answers from the copy it has (see _retrieve).
CATCH_UP_S = 1.0


def _passages_text(prepared: Prepared) -> str:
    """The titles and texts of the passages a reply drew on, as the model was given them."""
    return "\n".join(f"{passage.title}\n{passage.text}" for passage in prepared.passages)


class ChatService:
    def __init__(
        self,
        settings: Settings,
        conversations: ConversationRepository,
        knowledge: KnowledgeBase,
        router: FallbackRouter,
        cache: AnswerCache | None = None,
    ) -> None:
        self._settings = settings
        self._conversations = conversations
        self._knowledge = knowledge
        self._router = router
        self._cache = cache
        self._leak_guard = PromptLeakGuard(SYSTEM_RULES)
        self._own_forms = frozenset(word_forms([SYSTEM_RULES.format(store=STORE_NAME)]))
        self._prompt_version = prompt_fingerprint(settings.retrieval_top_k, settings.answer_min_score)
        self._producers: set[asyncio.Task[None]] = set()
        # Brings this process's copy of the knowledge up to a revision another replica declared, within a wait;
        # whether it did (the Invalidator's catch_up, set where both are built: it is made with this service).
        self.catch_up: Callable[[int, float], Awaitable[bool]] | None = None

    async def prepare(
        self,
        raw_message: str,
        *,
        principal: Principal,
        request_id: str,
        session_id: str | None = None,
        locale: str | None = None,
        history: tuple[Turn, ...] = (),
        end_user: str | None = None,
        key_is_shopper: bool = True,
    ) -> Prepared:
        """Everything that can refuse the request, before any event is sent; then the cache lookup.

        ``history``: earlier turns supplied by the caller (the OpenAI-compatible API is stateless); a stored
        session's own turns take their place when ``session_id`` is given. ``end_user``: the shopper an API key
        serving many names (the OpenAI-compatible ``user`` field): their personal answers are theirs alone.
        ``key_is_shopper``: False where a key may serve many shoppers (the OpenAI-compatible route): without an
        ``end_user``, a personal answer is then this request's conversation's alone (see owner_scope)."""
        message = clean_message(raw_message, self._settings.max_message_chars)
        if session_id is not None:
            await self.check_owner(session_id, principal)
            history = await self._history(session_id)
        else:  # the caller's own turns (OpenAI-compatible API): masked like the message before anything sees them
            history = tuple(Turn(redact(turn.message).text, redact(turn.reply).text) for turn in history)
            session_id = await self._conversations.create_session(principal, locale)
        scope = self.scope(
            message, locale, history, principal, session_id, end_user=end_user, key_is_shopper=key_is_shopper
        )
        # Providers, the cache and the embedder see the message with personal data masked; the record keeps it.
        safe = redact(message).text
        prepared = Prepared(safe, session_id, principal, request_id, locale, history, None, scope, original=message)
        # Looked up (and embedded) as it is stored: masked. Masking is the same for the same text, and the provider
        # never sees what was masked, so two questions that mask alike would get the same answer anyway; a personal
        # one is scoped to its owner above (decided on the words as typed).
        if self._cache is not None:
            prepared.hit = await self._cache.lookup_exact(safe, scope)
        if prepared.hit is None:
            (prepared.vector,) = await self._knowledge.embedder.aembed([safe])
            if self._cache is not None:
                prepared.hit = await self._cache.lookup_semantic(safe, prepared.vector, scope)
        return prepared

    def scope(
        self,
        message: str,
        locale: str | None,
        history: tuple[Turn, ...],
        principal: Principal,
        session_id: str,
        *,
        end_user: str | None = None,
        key_is_shopper: bool = True,
    ) -> CacheScope:
        """Everything that changes the answer: store, locale, prompt, knowledge, conversation, owner."""
        return CacheScope(
            tenant=self._settings.tenant,
            locale=(locale or "").lower(),
            prompt_version=self._prompt_version,
            variant=self._settings.prompt_variant,
            kb_version=self._knowledge.embedder.model_id,
            context=context_digest(history),
            owner=owner_scope(
                is_personal(message), principal.key_id, session_id, end_user, key_is_shopper=key_is_shopper
            ),
        )

    async def chat(self, raw_message: str, **context: Any) -> ChatResult:
        return await self.answer(await self.prepare(raw_message, **context))

    async def answer(self, prepared: Prepared) -> ChatResult:
        """The whole reply for a prepared question: from the cache, a peer's identical request, or the router."""
        if prepared.hit is not None:
            return await self._serve_hit(prepared, prepared.hit)
        async with self._one_call(prepared) as landed:
            if isinstance(landed, CacheHit | SharedReply):
                return await self._serve_landed(prepared, landed)
            return await self._answer(prepared)

    @contextlib.asynccontextmanager
    async def _one_call(
        self, prepared: Prepared, *, streamed: bool = False
    ) -> AsyncIterator[CacheHit | SharedReply | Flight | None]:
        """Concurrent identical misses make one provider call. Yields what an identical request's call produced
        (in this process, or cached by another replica); to a ``streamed`` request, the flight of an identical
        request that has not finished yet (to follow as it streams; made in this process, or in another replica and
        relayed, see :meth:`_lead`); or None when this request is
        to make the call (its reply lands for the others in :meth:`_finish`, cacheable or not: a handoff is
        shared, never cached; its text is published to ``prepared.relay`` as it streams).

        A call that ends with nothing to share (cut, cancelled, or refused as stale) sends its waiters round
        again: one of them makes the next call, the rest wait for that one, rather than all calling at once."""
        if self._cache is None:
            yield None
            return
        key = self._cache.entry_key(prepared.message, prepared.scope)
        rounds = 0
        while True:
            rounds += 1
            async with self._cache.single_flight(key) as (flight, leading):
                if leading:
                    async with self._lead(self._cache, prepared, flight, streamed=streamed) as landed:
                        yield landed
                    return
            if streamed and flight.epoch == self._cache.invalidations:
                yield flight  # (one begun before an invalidation here is awaited instead: it may be refused as stale)
                return
            # Shielded: awaiting a future directly would cancel it, for every waiter, when one is cancelled.
            flight.waiting += 1  # a streamed call goes on for this request if its own shopper leaves
            outwaited = False
            try:
                landed = await asyncio.wait_for(asyncio.shield(flight.future), self._budget(prepared) + LAND_GRACE_S)
            except TimeoutError:
                # Its deadline came while it waited (rounds of calls that ended with nothing to share, each led by
                # a younger request): its own call, with nothing of the deadline left, is the last resort's answer.
                log.warning("single_flight_outwaited", rounds=rounds)
                landed, outwaited = None, True
            finally:
                flight.waiting -= 1
            if outwaited:
                yield None
                return
            # A second stale reply in a row is handed over as it is (a miss, never cached): this replica's copy of
            # the knowledge is behind, and every further round would be refused alike, one provider call each.
            if SharedReply.usable(landed) or (landed is not None and rounds > 1):
                yield landed
                return

    @contextlib.asynccontextmanager
    async def _lead(
        self, cache: AnswerCache, prepared: Prepared, flight: Flight, *, streamed: bool
    ) -> AsyncIterator[CacheHit | Flight | None]:
        """The call this process makes for an identical miss (yields None), unless another replica makes it: then
        its cached answer, or, to a ``streamed`` request, ``flight`` fed with its text as it streams (cache.relay),
        which this request and its identical ones here follow as they would a call made here."""
        # No request waits for another replica so long that no model could answer it after (requests joining this
        # flight meanwhile get what it gets); a streamed one waits for the other's relay to begin (its header goes
        # once somebody reads it) no longer than the router would wait for a first token: its shopper is reading.
        wait_s = max(0.0, self._budget(prepared) - self._router.timings.model_start_s - START_MARGIN_S)
        if streamed:
            wait_s = min(wait_s, self._settings.first_token_timeout_s)
        relay = Relay(
            flight, RELAY_CODEC, follow=streamed, deadline=time.monotonic() + self._budget(prepared) + LAND_GRACE_S,
            seen=prepared.relays_seen,
        )  # fmt: skip
        async with cache.peer_lock(prepared.message, prepared.scope, wait_s=wait_s, relay=relay) as peer:
            if isinstance(peer, CacheHit):
                flight.land(peer)
            prepared.relay = flight  # (followed from another replica, it goes on if identical requests here follow)
            try:
                yield peer
            finally:
                # Over, with its result or without (cut, failed, stopped): before the lock is let go (a Redis round
                # trip), so no request arriving meanwhile joins a call that has ended.
                flight.land(None)

    async def _answer(self, prepared: Prepared) -> ChatResult:
        await self._retrieve(prepared)
        completion = await self._router.complete(prepared.request, budget_s=self._call_budget(prepared))
        usage = Usage(completion.provider, completion.model, completion.tokens_in, completion.tokens_out)
        return await self._finish(prepared, self._checked(parse_reply(completion.text, prepared.passages)), usage)

    def _budget(self, prepared: Prepared) -> float:
        """What is left of the request's deadline for its provider call: ``provider_timeout_s`` from its arrival,
        whatever it spent waiting for an identical request's call (here or on a replica) that left it nothing."""
        return self._settings.provider_timeout_s - (time.perf_counter() - prepared.started)

    def _call_budget(self, prepared: Prepared) -> float:
        """The budget of this request's own provider call. One with too little left for a model is *hurried*: the
        last resort's answer stands in for models nobody asked, and is not cached even where fallbacks may be."""
        budget = self._budget(prepared)
        prepared.hurried = budget < self._router.timings.model_start_s
        return budget

    def _checked(self, reply: ParsedReply) -> ParsedReply:
        """A reply that quotes our rules (an injection that worked) never reaches the shopper or the cache."""
        if not self._leak_guard.leaks(reply.text):
            return reply
        log.warning("reply_blocked", reason="quoted the system prompt")
        return ParsedReply(BLOCKED_REPLY, "handoff", (), True, False, blocked=True)

    def retrieves(self, question: str, vector: Vectors) -> set[str]:
        """The documents a question (as the cache holds it: masked, with its vector) is given now."""
        return {p.id for p in self._knowledge.search_vector(vector, self._settings.retrieval_top_k, question)}

    async def _retrieve(self, prepared: Prepared) -> None:
        if self._cache is not None:  # before the knowledge is read: see Prepared.generation
            marks = await self._cache.marks()
            # Another replica declared a newer knowledge than this copy (it changed a document): read it first.
            declared = -1 if marks is None else marks[2]
            if declared > self._knowledge.revision and self.catch_up and await self.catch_up(declared, CATCH_UP_S):
                marks = await self._cache.marks()  # (the read's own invalidation may have moved them)
            prepared.generation = None if marks is None else marks[0]
            if prepared.relay is not None and marks is not None:  # (another replica follows its call only if no
                # invalidation came since, and its copy of the knowledge is not older than one an invalidation named)
                prepared.relay.origin = (marks[0], marks[1], self._knowledge.revision)
        prepared.knowledge_epoch = self._knowledge.epoch
        prepared.knowledge_revision = self._knowledge.revision
        if prepared.vector is None:
            (prepared.vector,) = await self._knowledge.embedder.aembed([prepared.message])
        passages = self._knowledge.search_vector(prepared.vector, self._settings.retrieval_top_k, prepared.message)
        prepared.passages = tuple(passages)

    async def chat_stream(self, prepared: Prepared) -> AsyncGenerator[ChatEvent, None]:
        """SSE events for a prepared question. A cut reply ends with ``error``, never ``done``.

        A miss is answered in a task of its own, which this reads: when the shopper goes away, a call that
        identical streamed requests are following goes on for them (and is recorded and cached as usual); a call
        nobody else follows is stopped, as the shopper's own."""
        yield ChatEvent("meta", {"session_id": prepared.session_id, "request_id": prepared.request_id})
        if prepared.hit is not None:
            async for event in self._replay(prepared, prepared.hit):
                yield event
            return
        events: asyncio.Queue[ChatEvent | None] = asyncio.Queue()
        producer = asyncio.create_task(self._produce(prepared, events), name="chat-stream")
        self._producers.add(producer)
        producer.add_done_callback(self._producers.discard)
        try:
            while (queued := await events.get()) is not None:
                yield queued
            await producer  # its error, if it failed
        finally:
            if not producer.done() and (prepared.relay is None or not prepared.relay.wanted):
                if prepared.relay is not None:
                    prepared.relay.land(None)  # stopped: a request arriving while it stops makes its own call
                producer.cancel()

    async def _produce(self, prepared: Prepared, events: asyncio.Queue[ChatEvent | None]) -> None:
        try:
            async with contextlib.aclosing(self._miss_events(prepared)) as produced:
                async for event in produced:
                    events.put_nowait(event)
        finally:
            events.put_nowait(None)

    async def aclose(self) -> None:
        """Stop the streamed answers still running (shutdown; before the conversation writer drains)."""
        for producer in list(self._producers):
            producer.cancel()
        await asyncio.gather(*self._producers, return_exceptions=True)

    async def _miss_events(self, prepared: Prepared) -> AsyncGenerator[ChatEvent, None]:
        followed = True
        while followed:  # a flight that ended before any text, with nothing to share: go round again
            followed = False
            async with self._one_call(prepared, streamed=True) as landed:
                if isinstance(landed, Flight):
                    events = self._follow(prepared, landed)
                elif landed is not None:
                    events = self._replay(prepared, landed)
                else:
                    events = self._stream_miss(prepared)
                async with contextlib.aclosing(events):
                    async for event in events:
                        yield event
                    followed = isinstance(landed, Flight) and not prepared.answered

    async def _replay(self, prepared: Prepared, landed: CacheHit | SharedReply) -> AsyncGenerator[ChatEvent, None]:
        """An answer already made (cached, or an identical request's) as a stream: its text in pieces, then done."""
        text = _text_of(landed)
        for start in range(0, len(text), REPLAY_CHUNK_CHARS):
            yield ChatEvent("delta", {"text": text[start : start + REPLAY_CHUNK_CHARS]})
        yield ChatEvent("done", (await self._serve_landed(prepared, landed)).body())

    async def _serve_landed(self, prepared: Prepared, landed: CacheHit | SharedReply) -> ChatResult:
        if isinstance(landed, CacheHit):
            return await self._serve_hit(prepared, landed)
        return await self._finish(prepared, landed.reply, landed.usage, shared=True)

    async def _follow(self, prepared: Prepared, flight: Flight) -> AsyncGenerator[ChatEvent, None]:
        """An identical request's reply as it streams, then its outcome: done with its reply, or the same error
        when it was cut after some text. If it ended before any text and with nothing to share, this yields
        nothing more and leaves ``prepared.answered`` unset (the caller goes round again)."""
        shown = ""
        async with contextlib.aclosing(flight.follow()) as texts:  # closed at once if this one is: not a follower
            async for text in texts:
                shown += text
                yield ChatEvent("delta", {"text": text})
        landed = await asyncio.shield(flight.future)
        if landed is not None and shown:
            prepared.answered = True
            whole, said = _text_of(landed), shown.lstrip()
            if whole.startswith(said) and whole[len(said) :].strip():  # its last words were not relayed (cache.relay)
                yield ChatEvent("delta", {"text": whole[len(said) :]})
            yield ChatEvent("done", (await self._serve_landed(prepared, landed)).body())
        elif SharedReply.usable(landed):  # it did not stream (a plain request): replay its text
            prepared.answered = True
            async with contextlib.aclosing(self._replay(prepared, landed)) as events:
                async for event in events:
                    yield event
        elif shown:
            prepared.answered = True
            reason = f"the reply this one followed was cut ({flight.cut or 'cancelled'})"
            async for event in self._stop(prepared, shown, Usage(), reason):
                yield event

    async def _stop(self, prepared: Prepared, shown: str, usage: Usage, reason: str) -> AsyncGenerator[ChatEvent, None]:
        # The requests following this one record why their reply ended here too (a flight that has landed already,
        # one this request followed, keeps the reason it gave them).
        if prepared.relay is not None and not prepared.relay.future.done():
            prepared.relay.cut = reason
            prepared.relay.land(None)  # over: a request arriving while the cut is recorded makes its own call
        await self._record_cut(prepared, shown, usage, reason)
        yield ChatEvent(
            "error",
            {"code": "reply_cut", "message": "the reply was interrupted; please ask again",
             "request_id": prepared.request_id},
        )  # fmt: skip

    async def _stream_miss(self, prepared: Prepared) -> AsyncGenerator[ChatEvent, None]:
        """The router's reply as it is written; cached (and shared with identical requests) only once complete."""
        await self._retrieve(prepared)
        visible = ControlLineFilter()
        usage = Usage()
        stopped: str | None = None
        try:
            streamed = self._router.stream(prepared.request, live=True, budget_s=self._call_budget(prepared))
            async with contextlib.aclosing(streamed) as chunks:
                async for chunk in chunks:
                    usage.add(chunk)
                    text = visible.feed(chunk.text)
                    if self._leak_guard.leaks(visible.visible):  # an injection that worked: stop showing it
                        stopped = "blocked: the reply quoted the system prompt"
                        break
                    if text:
                        if prepared.relay is not None:  # identical streamed requests follow this one
                            prepared.relay.publish(text)
                        yield ChatEvent("delta", {"text": text})
        except StreamCut as cut:
            stopped = str(cut)
        if stopped is not None:
            async for event in self._stop(prepared, visible.visible, usage, stopped):
                yield event
            return
        rest, control = visible.finish()
        if rest:
            if prepared.relay is not None:
                prepared.relay.publish(rest)
            yield ChatEvent("delta", {"text": rest})
        reply = self._checked(parse_reply(visible.visible + control, prepared.passages))
        result = await self._finish(prepared, reply, usage)
        yield ChatEvent("done", result.body())

    async def _serve_hit(self, prepared: Prepared, hit: CacheHit) -> ChatResult:
        answer = hit.answer
        record = prepared.record(
            answer.reply, answer.provider, answer.model, cache_state=hit.tier, action="answer",
            citations=answer.citations, cache_similarity=hit.similarity if hit.tier == "semantic" else None,
            cache_matched=hit.matched_question if hit.tier == "semantic" else None, cost_saved_usd=answer.cost_usd,
        )  # fmt: skip
        latency_ms = record.response_time_ms
        annotate(provider=answer.provider, model=answer.model, cache=hit.tier, action="answer", tokens_in=0,
                 tokens_out=0, cost_usd=0.0)  # fmt: skip
        await self._conversations.add(record)
        if hit.tier == "semantic":  # the matched question (another shopper's words) is in the record, not the log
            log.info("cache_semantic_hit", similarity=round(hit.similarity, 4))
        return ChatResult(
            reply=answer.reply, session_id=prepared.session_id, message_id=record.message_id,
            provider=answer.provider, model=answer.model, cache=hit.tier, action="answer",
            citations=answer.citations, latency_ms=latency_ms, request_id=prepared.request_id,
        )  # fmt: skip

    async def check_owner(self, session_id: str, principal: Principal) -> None:
        """Unknown and foreign sessions look the same (404), so ids cannot be probed."""
        exists, owner = await self._conversations.session_owner(session_id)
        if not exists or owner != principal.key_id:
            raise NotFound("no such session for this caller", code="session_not_found")

    async def messages(self, session_id: str, principal: Principal) -> list[dict[str, object]]:
        await self.check_owner(session_id, principal)
        return [as_message(row) for row in await self._conversations.history(session_id)]

    async def _history(self, session_id: str) -> tuple[Turn, ...]:
        if self._settings.history_turns == 0:
            return ()
        rows = await self._conversations.history(session_id, limit=self._settings.history_turns)
        return tuple(Turn(redact(row.user_query).text, row.ai_response) for row in rows if not row.error)

    def cost(self, usage: Usage) -> float:
        price_in, price_out = self._settings.prices.get(usage.provider, (0.0, 0.0))
        return (usage.tokens_in * price_in + usage.tokens_out * price_out) / 1_000_000

    async def _finish(
        self, prepared: Prepared, reply: ParsedReply, usage: Usage, *, shared: bool = False
    ) -> ChatResult:
        """Record a reply and return it; cache it and let identical requests share it, unless it is ``shared``
        (another request's reply, whose call already did both: this request made no call and costs nothing)."""
        tokens_out = usage.tokens_out or (0 if shared else estimate_tokens(reply.text))
        record = prepared.record(
            reply.text, usage.provider, usage.model, action=reply.action,
            citations=[citation.as_dict() for citation in reply.citations], tokens_in=usage.tokens_in,
            tokens_out=tokens_out, cost_usd=self.cost(usage), error=_reply_error(reply),
        )  # fmt: skip
        latency_ms = record.response_time_ms
        annotate(  # the request's summary line and metrics (observability.access)
            provider=usage.provider, model=usage.model, cache="miss", action=reply.action,
            tokens_in=usage.tokens_in, tokens_out=tokens_out, cost_usd=record.cost_usd,
        )  # fmt: skip
        await self._conversations.add(record)
        if not shared:
            await self._maybe_cache(prepared, reply, usage)
        log.info(
            "chat_answered", provider=usage.provider, model=usage.model, action=reply.action, latency_ms=latency_ms,
            tokens_in=usage.tokens_in, tokens_out=tokens_out, grounded=reply.grounded,
        )  # fmt: skip
        return ChatResult(
            reply=reply.text,
            session_id=prepared.session_id,
            message_id=record.message_id,
            provider=usage.provider,
            model=usage.model,
            cache="miss",
            action=reply.action,
            citations=record.citations,
            latency_ms=latency_ms,
            request_id=prepared.request_id,
            tokens_in=usage.tokens_in,
            tokens_out=tokens_out,
            cost_usd=record.cost_usd,
        )

    def _worth_caching(self, prepared: Prepared, reply: ParsedReply, usage: Usage) -> CachedAnswer | None:
        """The cache entry for a good answer, or None: no errors, apologies, handoffs, ungrounded or fallback
        replies (the last-resort answerer standing in for configured models), unless settings allow fallbacks."""
        last_resort = usage.provider == "extractive" and len(self._router.providers) > 1
        if not cacheable(
            action=reply.action, grounded=reply.grounded, provider=usage.provider, error=None,
            last_resort=last_resort, allow_fallback=self._settings.cache_fallback_answers and not prepared.hurried,
            hedged=reply.hedged,
        ):  # fmt: skip
            return None
        if prepared.scope.owner == "shared" and names_the_asker(prepared.message, reply.text):
            log.info("cache_write_skipped", reason="the reply calls the shopper by name")
            return None
        # (Details the question itself gave are the asker's to see again; a semantic hit is checked for them, see
        # echoes.)
        passages = _passages_text(prepared)
        if prepared.scope.owner == "shared" and unknown_details(reply.text, f"{prepared.message}\n{passages}"):
            log.info("cache_write_skipped", reason="a number or an address neither question nor knowledge has")
            return None
        if usage.continued:  # shown as it was written; a model told to go on may start again (review, session 26)
            log.info("cache_write_skipped", reason="a reply continued by another model")
            return None
        return CachedAnswer(
            question=prepared.message, reply=reply.text, citations=[c.as_dict() for c in reply.citations],
            provider=usage.provider, model=usage.model, tags=drawn_on(prepared.passages), cost_usd=self.cost(usage),
            locale=prepared.locale or "", echoes=echoes(prepared.message, reply.text, self._known(passages)),
        )  # fmt: skip

    def _known(self, passages: str) -> frozenset[str]:
        """The words an answer may use as the store's own (see cache.policy.echoes): its rules', and those of the
        passages it drew on (``passages``: their text, see _passages_text)."""
        return self._own_forms | word_forms([passages])

    async def _maybe_cache(self, prepared: Prepared, reply: ParsedReply, usage: Usage) -> bool:
        """Store good answers only; let identical requests waiting in this process share the reply either way (as a
        cache hit when it is a good answer; a handoff or a fallback's reply as the miss it is). Whether it stored."""
        if self._cache is None:
            return False
        answer = self._worth_caching(prepared, reply, usage)
        landed: CacheHit | SharedReply = SharedReply(reply, Usage(usage.provider, usage.model))
        stored = refused = False
        if answer is not None:
            if prepared.vector is not None and prepared.generation is not None and self._current(prepared):
                stored = await self._cache.store(
                    prepared.message, prepared.vector, prepared.scope, answer, generation=prepared.generation,
                    versions=versions_of(prepared.passages), revision=prepared.knowledge_revision,
                )  # fmt: skip
                refused = not stored and self._cache.available  # drawn from knowledge that changed meanwhile
            # Not stored, and the store could not check it (it was bypassed when the knowledge was read, or when
            # the answer came): this process's own view decides. A change to its copy of the knowledge since the
            # call read it makes the answer stale to requests that joined since (found by a review, session 26: they
            # were served the old answer as an exact hit after the change's PUT had returned).
            if stored or not (refused or self._changed_since(prepared)):
                landed = CacheHit(answer, "exact", 1.0, prepared.message)
            else:
                landed = SharedReply(reply, Usage(usage.provider, usage.model), stale=True)
        if prepared.relay is not None:  # only into the flight this request leads (never a later one for the key)
            prepared.relay.land(landed)
        return stored

    def _current(self, prepared: Prepared) -> bool:
        """Whether this process's knowledge is still the one the answer was retrieved from: a document added
        meanwhile reaches no version check (see KnowledgeBase.epoch), so such an answer is not written."""
        if self._changed_since(prepared):
            log.info("cache_write_skipped", reason="knowledge changed while answering")
            return False
        return True

    def _changed_since(self, prepared: Prepared) -> bool:
        """Whether this process's copy of the knowledge changed (a change made here, or one read from the database)
        since ``prepared`` read it. (Not the cache's count of invalidations: while the store is down the watcher
        retries the owed one every second, and each try would make every longer call stale for nothing; review
        helper-53.)"""
        return prepared.knowledge_epoch != self._knowledge.epoch

    async def warm(self, question: str, locale: str | None = None) -> bool:
        """Answer ``question`` as a first message from nobody in particular and cache it (no conversation)."""
        if self._cache is None:
            return False
        message = clean_message(question, self._settings.max_message_chars)
        (vector,) = await self._knowledge.embedder.aembed([message])
        scope = self.scope(message, locale, (), ANONYMOUS, "warm")
        if scope.owner != "shared" or await self._cache.lookup(message, vector, scope) is not None:
            return False
        prepared = Prepared(message, "warm", ANONYMOUS, "warm", locale, (), vector, scope)
        # As one more shopper asking it: shoppers asking it meanwhile (here, or on a replica) wait for this call.
        async with self._one_call(prepared) as landed:
            if landed is not None:  # answered meanwhile, here or by a replica: nothing left to warm
                return False
            await self._retrieve(prepared)
            if prepared.generation is None:  # the store is not answering: the answer could not be written
                return False
            completion = await self._router.complete(prepared.request, budget_s=self._call_budget(prepared))
            usage = Usage(completion.provider, completion.model, completion.tokens_in, completion.tokens_out)
            # The same checks as a shopper's answer (leaks, names, echoes): a warmed answer is served to everyone.
            return await self._maybe_cache(
                prepared, self._checked(parse_reply(completion.text, prepared.passages)), usage
            )

    async def _record_cut(self, prepared: Prepared, shown: str, usage: Usage, reason: str) -> None:
        """A cut reply is kept for the operators, marked as an error, never as an answer."""
        record = prepared.record(shown, usage.provider, usage.model, action="handoff", error=f"reply cut: {reason}")
        await self._conversations.add(record)
