"""The extractive answerer: the last resort of every chain and the embedded default.

It generates nothing: it quotes the best-matching FAQ answer, policy section or product record, cites it, and
hands off to a person when nothing in the knowledge base matches confidently.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from helpline.knowledge.base import Passage
from helpline.providers.base import Completion, CompletionRequest, StreamChunk, control_line

HANDOFF_REPLY = (
    "I'm sorry, I couldn't find a reliable answer to that in our help pages. "
    "A member of our support team will follow up with you shortly."
)
# A second passage is cited too when it scores almost as well as the first: both are likely relevant.
RUNNER_UP_MARGIN = 0.03


class ExtractiveProvider:
    name = "extractive"
    model = "extractive-v1"
    can_continue = False

    def __init__(self, min_score: float) -> None:
        self._min_score = min_score

    def answer(self, request: CompletionRequest) -> str:
        """The reply text with its control line."""
        confident = [p for p in request.passages if p.score >= self._min_score]
        if not confident:
            return f"{HANDOFF_REPLY}\n{control_line('handoff')}"
        best = confident[0]
        chosen = [best] + [
            p for p in confident[1:2] if best.score - p.score <= RUNNER_UP_MARGIN and p.kind == best.kind
        ]
        return f"{render(best)}\n{control_line('answer', [p.id for p in chosen])}"

    async def complete(self, request: CompletionRequest) -> Completion:
        text = self.answer(request)
        return Completion(text, self.name, self.model, self.count_tokens(request.message), self.count_tokens(text))

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamChunk, None]:
        completion = await self.complete(request)
        yield StreamChunk(completion.text)
        yield StreamChunk(done=True, tokens_in=completion.tokens_in, tokens_out=completion.tokens_out)

    async def health(self) -> bool:
        return True

    def count_tokens(self, text: str) -> int:
        """Words are a fair proxy here; nothing is billed for this provider."""
        return len(text.split())


def render(passage: Passage) -> str:
    """The reply text for one passage."""
    if passage.kind == "faq":
        return str(passage.metadata.get("answer", passage.text))
    if passage.kind == "product":
        return passage.text
    policy = passage.metadata.get("policy", passage.title)
    return f"From our {policy} ({passage.metadata.get('section', '')}):\n\n{passage.text}"
