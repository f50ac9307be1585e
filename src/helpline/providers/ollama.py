"""A local Ollama server through the official ``ollama`` async client (default model phi3).

The client raises ``ollama.ResponseError`` for HTTP errors, the builtin ConnectionError for a refused connection
(non-streaming) but a raw ``httpx.ConnectError`` when streaming, and times out per read only: all mapped here;
the whole-reply deadline is the router's.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx
import ollama

from helpline.chat.prompts import build_prompt, estimate_tokens
from helpline.providers.base import (
    BadResponse,
    Completion,
    CompletionRequest,
    ContextTooLong,
    ProviderError,
    RateLimited,
    StreamChunk,
    StreamCut,
    Unavailable,
)
from helpline.providers.transport import ended, map_transport_error

HISTORY_BUDGET_TOKENS = 1500


class OllamaProvider:
    name = "ollama"
    can_continue = True

    def __init__(
        self, host: str, model: str, timeout_s: float = 30.0, connect_timeout_s: float = 2.0, max_tokens: int = 512
    ) -> None:
        self._client = ollama.AsyncClient(host=host, timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s))
        self.model = model
        self._options = {"temperature": 0.2, "num_predict": max_tokens}

    def _messages(self, request: CompletionRequest) -> list[dict[str, str]]:
        prompt = build_prompt(request, history_budget_tokens=HISTORY_BUDGET_TOKENS, count=self.count_tokens)
        return [{"role": "system", "content": prompt.system}] + [
            {"role": role, "content": text} for role, text in prompt.messages
        ]

    async def complete(self, request: CompletionRequest) -> Completion:
        try:
            response = await self._client.chat(self.model, self._messages(request), options=self._options)
        except Exception as error:
            raise self._map(error) from error
        self._check_finish(response)
        return Completion(
            response.message.content or "",
            self.name,
            self.model,
            response.prompt_eval_count or 0,
            response.eval_count or 0,
        )

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamChunk, None]:
        try:
            parts = await self._client.chat(self.model, self._messages(request), stream=True, options=self._options)
            async with ended(parts) as end:  # the client's whole stream ends here, on the loop (transport.ended)
                async for part in parts:
                    if part.message.content:
                        yield StreamChunk(part.message.content)
                    if part.done:
                        self._check_finish(part)
                        end.finished = True
                        yield StreamChunk(
                            done=True, tokens_in=part.prompt_eval_count or 0, tokens_out=part.eval_count or 0
                        )
                        return
        except ProviderError:
            raise
        except Exception as error:
            raise self._map(error) from error
        raise StreamCut("the stream ended without done", provider=self.name)

    def _check_finish(self, response: Any) -> None:
        if not response.done:
            raise StreamCut("the reply is not done", provider=self.name)
        if response.done_reason == "length":
            raise StreamCut("the reply hit the output token limit", provider=self.name)

    def _map(self, error: BaseException) -> ProviderError:
        if isinstance(error, ollama.ResponseError):
            detail = f"{error.status_code}: {error.error}"
            if error.status_code == 429:
                return RateLimited(detail, provider=self.name)
            if error.status_code >= 500 or error.status_code in (404, 408):
                return Unavailable(detail, provider=self.name)  # 404: the model is not pulled on this server
            if "context" in error.error.lower():
                return ContextTooLong(detail, provider=self.name)
            return BadResponse(detail, provider=self.name)
        mapped = map_transport_error(error, self.name)
        return mapped or BadResponse(f"{type(error).__name__}: {error}", provider=self.name)

    async def health(self) -> bool:
        """GET /api/tags: free, and tells whether our model is pulled."""
        try:
            listing = await self._client.list()
        except Exception:  # noqa: BLE001 - any failure means unhealthy
            return False
        wanted = self.model if ":" in self.model else f"{self.model}:latest"
        return any(model.model in (self.model, wanted) for model in listing.models)

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)
