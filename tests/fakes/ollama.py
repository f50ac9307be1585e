"""A stand-in for an Ollama server, for driving the real `ollama` Python client (`ollama.AsyncClient(host=...)`).

Speaks Ollama's wire format: `/api/chat` as one JSON object or as NDJSON lines ending with a `done: true` line
carrying the counters, `/api/tags` for the model list, errors as `{"error": "..."}`. Ollama has no safety
filter, so `Fault.safety()` is served as an ordinary reply.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
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

DEFAULT_MODELS = ("phi3:latest",)
_NDJSON = "application/x-ndjson"
_JSON = "application/json; charset=utf-8"
_MALFORMED_LINE = b'{"model": "phi3:latest", "message": {"role": "assistant", "content": "cut off'
_DEFAULT_MESSAGES = {
    429: "too many requests",
    500: "llama runner process has terminated: exit status 2",
    503: "server busy, please try again.  maximum pending requests exceeded",
}
_ROUTES = {("POST", "/api/chat"), ("GET", "/api/tags"), ("GET", "/api/version"), ("GET", "/"), ("HEAD", "/")}


def _full_name(model: str) -> str:
    """Ollama treats "phi3" and "phi3:latest" as the same model."""
    return model if ":" in model else f"{model}:latest"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _tag(model: str) -> dict[str, Any]:
    family = model.split(":", 1)[0]
    return {
        "name": model,
        "model": model,
        "modified_at": "2025-01-01T00:00:00Z",
        "size": 2176178913,
        "digest": "a2c89ceaed85371d0b8a51b5cc70be054acfd8ac6ba5ef59e5d3c1d42e5b1e3e",
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": "3.8B",
            "quantization_level": "Q4_0",
        },
    }


def _prompt_tokens(body: dict[str, Any]) -> int:
    text = " ".join(str(m.get("content", "")) for m in body.get("messages", []) if isinstance(m, dict))
    return (len(text) + 3) // 4


class FakeOllama(ScriptedHttpServer):
    """Ollama fake: POST /api/chat (stream or not), GET /api/tags, GET /api/version, GET / ("Ollama is running").

    A chat for a model outside `models` gets Ollama's real 404 ("model ... not found, try pulling it first").
    """

    def __init__(
        self, reply_text: str = "Hello from fake Ollama.", port: int = 0, models: tuple[str, ...] = DEFAULT_MODELS
    ) -> None:
        super().__init__(reply_text, port=port, name="fake-ollama")
        self.models = models

    def reject(self, request: HttpRequest) -> tuple[int, str | None] | None:
        if (request.method, request.path) not in _ROUTES:
            return 404, "404 page not found"
        if request.path != "/api/chat":
            return None
        body = request.json_body
        if not isinstance(body, dict):
            return 400, "invalid request body"
        model = _full_name(str(body.get("model", "")))
        if model not in self.models:
            return 404, f'model "{body.get("model")}" not found, try pulling it first'
        return None

    async def send_error(
        self, exchange: HttpExchange, status: int, message: str | None, retry_after: float | None
    ) -> None:
        text = message or _DEFAULT_MESSAGES.get(status, f"fake error {status}")
        if text == "404 page not found":  # Ollama's router answers unknown paths in plain text
            await exchange.respond(404, text.encode(), "text/plain")
            return
        headers = {} if retry_after is None else {"retry-after": retry_after_value(retry_after)}
        await exchange.respond_json(status, {"error": text}, headers)

    async def serve(self, request: HttpRequest, exchange: HttpExchange, fault: Fault) -> None:
        if request.path == "/api/chat":
            body: dict[str, Any] = request.json_body
            if body.get("stream", True):
                await self._stream_chat(body, exchange, fault)
            else:
                await self._send_body(exchange, fault, self._final(body, self._text(fault), self._text(fault)))
        elif request.path == "/api/tags":
            models = [] if fault.kind is FaultKind.EMPTY else [_tag(m) for m in self.models]
            await self._send_body(exchange, fault, {"models": models})
        elif request.path == "/api/version":
            await self._send_body(exchange, fault, {"version": "0.6.8"})
        else:
            await exchange.respond(200, b"" if request.method == "HEAD" else b"Ollama is running", "text/plain")

    def _text(self, fault: Fault) -> str:
        return "" if fault.kind is FaultKind.EMPTY else (fault.text or self.reply_text)

    async def _send_body(self, exchange: HttpExchange, fault: Fault, payload: dict[str, Any]) -> None:
        await self.send_whole_json(exchange, fault, payload, _MALFORMED_LINE, _JSON)

    async def _stream_chat(self, body: dict[str, Any], exchange: HttpExchange, fault: Fault) -> None:
        await exchange.start(200, _NDJSON)
        text = self._text(fault)
        lines = [self._chunk(body, piece) for piece in split_text(text, self.chunks)]
        lines.append(self._final(body, "", text))
        frames = [json.dumps(line).encode() + b"\n" for line in lines]
        if fault.kind is FaultKind.MALFORMED:
            frames = [*frames[: fault.after_chunks], _MALFORMED_LINE + b"\n"]
        await self.stream_pieces(exchange, frames, fault)

    @staticmethod
    def _chunk(body: dict[str, Any], piece: str) -> dict[str, Any]:
        return {
            "model": body.get("model"),
            "created_at": _now(),
            "message": {"role": "assistant", "content": piece},
            "done": False,
        }

    @staticmethod
    def _final(body: dict[str, Any], content: str, full_text: str) -> dict[str, Any]:
        """The closing object: Ollama puts done_reason and the token counters (and durations, in ns) only here."""
        eval_count = (len(full_text) + 3) // 4
        return {
            "model": body.get("model"),
            "created_at": _now(),
            "message": {"role": "assistant", "content": content},
            "done_reason": "stop",
            "done": True,
            "total_duration": 1_500_000,
            "load_duration": 100_000,
            "prompt_eval_count": _prompt_tokens(body),
            "prompt_eval_duration": 400_000,
            "eval_count": eval_count,
            "eval_duration": 1_000_000,
        }
