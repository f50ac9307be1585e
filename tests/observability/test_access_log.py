"""The request summary line: JSON fields from the middleware and the annotations, PII redacted, no traces out."""

from __future__ import annotations

import datetime
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import structlog
from fastapi import FastAPI

from helpline.api.errors import install_error_handlers
from helpline.api.middleware import RequestIdMiddleware
from helpline.observability import logging as logging_module
from helpline.observability.access import AccessLogMiddleware
from helpline.observability.context import annotate, request_fields, request_scope
from helpline.observability.logging import configure_logging, log_line, uvicorn_log_config
from tests.conftest import Api


def json_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


def summaries(text: str) -> list[dict[str, Any]]:
    return [line for line in json_lines(text) if line.get("event") == "request"]


def capture_logs(capsys: pytest.CaptureFixture[str]) -> None:
    """Point JSON logging at this test's captured stderr (the logger keeps the stream it was configured with,
    and an async fixture's capture stream is closed by the time the test runs)."""
    configure_logging("INFO", json_logs=True)
    capsys.readouterr()


async def test_chat_summary_line_has_route_status_latency_and_annotations(
    gemini_api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    capture_logs(capsys)
    response = await gemini_api.client.post(
        "/v1/chat", json={"message": "How long does delivery take?"}, headers={"X-Request-ID": "req-log-1"}
    )
    assert response.status_code == 200
    err = capsys.readouterr().err
    [line] = summaries(err)
    assert line["level"] == "info"
    assert line["method"] == "POST"
    assert line["route"] == "/v1/chat"
    assert line["status"] == 200
    assert line["request_id"] == "req-log-1"
    assert 0 < line["latency_ms"] < 30_000
    assert line["provider"] == "gemini"
    assert line["model"] == "gemini-test"
    assert line["cache"] == "miss"
    assert line["action"] == "answer"
    assert line["tokens_in"] > 0
    assert line["tokens_out"] > 0
    assert line["cost_usd"] > 0
    # Every line logged while serving the request carries its id.
    answered = [entry for entry in json_lines(err) if entry.get("event") == "chat_answered"]
    assert answered
    assert all(entry["request_id"] == "req-log-1" for entry in answered)


async def test_session_route_is_logged_as_its_template_never_the_session_id(
    gemini_api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    session_id = (await gemini_api.client.post("/v1/chat", json={"message": "Do you have bananas?"})).json()[
        "session_id"
    ]
    capture_logs(capsys)
    response = await gemini_api.client.get(f"/v1/sessions/{session_id}/messages")
    assert response.status_code == 200
    err = capsys.readouterr().err
    [line] = summaries(err)
    assert line["route"] == "/v1/sessions/{session_id}/messages"
    assert session_id not in err


async def test_refused_requests_are_logged_under_their_route(
    gemini_api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    capture_logs(capsys)
    too_big = await gemini_api.client.post(
        "/v1/chat", content=b"{" + b" " * 70_000 + b"}", headers={"content-type": "application/json"}
    )
    unknown = await gemini_api.client.get("/no/such/page/secret-looking-123")
    assert (too_big.status_code, unknown.status_code) == (413, 404)
    lines = summaries(capsys.readouterr().err)
    assert [(line["route"], line["status"]) for line in lines] == [("/v1/chat", 413), ("unmatched", 404)]


def tiny_app() -> FastAPI:
    """Only our middleware and error handlers around two routes: one annotates PII, one crashes."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/pii")
    async def pii() -> dict[str, str]:
        annotate(note="reach jane.doe@example.com or +44 20 7946 0958", api_key="sk-live-123")
        return {"ok": "yes"}

    @app.get("/crash")
    async def crash() -> dict[str, str]:
        annotate(provider="ollama")
        raise RuntimeError("database password is hunter2")

    @app.get("/crash-with-pii")
    async def crash_with_pii() -> dict[str, str]:  # as a database error quotes the row it could not write
        raise RuntimeError(
            "[parameters: ('reach jane.doe@example.com or +44 20 7946 0958', 'paid by 4111 1111 1111 1111')]"
        )

    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app


async def call(app: FastAPI, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get(path)


async def test_annotations_are_redacted_like_every_log_field(capsys: pytest.CaptureFixture[str]) -> None:
    capture_logs(capsys)
    response = await call(tiny_app(), "/pii")
    assert response.status_code == 200
    [line] = summaries(capsys.readouterr().err)
    assert line["note"] == "reach [email] or [phone]"
    assert line["api_key"] == "[redacted]"


async def test_a_crash_is_a_plain_500_outside_and_a_stack_trace_only_in_the_server_log(
    capsys: pytest.CaptureFixture[str],
) -> None:
    capture_logs(capsys)
    response = await call(tiny_app(), "/crash")
    assert response.status_code == 500
    body = response.json()
    assert body["error"]["code"] == "internal_error"
    assert body["error"]["request_id"]
    assert response.headers["x-request-id"] == body["error"]["request_id"]
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    err = capsys.readouterr().err
    [line] = summaries(err)
    assert (line["status"], line["level"], line["error"], line["provider"]) == (500, "error", "RuntimeError", "ollama")
    assert line["request_id"]
    traced = [entry for entry in json_lines(err) if entry.get("event") == "unhandled_error"]
    assert traced
    assert "Traceback" in traced[0]["exception"]


async def test_a_stack_trace_in_the_server_log_is_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    """An error's text may quote what a shopper wrote (a database error quotes the parameters of the row it could
    not write): the stack trace is written after every other field was redacted, and was written as it was."""
    capture_logs(capsys)
    response = await call(tiny_app(), "/crash-with-pii")
    assert response.status_code == 500
    [traced] = [entry for entry in json_lines(capsys.readouterr().err) if entry.get("event") == "unhandled_error"]
    assert "Traceback" in traced["exception"]
    for said in ("jane.doe@example.com", "7946 0958", "4111 1111 1111 1111"):
        assert said not in traced["exception"]
    assert "[email]" in traced["exception"]


def test_uvicorns_own_stack_traces_are_text_and_redacted() -> None:
    """uvicorn logs an application's crash through the standard library, formatted by the configuration the server
    is given: its stack trace was written as the exception's repr (with what the error quoted, unredacted)."""
    config = uvicorn_log_config("INFO", json_logs=True)["formatters"]["helpline"]
    formatter = structlog.stdlib.ProcessorFormatter(**{key: value for key, value in config.items() if key != "()"})

    def write_the_row() -> None:  # as a database error quotes the parameters of the row it could not write
        raise RuntimeError("[parameters: ('reach jane.doe@example.com', 'paid by 4111 1111 1111 1111')]")

    try:
        write_the_row()
    except RuntimeError:
        record = logging.getLogger("uvicorn.error").makeRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application", (), sys.exc_info()
        )
    line = orjson.loads(formatter.format(record))
    assert line["event"] == "Exception in ASGI application"
    assert "Traceback" in line["exception"]
    assert "jane.doe@example.com" not in line["exception"]
    assert "4111 1111 1111 1111" not in line["exception"]
    assert "exc_info" not in line


def test_annotate_outside_a_request_is_a_no_op() -> None:
    annotate(provider="gemini")
    assert request_fields() == {}
    with request_scope() as fields:
        annotate(provider="gemini", tokens_in=3)
        annotate(tokens_in=5)
        assert request_fields() == {"provider": "gemini", "tokens_in": 5}
    assert fields == {"provider": "gemini", "tokens_in": 5}
    assert request_fields() == {}


def test_the_summary_path_writes_the_line_structlog_writes(capsys: pytest.CaptureFixture[str]) -> None:
    """log_line (the summary's lean path) and structlog's chain: the same keys, order, values and redaction."""
    capture_logs(capsys)
    logger = structlog.get_logger("helpline.access")
    fields = {
        "method": "POST", "route": "/v1/chat", "status": 200, "latency_ms": 1.5, "request_id": "req-1",
        "cache": "exact", "note": "mail jane.doe@example.com", "api_key": "sk-live-1", "tokens_in": 3,
        "odd": Path("/x"),
    }  # fmt: skip
    log_line(logger, "info", "request", dict(fields))
    logger.info("request", **fields)
    log_line(logger, "debug", "request", dict(fields))  # below INFO: nothing
    lean, chain = json_lines(capsys.readouterr().err)  # exactly two lines
    for line in (lean, chain):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", line.pop("timestamp"))
    assert list(lean.items()) == list(chain.items())
    assert (lean["note"], lean["api_key"], lean["level"]) == ("mail [email]", "[redacted]", "info")


def test_the_summary_timestamp_is_datetimes_isoformat(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lean path formats the date and time once a second; the text must be what isoformat writes, whether the
    second is formatted afresh or taken from the memo (the calls run in this order, from an empty memo)."""
    monkeypatch.setattr(logging_module._Second, "formatted", (-1, ""))
    for ns in (
        1_796_000_000_123_456_789,  # afresh; microseconds truncated, as datetime.now truncates them
        1_796_000_000_000_000_000,  # the same second from the memo, on the second: isoformat leaves the fraction out
        1_796_000_000_999_999_999,  # the same second's last microsecond, from the memo
        1_796_000_001_000_001_000,  # the next second: the memo is renewed
        1_796_086_400_500_000_000,  # a day later
    ):
        monkeypatch.setattr(time, "time_ns", lambda ns=ns: ns)  # the module reads time.time_ns at each call
        expected = datetime.datetime.fromtimestamp(ns // 1000 / 1_000_000, datetime.UTC)
        assert expected.microsecond == ns // 1000 % 1_000_000  # the reference itself is exact here
        assert logging_module._utc_now_iso() == expected.isoformat().replace("+00:00", "Z"), ns


def test_the_summary_path_hands_over_to_structlog_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG", json_logs=False)
    try:
        capsys.readouterr()
        log_line(structlog.get_logger("helpline.access"), "debug", "request", {"route": "/healthz", "status": 200})
        err = capsys.readouterr().err
        assert "route=/healthz" in err
        assert not err.startswith("{")
    finally:
        configure_logging("INFO", json_logs=True)
