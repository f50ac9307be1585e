"""Google Gemini through the official ``google-genai`` SDK (async). SDK retries are off: retries are ours.

Vendor errors are mapped here, at the edge: ``ClientError``/``ServerError`` by status, httpx2 transport errors by
kind, blocked prompts and SAFETY/RECITATION finishes to SafetyRefusal, and a MAX_TOKENS finish to a cut reply.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from helpline.chat.prompts import ChatPrompt, build_prompt, estimate_tokens
from helpline.providers.base import (
    AuthError,
    BadResponse,
    Completion,
    CompletionRequest,
    ContextTooLong,
    ProviderError,
    RateLimited,
    SafetyRefusal,
    StreamChunk,
    StreamCut,
    Unavailable,
)
from helpline.providers.transport import ended, map_transport_error, parse_retry_after

SAFETY_FINISHES = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
HISTORY_BUDGET_TOKENS = 4000


class GeminiProvider:
    name = "gemini"
    can_continue = True

    def __init__(
        self, api_key: str, model: str, base_url: str = "", timeout_s: float = 30.0, max_output_tokens: int = 1024
    ) -> None:
        options = types.HttpOptions(
            timeout=int(timeout_s * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),
            **({"base_url": base_url, "api_version": "v1beta"} if base_url else {}),
        )
        self._client = genai.Client(api_key=api_key, http_options=options)
        self.model = model
        self._max_output_tokens = max_output_tokens

    def _config(self, prompt: ChatPrompt) -> types.GenerateContentConfig:
        return types.GenerateContentConfig(
            system_instruction=prompt.system, temperature=0.2, max_output_tokens=self._max_output_tokens
        )

    def _contents(self, request: CompletionRequest) -> tuple[list[types.Content], types.GenerateContentConfig]:
        prompt = build_prompt(request, history_budget_tokens=HISTORY_BUDGET_TOKENS, count=self.count_tokens)
        contents = [
            types.Content(role="model" if role == "assistant" else "user", parts=[types.Part(text=text)])
            for role, text in prompt.messages
        ]
        return contents, self._config(prompt)

    async def complete(self, request: CompletionRequest) -> Completion:
        contents, config = self._contents(request)
        try:
            response = await self._client.aio.models.generate_content(
                model=self.model, contents=contents, config=config
            )
        except Exception as error:
            raise self._map(error) from error
        text, finished = self._read(response)
        if not finished:
            raise BadResponse("the reply has no finish reason", provider=self.name)
        tokens_in, tokens_out = usage(response)
        return Completion(text, self.name, self.model, tokens_in, tokens_out)

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamChunk, None]:
        contents, config = self._contents(request)
        tokens: tuple[int, int] = (0, 0)
        try:
            responses = await self._client.aio.models.generate_content_stream(
                model=self.model, contents=contents, config=config
            )
            async with ended(responses) as end:  # the SDK's whole stream ends here, on the loop (transport.ended)
                async for response in responses:
                    text, finished = self._read(response)
                    tokens = usage(response) if response.usage_metadata else tokens
                    if text:
                        yield StreamChunk(text)
                    if finished:
                        end.finished = True
                        yield StreamChunk(done=True, tokens_in=tokens[0], tokens_out=tokens[1])
                        return
        except ProviderError:
            raise
        except Exception as error:
            raise self._map(error) from error
        raise StreamCut("the stream ended without a finish reason", provider=self.name)

    def _read(self, response: types.GenerateContentResponse) -> tuple[str, bool]:
        """(text of this response, whether it carries a normal finish). Refusals and truncation raise."""
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason:
            raise SafetyRefusal(f"prompt blocked: {feedback.block_reason}", provider=self.name)
        if not response.candidates:
            return "", False
        candidate = response.candidates[0]
        parts = candidate.content.parts if candidate.content and candidate.content.parts else []
        text = "".join(part.text or "" for part in parts if not getattr(part, "thought", False))
        reason = _enum_name(candidate.finish_reason)
        if reason in SAFETY_FINISHES:
            raise SafetyRefusal(f"reply blocked: {reason}", provider=self.name)
        if reason == "MAX_TOKENS":
            raise StreamCut("the reply hit the output token limit", provider=self.name)
        return text, bool(reason)

    def _map(self, error: BaseException) -> ProviderError:
        if isinstance(error, genai_errors.APIError):
            return self._map_api_error(error)
        mapped = map_transport_error(error, self.name)
        return mapped or BadResponse(f"{type(error).__name__}: {error}", provider=self.name)

    def _map_api_error(self, error: genai_errors.APIError) -> ProviderError:
        detail = f"{error.code} {error.status}: {error.message}"
        if error.code == 429:
            return RateLimited(detail, provider=self.name, retry_after_s=_retry_after(error))
        if error.code in (401, 403):
            return AuthError(detail, provider=self.name)
        if error.code == 400 and "token" in (error.message or "").lower():
            return ContextTooLong(detail, provider=self.name)
        if error.code >= 500 or error.code == 408:
            return Unavailable(detail, provider=self.name)
        return BadResponse(detail, provider=self.name)

    async def health(self) -> bool:
        """A models.get call: costs no tokens."""
        try:
            await self._client.aio.models.get(model=self.model)
        except Exception:  # noqa: BLE001 - any failure means unhealthy
            return False
        return True

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    async def aclose(self) -> None:
        await self._client.aio.aclose()


def usage(response: types.GenerateContentResponse) -> tuple[int, int]:
    meta = response.usage_metadata
    if meta is None:
        return 0, 0
    return meta.prompt_token_count or 0, meta.candidates_token_count or 0


def _enum_name(value: Any) -> str:
    if value is None:
        return ""
    return str(getattr(value, "name", value)).upper()


def _retry_after(error: genai_errors.APIError) -> float | None:
    response = error.response
    headers = getattr(response, "headers", None)
    if headers is not None and headers.get("retry-after"):
        return parse_retry_after(headers.get("retry-after"))
    details = error.details.get("error", {}).get("details", []) if isinstance(error.details, dict) else []
    for item in details:
        if isinstance(item, dict) and "retryDelay" in item:
            return parse_retry_after(item["retryDelay"])
    return None
