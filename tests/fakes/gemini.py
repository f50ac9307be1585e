"""A stand-in for Google's Gemini REST API (generativelanguage.googleapis.com), for driving the real google-genai SDK.

Point the SDK at it with
`genai.Client(api_key="k", http_options=types.HttpOptions(base_url=server.base_url, api_version="v1beta"))`.
Bodies follow the real wire shapes (camelCase JSON, SSE `data:` frames, google.rpc error objects) so the SDK's
own parsing and error mapping are what the tests exercise.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from tests.fakes.servers import (
    Fault,
    FaultKind,
    HttpExchange,
    HttpRequest,
    ScriptedHttpServer,
    retry_after_value,
    split_text,
)

DEFAULT_MODELS = ("gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.5-pro", "gemini-2.0-flash")
_PATH = re.compile(r"^/(?P<version>v1[a-z0-9]*)/models(?:/(?P<model>[^/:]+)(?::(?P<method>[A-Za-z]+))?)?$")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_DEFAULT_MESSAGES = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}
_BLOCKED_RATING = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]
_MALFORMED_BODY = b'{"candidates": [{"content": {"parts": [{"text": "cut off'
_SSE = "text/event-stream"


@dataclass(frozen=True, slots=True)
class _Reply:
    """Per-request facts repeated in every chunk, like the real API does (same responseId on all chunks)."""

    model: str
    prompt_tokens: int
    response_id: str

    def envelope(self, text: str | None) -> dict[str, Any]:
        """usageMetadata, modelVersion and responseId; candidate counts only once the whole text is known."""
        usage: dict[str, Any] = {"promptTokenCount": self.prompt_tokens, "totalTokenCount": self.prompt_tokens}
        if text is not None:
            usage["candidatesTokenCount"] = _tokens(text)
            usage["totalTokenCount"] = self.prompt_tokens + _tokens(text)
        return {"usageMetadata": usage, "modelVersion": self.model, "responseId": self.response_id}


@dataclass(frozen=True, slots=True)
class _Route:
    version: str
    model: str | None
    method: str | None  # None for GET model / list models


def _route(request: HttpRequest) -> _Route | None:
    match = _PATH.match(request.path)
    if match is None:
        return None
    route = _Route(match["version"], match["model"], match["method"])
    allowed = {
        None: "GET",
        "generateContent": "POST",
        "streamGenerateContent": "POST",
    }
    return route if allowed.get(route.method) == request.method else None


def _tokens(text: str) -> int:
    """Roughly Gemini's ratio (about four characters per token); tests only need a plausible, stable count."""
    return (len(text) + 3) // 4


def _prompt_text(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    texts: list[str] = []
    for content in [*body.get("contents", []), body.get("systemInstruction") or {}]:
        texts.extend(str(part.get("text", "")) for part in content.get("parts", []) if isinstance(part, dict))
    return " ".join(texts)


def _reply_for(request: HttpRequest, route: _Route) -> _Reply:
    return _Reply(route.model or "", _tokens(_prompt_text(request.json_body)), secrets.token_hex(8))


def _model_info(model: str) -> dict[str, Any]:
    return {
        "name": f"models/{model}",
        "version": "001",
        "displayName": model,
        "description": f"Fake {model}",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
        "temperature": 1.0,
        "topP": 0.95,
        "topK": 64,
    }


class FakeGemini(ScriptedHttpServer):
    """Gemini API fake: generateContent, streamGenerateContent (SSE), models.get and models.list.

    `known_models` mirrors the real 404 for unknown models; `api_key`, when set, is checked like the real API does
    (400 INVALID_ARGUMENT / API_KEY_INVALID).
    """

    def __init__(
        self,
        reply_text: str = "Hello from fake Gemini.",
        port: int = 0,
        known_models: tuple[str, ...] = DEFAULT_MODELS,
        api_key: str | None = None,
    ) -> None:
        super().__init__(reply_text, port=port, name="fake-gemini")
        self.known_models = known_models
        self.api_key = api_key

    def reject(self, request: HttpRequest) -> tuple[int, str | None] | None:
        route = _route(request)
        if route is None:
            return 404, f"Method not found: {request.method} {request.path}"
        supplied = request.headers.get("x-goog-api-key") or request.query.get("key")
        if self.api_key is not None and supplied != self.api_key:
            return 400, "API key not valid. Please pass a valid API key."
        if route.model is not None and route.model not in self.known_models:
            return 404, (
                f"models/{route.model} is not found for API version {route.version}, or is not supported for "
                f"{route.method or 'get'}. Call ListModels to see the list of available models."
            )
        return None

    async def send_error(
        self, exchange: HttpExchange, status: int, message: str | None, retry_after: float | None
    ) -> None:
        error: dict[str, Any] = {
            "code": status,
            "message": message or _DEFAULT_MESSAGES.get(status, f"Fake error {status}."),
            "status": _STATUS_NAMES.get(status, "UNKNOWN"),
        }
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["retry-after"] = retry_after_value(retry_after)
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{retry_after_value(retry_after)}s",
                }
            ]
        if status == 400 and message and message.startswith("API key"):
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                }
            ]
        await exchange.respond_json(status, {"error": error}, headers)

    async def serve(self, request: HttpRequest, exchange: HttpExchange, fault: Fault) -> None:
        route = _route(request)
        assert route is not None  # reject() let it through
        if route.method == "streamGenerateContent":
            await self._stream(request, route, exchange, fault)
        elif route.method == "generateContent":
            await self._send_body(exchange, fault, self._generate_body(request, route, fault))
        elif route.model is not None:
            await self._send_body(exchange, fault, {} if fault.kind is FaultKind.EMPTY else _model_info(route.model))
        else:
            models = [] if fault.kind is FaultKind.EMPTY else [_model_info(m) for m in self.known_models]
            await self._send_body(exchange, fault, {"models": models})

    async def _send_body(self, exchange: HttpExchange, fault: Fault, payload: dict[str, Any]) -> None:
        await self.send_whole_json(exchange, fault, payload, _MALFORMED_BODY, "application/json; charset=UTF-8")

    def _generate_body(self, request: HttpRequest, route: _Route, fault: Fault) -> dict[str, Any]:
        text = self._text(fault)
        envelope = _reply_for(request, route).envelope(text)
        if fault.kind is FaultKind.SAFETY:
            return {**self._safety_chunk(fault), **envelope}
        if fault.kind is FaultKind.EMPTY and fault.no_candidates:
            return envelope
        return {"candidates": [self._candidate(text, "STOP")], **envelope}

    async def _stream(self, request: HttpRequest, route: _Route, exchange: HttpExchange, fault: Fault) -> None:
        await exchange.start(200, _SSE, {"cache-control": "no-cache"})
        frames = [_sse(chunk) for chunk in self._stream_chunks(request, route, fault)]
        if fault.kind is FaultKind.MALFORMED:
            frames = [*frames[: fault.after_chunks], b"data: " + _MALFORMED_BODY + b"\r\n\r\n"]
        await self.stream_pieces(exchange, frames, fault)

    def _stream_chunks(self, request: HttpRequest, route: _Route, fault: Fault) -> list[dict[str, Any]]:
        """The JSON objects of a stream: text pieces, then the finishReason and final usage on the last one."""
        text = self._text(fault)
        reply = _reply_for(request, route)
        if fault.kind is FaultKind.SAFETY and fault.prompt_blocked:
            return [{**self._safety_chunk(fault), **reply.envelope("")}]
        if fault.kind is FaultKind.EMPTY and fault.no_candidates:
            return [reply.envelope("")]
        pieces = split_text(text, self.chunks) or [""]
        chunks = [{"candidates": [self._candidate(piece, None)], **reply.envelope(None)} for piece in pieces]
        if fault.kind is FaultKind.SAFETY:
            last = self._safety_chunk(fault)
        else:
            last = {"candidates": [self._candidate(pieces[-1], "STOP")]}
        chunks[-1] = {**last, **reply.envelope(text)}
        return chunks

    @staticmethod
    def _candidate(text: str, finish_reason: str | None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        if finish_reason is not None:
            candidate["finishReason"] = finish_reason
        return candidate

    @staticmethod
    def _safety_chunk(fault: Fault) -> dict[str, Any]:
        if fault.prompt_blocked:
            return {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": _BLOCKED_RATING}}
        return {"candidates": [{"finishReason": "SAFETY", "index": 0, "safetyRatings": _BLOCKED_RATING}]}

    def _text(self, fault: Fault) -> str:
        return "" if fault.kind is FaultKind.EMPTY else (fault.text or self.reply_text)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\r\n\r\n"
