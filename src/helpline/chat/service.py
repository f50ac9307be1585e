"""ChatService: input checks, session ownership, retrieval, the provider router, reply checks, the record.

Routes stay thin; the logic is here. ``chat`` answers in one piece; ``chat_stream`` yields the contract's SSE
events (meta, delta…, then done or error). Both go through the same preparation and the same record.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from helpline.chat.prompts import estimate_tokens
from helpline.chat.reply import ControlLineFilter, ParsedReply, parse_reply
from helpline.config import Settings
from helpline.errors import InvalidInput, NotFound
from helpline.knowledge.base import KnowledgeBase, Passage
from helpline.providers.base import CompletionRequest, StreamChunk, StreamCut, Turn
from helpline.providers.router import FallbackRouter
from helpline.store.repositories import (
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
    passages: tuple[Passage, ...]
    history: tuple[Turn, ...]
    started: float = field(default_factory=time.perf_counter)

    @property
    def request(self) -> CompletionRequest:
        return CompletionRequest(self.message, self.passages, self.history, self.locale)


@dataclass(slots=True)
class Usage:
    provider: str = "none"
    model: str = "none"
    tokens_in: int = 0
    tokens_out: int = 0

    def add(self, chunk: StreamChunk) -> None:
        if chunk.provider:
            self.provider, self.model = chunk.provider, chunk.model
        self.tokens_in = chunk.tokens_in if chunk.tokens_in is not None else self.tokens_in
        self.tokens_out = chunk.tokens_out if chunk.tokens_out is not None else self.tokens_out


def clean_message(raw: str, max_chars: int) -> str:
    """The message as we will answer it: trimmed, non-empty, within the length limit."""
    message = raw.strip()
    if not message:
        raise InvalidInput("message must not be empty", code="message_empty")
    if len(message) > max_chars:
        raise InvalidInput(f"message is longer than {max_chars} characters", code="message_too_long")
    return message


class ChatService:
    def __init__(
        self,
        settings: Settings,
        conversations: ConversationRepository,
        knowledge: KnowledgeBase,
        router: FallbackRouter,
    ) -> None:
        self._settings = settings
        self._conversations = conversations
        self._knowledge = knowledge
        self._router = router

    async def prepare(
        self,
        raw_message: str,
        *,
        principal: Principal,
        request_id: str,
        session_id: str | None = None,
        locale: str | None = None,
    ) -> Prepared:
        """Everything that can refuse the request, before any event is sent or anything is written."""
        message = clean_message(raw_message, self._settings.max_message_chars)
        history: tuple[Turn, ...] = ()
        if session_id is not None:
            await self.check_owner(session_id, principal)
            history = await self._history(session_id)
        passages = tuple(await self._knowledge.search(message, self._settings.retrieval_top_k))
        if session_id is None:
            session_id = await self._conversations.create_session(principal, locale)
        return Prepared(message, session_id, principal, request_id, locale, passages, history)

    async def chat(self, raw_message: str, **context: Any) -> ChatResult:
        prepared = await self.prepare(raw_message, **context)
        completion = await self._router.complete(prepared.request)
        usage = Usage(completion.provider, completion.model, completion.tokens_in, completion.tokens_out)
        return await self._finish(prepared, parse_reply(completion.text, prepared.passages), usage)

    async def chat_stream(self, prepared: Prepared) -> AsyncIterator[ChatEvent]:
        """SSE events for a prepared question. A cut reply ends with ``error``, never ``done``."""
        yield ChatEvent("meta", {"session_id": prepared.session_id, "request_id": prepared.request_id})
        visible = ControlLineFilter()
        usage = Usage()
        try:
            async for chunk in self._router.stream(prepared.request, live=True):
                usage.add(chunk)
                text = visible.feed(chunk.text)
                if text:
                    yield ChatEvent("delta", {"text": text})
        except StreamCut as cut:
            await self._record_cut(prepared, visible.visible, usage, str(cut))
            yield ChatEvent(
                "error",
                {"code": "reply_cut", "message": "the reply was interrupted; please ask again",
                 "request_id": prepared.request_id},
            )  # fmt: skip
            return
        rest, control = visible.finish()
        if rest:
            yield ChatEvent("delta", {"text": rest})
        result = await self._finish(prepared, parse_reply(visible.visible + control, prepared.passages), usage)
        yield ChatEvent("done", result.body())

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
        return tuple(Turn(row.user_query, row.ai_response) for row in rows if not row.error)

    def cost(self, usage: Usage) -> float:
        price_in, price_out = self._settings.prices.get(usage.provider, (0.0, 0.0))
        return (usage.tokens_in * price_in + usage.tokens_out * price_out) / 1_000_000

    async def _finish(self, prepared: Prepared, reply: ParsedReply, usage: Usage) -> ChatResult:
        latency_ms = round((time.perf_counter() - prepared.started) * 1000)
        tokens_out = usage.tokens_out or estimate_tokens(reply.text)
        record = ConversationRecord(
            session_id=prepared.session_id,
            user_query=prepared.message,
            ai_response=reply.text,
            model_used=usage.model,
            provider=usage.provider,
            response_time_ms=latency_ms,
            request_id=prepared.request_id,
            action=reply.action,
            citations=[citation.as_dict() for citation in reply.citations],
            tokens_in=usage.tokens_in,
            tokens_out=tokens_out,
            cost_usd=self.cost(usage),
            error=None if reply.grounded else "ungrounded: the reply cited no passage it was given",
            user_key_id=prepared.principal.key_id,
            locale=prepared.locale,
        )
        await self._conversations.add(record)
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

    async def _record_cut(self, prepared: Prepared, shown: str, usage: Usage, reason: str) -> None:
        """A cut reply is kept for the operators, marked as an error, never as an answer."""
        await self._conversations.add(
            ConversationRecord(
                session_id=prepared.session_id,
                user_query=prepared.message,
                ai_response=shown,
                model_used=usage.model,
                provider=usage.provider,
                response_time_ms=round((time.perf_counter() - prepared.started) * 1000),
                request_id=prepared.request_id,
                action="handoff",
                error=f"reply cut: {reason}",
                user_key_id=prepared.principal.key_id,
                locale=prepared.locale,
            )
        )
