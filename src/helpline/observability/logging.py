"""structlog set-up: JSON in production, key=value on a terminal; request_id bound per request; PII redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

# Personal data must not reach the logs. These patterns catch the common shapes; redaction is best-effort
# by design and runs on every string value of every event.
_PII_PATTERNS = (
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[email]"),
    (re.compile(r"\b(?:\d[ -]?){13,19}\b"), "[card]"),
    (re.compile(r"(?<!\w)\+?\d[\d ()-]{7,}\d\b"), "[phone]"),
)
SENSITIVE_KEYS = frozenset({"authorization", "api_key", "admin_token", "password", "token", "cookie"})


def redact_text(text: str) -> str:
    for pattern, replacement in _PII_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if key.lower() in SENSITIVE_KEYS:
            event[key] = "[redacted]"
        elif isinstance(value, str):
            event[key] = redact_text(value)
    return event


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of the write, not when logging was configured.

    Anything that swaps stderr (test capture, a supervisor redirecting it) would otherwise leave the logger
    writing to a stale, possibly closed, stream.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _orjson_dumps(data: Any, default: Any) -> str:
    return orjson.dumps(data, default=default).decode()


def configure_logging(level: str = "INFO", json_logs: bool | None = None) -> None:
    """Idempotent: called by the app factory and the CLI."""
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping().get(level.upper(), 20)),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
