"""ChatService: guards, retrieval, provider, conversation record. Routes stay thin; the logic is here."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog

from helpline.config import Settings
from helpline.errors import InvalidInput, NotFound
from helpline.knowledge.base import KnowledgeBase
from helpline.providers.base import Completion, CompletionRequest, Provider, Turn
from helpline.store.repositories import ConversationRecord, ConversationRepository, Principal, as_message

log = structlog.get_logger(__name__)


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
    extra: dict[str, str] = field(default_factory=dict)


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
        provider: Provider,
    ) -> None:
        self._settings = settings
        self._conversations = conversations
        self._knowledge = knowledge
        self._provider = provider

    async def chat(
        self,
        raw_message: str,
        *,
        principal: Principal,
        request_id: str,
        session_id: str | None = None,
        locale: str | None = None,
    ) -> ChatResult:
        started = time.perf_counter()
        message = clean_message(raw_message, self._settings.max_message_chars)
        history: tuple[Turn, ...] = ()
        if session_id is not None:
            await self.check_owner(session_id, principal)
            history = await self._history(session_id)
        passages = await self._knowledge.search(message, self._settings.retrieval_top_k)
        request = CompletionRequest(message, tuple(passages), history, locale)
        completion = await self._provider.complete(request)
        if session_id is None:
            session_id = await self._conversations.create_session(principal, locale)
        latency_ms = round((time.perf_counter() - started) * 1000)
        record = self._record(
            message,
            completion=completion,
            session_id=session_id,
            principal=principal,
            request_id=request_id,
            latency_ms=latency_ms,
            locale=locale,
        )
        await self._conversations.add(record)
        log.info(
            "chat_answered",
            provider=completion.provider,
            model=completion.model,
            action=completion.action,
            latency_ms=latency_ms,
            tokens_in=completion.tokens_in,
            tokens_out=completion.tokens_out,
        )
        return ChatResult(
            reply=completion.text,
            session_id=session_id,
            message_id=record.message_id,
            provider=completion.provider,
            model=completion.model,
            cache="miss",
            action=completion.action,
            citations=record.citations,
            latency_ms=latency_ms,
            request_id=request_id,
            tokens_in=completion.tokens_in,
            tokens_out=completion.tokens_out,
        )

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
        return tuple(Turn(row.user_query, row.ai_response) for row in rows)

    @staticmethod
    def _record(
        message: str,
        *,
        completion: Completion,
        session_id: str,
        principal: Principal,
        request_id: str,
        latency_ms: int,
        locale: str | None,
    ) -> ConversationRecord:
        return ConversationRecord(
            session_id=session_id,
            user_query=message,
            ai_response=completion.text,
            model_used=completion.model,
            provider=completion.provider,
            response_time_ms=latency_ms,
            request_id=request_id,
            action=completion.action,
            citations=[citation.as_dict() for citation in completion.citations],
            tokens_in=completion.tokens_in,
            tokens_out=completion.tokens_out,
            error=completion.metadata.get("error"),
            user_key_id=principal.key_id,
            locale=locale,
        )
