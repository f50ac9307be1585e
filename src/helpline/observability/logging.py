"""structlog set-up: JSON in production, key=value on a terminal; request_id bound per request; PII redacted."""

from __future__ import annotations

import datetime
import logging
import re
import sys
import time
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
# Fields whose values we produce ourselves (names, ids, enums): never personal data, not worth three regexes each
# on every request's summary line.
OWN_KEYS = frozenset(
    {"event", "level", "timestamp", "logger", "method", "route", "request_id", "provider", "model", "cache", "action"}
)


def redact_text(text: str) -> str:
    for pattern, replacement in _PII_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


_OWN, _SENSITIVE, _OTHER = 0, 1, 2
_KINDS: dict[str, int] = {}
_MAX_KINDS = 4096


def _classify(key: str) -> int:
    """What a field's key says about its value (own, sensitive, other), remembered in ``_KINDS`` (which ``_redact``
    reads first): the same few keys come on every line, and the check was a third of a line's redaction. Bounded:
    past the bound keys are classified afresh."""
    kind = _OWN if key in OWN_KEYS else _SENSITIVE if key.lower() in SENSITIVE_KEYS else _OTHER
    if len(_KINDS) < _MAX_KINDS:
        _KINDS[key] = kind
    return kind


def _redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        kind = _KINDS.get(key)
        if kind is None:
            kind = _classify(key)
        if kind == _OWN:
            continue
        if kind == _SENSITIVE:
            event[key] = "[redacted]"
        elif kind == _OTHER and isinstance(value, str):
            event[key] = redact_text(value)
    return event


def _redact_exception(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The stack trace, formatted after :func:`_redact` ran: an error's text may quote what a shopper wrote (a
    database error quotes the parameters of the row it could not write)."""
    trace = event.get("exception")
    if isinstance(trace, str):
        event["exception"] = redact_text(trace)
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


_LEVELS = logging.getLevelNamesMapping()
_STDERR = _CurrentStderr()


class _Output:
    """What :func:`configure_logging` last set: the lowest level written, and whether lines are JSON."""

    level = logging.INFO
    json = True


class _Second:
    """The last second a line was written in, and its date and time formatted (one tuple: threads swap it whole)."""

    formatted: tuple[int, str] = (-1, "")


def _utc_now_iso() -> str:
    """The timestamp structlog's ``TimeStamper(fmt="iso", utc=True)`` writes (``datetime.isoformat``: microseconds
    unless they are zero), with the date and time formatted once a second: ``datetime.isoformat`` was a fifth of
    a summary line's cost (callgrind)."""
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    at, text = _Second.formatted
    if seconds != at:
        text = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _Second.formatted = (seconds, text)
    return f"{text}.{micros:06d}Z" if micros else f"{text}Z"


def log_line(logger: Any, method: str, event: str, fields: dict[str, Any]) -> None:
    """``logger.<method>(event, **fields)``, rendered without structlog's generic chain when lines are JSON.

    For the one line every request writes (the access summary): through structlog's proxy, processors and
    renderer it cost about 20 µs, a tenth of a cached answer's CPU in process; this writes the same line (the
    same keys in the same order, redacted alike, the same timestamp format, one write) in about 4. It merges no
    bound context variables: the summary carries its request id (the only one we bind) among its fields. On a
    terminal (key=value lines) it hands over to structlog."""
    if _LEVELS[method.upper()] < _Output.level:
        return
    if not _Output.json:
        getattr(logger, method)(event, **fields)
        return
    line = {**fields, "event": event, "level": method, "timestamp": _utc_now_iso()}
    _redact(None, method, line)
    _STDERR.write(orjson.dumps(line, default=repr).decode() + "\n")


def _renderer(json_logs: bool) -> structlog.typing.Processor:
    if json_logs:
        return structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    return structlog.dev.ConsoleRenderer(colors=False)


def _shared_processors() -> list[structlog.typing.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]


def configure_logging(level: str = "INFO", json_logs: bool | None = None) -> None:
    """Idempotent: called by the app factory and the CLI."""
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    shared = _shared_processors()
    renderer = _renderer(json_logs)
    _Output.level = _LEVELS.get(level.upper(), logging.INFO)
    _Output.json = json_logs
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, _redact_exception, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_Output.level),
        # WriteLogger writes each line and its newline in ONE write; PrintLogger's print() wrote them apart, and two
        # workers sharing one stderr then interleaved two JSON lines on one line (seen in CI).
        logger_factory=structlog.WriteLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def uvicorn_log_config(level: str = "INFO", json_logs: bool | None = None) -> dict[str, Any]:
    """uvicorn's own lines (start, stop, its errors) in our format, so a JSON log stream stays parseable.

    Its per-request access lines are switched off: ``observability.access`` writes one structured summary line per
    request instead. Passed to ``uvicorn.run(log_config=...)``; each worker process applies it.
    """
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "helpline": {
                "()": structlog.stdlib.ProcessorFormatter,
                "foreign_pre_chain": _shared_processors(),
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,  # a stack trace as text (it was the exception's repr) ...
                    _redact_exception,  # ... redacted, as in our own lines
                    _renderer(json_logs),
                ],
            }
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "helpline", "stream": "ext://sys.stderr"}
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def json_logs_for(env: str, log_json: bool | None) -> bool | None:
    """HELPLINE_LOG_JSON when set; else JSON in production and auto-detect (terminal or not) elsewhere."""
    if log_json is not None:
        return log_json
    return True if env == "production" else None
