"""The provider Protocol, what goes in and out of it, and the one exception tree vendors' errors map into.

ProviderError
├── RateLimited (retry_after_s)     429 / quota: cool down, try the next provider
├── Unavailable                     refused connection, 5xx, breaker open
├── ProviderTimeout                 connect, first-token or whole-reply deadline passed
├── BadResponse                     malformed body, empty reply
│   └── StreamCut                   the stream ended without its final chunk
├── SafetyRefusal                   the vendor's safety filter blocked the prompt or reply
├── ContextTooLong                  prompt exceeds the model's window
└── AuthError                       key missing, wrong or revoked
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from helpline.knowledge.base import Passage

Action = Literal["answer", "handoff"]


class ProviderError(Exception):
    """Base of every provider failure; ``provider`` names who failed."""

    def __init__(self, message: str, *, provider: str = "") -> None:
        super().__init__(message)
        self.provider = provider


class RateLimited(ProviderError):
    def __init__(self, message: str, *, provider: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(message, provider=provider)
        self.retry_after_s = retry_after_s


class Unavailable(ProviderError):
    pass


class ProviderTimeout(ProviderError):
    pass


class BadResponse(ProviderError):
    pass


class SafetyRefusal(ProviderError):
    pass


class ContextTooLong(ProviderError):
    pass


class AuthError(ProviderError):
    pass


class StreamCut(BadResponse):
    """The reply stopped before its end (no final chunk)."""


def control_line(action: Action, sources: tuple[str, ...] | list[str] = ()) -> str:
    return f"<<ACTION={action}; SOURCES={','.join(sources)}>>"


@dataclass(frozen=True, slots=True)
class Turn:
    """An earlier exchange of the conversation, for context."""

    message: str
    reply: str


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    message: str
    passages: tuple[Passage, ...] = ()
    history: tuple[Turn, ...] = ()
    locale: str | None = None
    partial: str = ""  # text already shown to the shopper that this provider must continue


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """A piece of a streamed reply. A stream is complete only when its last chunk has ``done=True``; a stream
    that ends without it was cut. The router fills ``provider``/``model`` with who produced the chunk."""

    text: str = ""
    done: bool = False
    tokens_in: int | None = None
    tokens_out: int | None = None
    provider: str = ""
    model: str = ""


@dataclass(frozen=True, slots=True)
class Citation:
    id: str
    title: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title}


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole reply as the provider wrote it (control line included; chat/reply.py parses it)."""

    text: str
    provider: str
    model: str
    tokens_in: int = 0
    tokens_out: int = 0


@runtime_checkable
class Provider(Protocol):
    """What every answerer offers.

    ``stream`` yields :class:`StreamChunk` and must end with a ``done`` chunk; ``complete`` returns the whole reply.
    Replies end with the control line of chat/prompts.py. ``can_continue``: it can finish another model's
    interrupted reply (LLMs can; the extractive answerer cannot).
    """

    name: str
    model: str
    can_continue: bool

    async def complete(self, request: CompletionRequest) -> Completion: ...

    def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamChunk, None]: ...

    async def health(self) -> bool: ...

    def count_tokens(self, text: str) -> int: ...
