"""FakeProvider: a scripted provider for tests (shipped, not mocked), which records what it was asked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from helpline.providers.base import Action, Citation, Completion, CompletionRequest, ProviderError


@dataclass
class FakeReply:
    text: str = "This is a scripted answer."
    action: Action = "answer"
    cite_first: bool = True
    delay_s: float = 0.0
    error: ProviderError | None = None


@dataclass
class FakeProvider:
    name: str = "fake"
    model: str = "fake-1"
    replies: list[FakeReply] = field(default_factory=list)
    default: FakeReply = field(default_factory=FakeReply)
    requests: list[CompletionRequest] = field(default_factory=list)
    healthy: bool = True

    def _next(self) -> FakeReply:
        return self.replies.pop(0) if self.replies else self.default

    async def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        reply = self._next()
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.error is not None:
            raise reply.error
        citations = (
            (Citation(request.passages[0].id, request.passages[0].title),)
            if reply.cite_first and request.passages
            else ()
        )
        return Completion(
            reply.text,
            self.name,
            self.model,
            reply.action,
            citations,
            self.count_tokens(request.message),
            self.count_tokens(reply.text),
        )

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str]:
        completion = await self.complete(request)
        for word in completion.text.split(" "):
            yield word + " "

    async def health(self) -> bool:
        return self.healthy

    def count_tokens(self, text: str) -> int:
        return len(text.split())
