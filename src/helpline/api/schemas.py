"""Request and response bodies of the HTTP contract."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatRequest(BaseModel):
    # Strict: the body is what the schema says (``"stream": 0`` or ``"message": 5`` is a 422, not coerced).
    model_config = ConfigDict(extra="ignore", strict=True)

    # Length is checked after trimming in ChatService (the limit is a setting); this only bounds the parse.
    message: str = Field(max_length=100_000)
    session_id: str | None = Field(default=None, min_length=1, max_length=64)
    locale: str | None = Field(default=None, max_length=35, pattern=r"^[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8})*$")
    stream: bool = False


class CitationOut(BaseModel):
    id: str
    title: str


class ChatResponse(BaseModel):
    reply: str
    session_id: str
    message_id: str
    provider: str
    model: str
    cache: Literal["miss", "exact", "semantic"]
    action: Literal["answer", "handoff"]
    citations: list[CitationOut]
    latency_ms: int
    request_id: str


class MessageOut(BaseModel):
    message_id: str
    message: str
    reply: str
    provider: str
    model: str
    cache: str
    action: str
    citations: list[CitationOut]
    created_at: str


class SessionMessages(BaseModel):
    session_id: str
    messages: list[MessageOut]


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]
