"""`POST /v1/chat/completions`: OpenAI-compatible, so existing OpenAI clients use Helpline's routing, cache, limits.

The API is stateless: the last user message is the question and the earlier user/assistant pairs are its context
(scoped in the cache like a conversation's). Each call is recorded as a new conversation of the caller. System
messages from the client are ignored on purpose: the store's rules are not the client's to change.
Streaming follows OpenAI's format (``chat.completion.chunk`` objects, then ``[DONE]``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse

from helpline.api.deps import CallerDep
from helpline.api.limits import charge
from helpline.api.schemas import ErrorResponse
from helpline.chat.service import ChatEvent, ChatResult, clean_message
from helpline.errors import InvalidInput
from helpline.providers.base import Turn

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 413, 415, 422, 429, 503)
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {
        "description": "A `chat.completion` object; with `stream: true`, server-sent `chat.completion.chunk` "
        "objects and a final `[DONE]`.",
        "content": {
            "application/json": {"schema": {"type": "object", "required": ["id", "object", "choices"]}},
            # One parsed server-sent event (OpenAI streams carry only data lines).
            "text/event-stream": {
                "schema": {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
            },
        },
    },
}


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = self.content or []
        return "".join(str(part.get("text", "")) for part in parts if part.get("type") == "text")


class CompletionIn(BaseModel):
    # Strict like ChatRequest (and Message): ``"stream": 0`` is a 422, not coerced.
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(default="helpline", max_length=100)
    messages: list[Message] = Field(min_length=1, max_length=100)
    stream: bool = False
    user: str | None = Field(default=None, max_length=200)


def split_messages(messages: list[Message]) -> tuple[str, tuple[Turn, ...]]:
    """(the question, earlier turns as (user, assistant) pairs)."""
    dialogue = [m for m in messages if m.role in ("user", "assistant")]
    if not dialogue or dialogue[-1].role != "user":
        raise InvalidInput("the last message must come from the user", code="validation_error")
    turns: list[Turn] = []
    pending: str | None = None
    for message in dialogue[:-1]:
        if message.role == "user":
            pending = message.text()
        elif pending is not None:
            turns.append(Turn(pending, message.text()))
            pending = None
    return dialogue[-1].text(), tuple(turns[-10:])


def completion_body(result: ChatResult, created: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{result.message_id}",
        "object": "chat.completion",
        "created": created,
        "model": result.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.reply}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": result.tokens_in,
            "completion_tokens": result.tokens_out,
            "total_tokens": result.tokens_in + result.tokens_out,
        },
        "helpline": {
            k: v for k, v in result.body().items() if k in ("session_id", "provider", "cache", "action", "citations")
        },
    }


@router.post("/v1/chat/completions", responses=RESPONSES, summary="OpenAI-compatible chat")
async def chat_completions(*, body: CompletionIn, request: Request, caller: CallerDep) -> Any:
    question, history = split_messages(body.messages)
    clean_message(question, caller.services.settings.max_message_chars)  # refuse bad input before it is charged
    await charge(request, caller.services, caller.principal, session_id=None)
    created = int(time.time())
    prepared = await caller.chat.prepare(
        question, principal=caller.principal, request_id=caller.request_id, history=history, end_user=body.user,
        key_is_shopper=False,  # a store's backend may call with one key for all its shoppers: `user` names them
    )  # fmt: skip
    if body.stream:
        return EventSourceResponse(_chunks(caller.chat.chat_stream(prepared), created), ping=15)
    return completion_body(await caller.chat.answer(prepared), created)


async def _chunks(events: AsyncIterator[ChatEvent], created: int) -> AsyncIterator[dict[str, str]]:
    """ChatService's events as OpenAI stream chunks; a cut reply ends with an error object, never ``stop``."""
    ident = "chatcmpl-stream"
    model = "helpline"
    async for event in events:
        if event.kind == "meta":
            ident = f"chatcmpl-{event.data['request_id']}"
            yield _chunk(ident, created, model, {"role": "assistant", "content": ""}, None)
        elif event.kind == "delta":
            yield _chunk(ident, created, model, {"content": event.data["text"]}, None)
        elif event.kind == "done":
            yield _chunk(ident, created, str(event.data["model"]), {}, "stop")
            yield {"data": "[DONE]"}
        else:
            yield {
                "data": orjson.dumps({"error": {"message": event.data["message"], "type": event.data["code"]}}).decode()
            }


def _chunk(ident: str, created: int, model: str, delta: dict[str, Any], finish: str | None) -> dict[str, str]:
    payload = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return {"data": orjson.dumps(payload).decode()}
