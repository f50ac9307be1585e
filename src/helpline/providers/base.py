"""The provider Protocol, what goes in and out of it, and the one exception tree vendors' errors map into.

ProviderError
├── RateLimited (retry_after_s)     429 / quota: cool down, try the next provider
├── Unavailable                     refused connection, 5xx, breaker open
├── ProviderTimeout                 connect, first-token or whole-reply deadline passed
├── BadResponse                     malformed body, empty or cut reply
├── SafetyRefusal                   the vendor's safety filter blocked the prompt or reply
├── ContextTooLong                  prompt exceeds the model's window
└── AuthError                       key missing, wrong or revoked
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class Citation:
    id: str
    title: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title}


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    provider: str
    model: str
    action: Action = "answer"
    citations: tuple[Citation, ...] = ()
    tokens_in: int = 0
    tokens_out: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Provider(Protocol):
    """What every answerer offers. ``stream`` yields text pieces; ``complete`` the whole reply."""

    name: str
    model: str

    async def complete(self, request: CompletionRequest) -> Completion: ...

    def stream(self, request: CompletionRequest) -> AsyncIterator[str]: ...

    async def health(self) -> bool: ...

    def count_tokens(self, text: str) -> int: ...
