"""FakeProvider: a scripted provider for tests (shipped, not mocked), which records what it was asked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from helpline.providers.base import (
    Action,
    BadResponse,
    Completion,
    CompletionRequest,
    ProviderError,
    StreamChunk,
    control_line,
)


@dataclass
class FakeReply:
    text: str = "This is a scripted answer."
    action: Action = "answer"
    cite_first: bool = True
    first_token_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    chunks: int = 3
    error: ProviderError | None = None
    cut_after: int | None = None  # stop after this many chunks (at most all of them) without the final one
    raw: str | None = None  # exact text to send (no control line added)


@dataclass
class FakeProvider:
    name: str = "fake"
    model: str = "fake-1"
    can_continue: bool = True
    replies: list[FakeReply] = field(default_factory=list)
    default: FakeReply = field(default_factory=FakeReply)
    requests: list[CompletionRequest] = field(default_factory=list)
    healthy: bool = True
    cancelled: int = 0

    def _next(self) -> FakeReply:
        return self.replies.pop(0) if self.replies else self.default

    @staticmethod
    def _text(reply: FakeReply, request: CompletionRequest) -> str:
        if reply.raw is not None:
            return reply.raw
        sources = [request.passages[0].id] if reply.cite_first and request.passages and reply.action == "answer" else []
        return f"{reply.text}\n{control_line(reply.action, sources)}"

    async def complete(self, request: CompletionRequest) -> Completion:
        text = "".join([chunk.text async for chunk in self.stream(request)])
        return Completion(text, self.name, self.model, self.count_tokens(request.message), self.count_tokens(text))

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamChunk, None]:
        self.requests.append(request)
        reply = self._next()
        try:
            await asyncio.sleep(reply.first_token_delay_s)
            if reply.error is not None:
                raise reply.error
            pieces = split(self._text(reply, request), reply.chunks)
            for index, piece in enumerate(pieces):
                if reply.cut_after is not None and index >= reply.cut_after:
                    return
                if index:
                    await asyncio.sleep(reply.chunk_delay_s)
                yield StreamChunk(piece)
            if not pieces:
                raise BadResponse("empty reply", provider=self.name)
            if reply.cut_after is not None:  # as many as it has, or more: cut after its last piece
                return
            yield StreamChunk(done=True, tokens_in=self.count_tokens(request.message), tokens_out=len(pieces))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def health(self) -> bool:
        return self.healthy

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def split(text: str, parts: int) -> list[str]:
    if not text:
        return []
    size = max(1, -(-len(text) // max(parts, 1)))
    return [text[i : i + size] for i in range(0, len(text), size)]
