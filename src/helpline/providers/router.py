"""The fallback router: itself a provider, it tries its providers in order and never leaves the shopper empty.

A provider error (the documented tree in ``base``) moves on to the next provider; when every provider has failed,
the shopper gets a canned apology with ``action: handoff`` so a person follows up. Deadlines, breakers and hedging
build on this class (issue: providers that never leave a shopper without an answer).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import structlog

from helpline.providers.base import Completion, CompletionRequest, Provider, ProviderError

APOLOGY_REPLY = (
    "I'm sorry, I can't answer right now. A member of our support team will follow up with you as soon as possible."
)
log = structlog.get_logger(__name__)


def fallback_on_provider_error(error: BaseException) -> bool:
    return isinstance(error, ProviderError)


class FallbackRouter:
    name = "router"
    model = "router"

    def __init__(
        self,
        providers: Sequence[Provider],
        fallback_on: Callable[[BaseException], bool] = fallback_on_provider_error,
    ) -> None:
        if not providers:
            raise ValueError("the router needs at least one provider")
        self._providers = list(providers)
        self._fallback_on = fallback_on

    @property
    def providers(self) -> list[Provider]:
        return list(self._providers)

    async def complete(self, request: CompletionRequest) -> Completion:
        errors: list[str] = []
        for provider in self._providers:
            try:
                return await provider.complete(request)
            except Exception as error:
                if not self._fallback_on(error):
                    raise
                log.warning("provider_failed", provider=provider.name, error=type(error).__name__)
                errors.append(f"{provider.name}: {type(error).__name__}: {error}")
        return Completion(APOLOGY_REPLY, "none", "none", "handoff", metadata={"error": "; ".join(errors)})

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str]:
        completion = await self.complete(request)
        yield completion.text

    async def health(self) -> bool:
        for provider in self._providers:
            if await provider.health():
                return True
        return False

    def count_tokens(self, text: str) -> int:
        return self._providers[0].count_tokens(text)
