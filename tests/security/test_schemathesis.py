"""Property-based fuzzing of our OpenAPI with schemathesis: no 500s, only documented statuses, bodies as declared.

Against a real `helpline serve` process (one worker, embedded SQLite, sample knowledge not loaded), so every
middleware (body limit, CSRF, CORS, rate limits, security headers) is in the path exactly as in production. Limits
are raised so the generated requests reach the handlers; the 429 path is covered in tests/ratelimit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.core.result import Err
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import positive_data_acceptance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from helpline.app import create_app
from tests.conftest import make_settings
from tests.fakes.servers import free_port

EXAMPLES_PER_OPERATION = 100
Operation = APIOperation[Any, Any, Any, Any]
AnyCase = Case[Any]
ADMIN_TOKEN = "schemathesis-admin-token-0123456789"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp_path = tmp_path_factory.mktemp("schemathesis")
    env = {key: value for key, value in os.environ.items() if not key.startswith("HELPLINE_")}
    env.update(
        {
            "HELPLINE_ENV": "test",
            "HELPLINE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'helpline.db'}",
            "HELPLINE_PROVIDERS": "extractive",
            "HELPLINE_KB_LOAD_SAMPLE_WHEN_EMPTY": "false",
            "HELPLINE_RATE_LIMIT_IP": "100000/minute",
            "HELPLINE_RATE_LIMIT_SESSION": "100000/minute",
            "HELPLINE_ADMIN_TOKEN": ADMIN_TOKEN,
            "HELPLINE_LOG_LEVEL": "WARNING",
        }
    )
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "helpline", "serve", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, process, log)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        assert "unhandled_error" not in log.read_text(), log.read_text()[-3000:]


def _wait_ready(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("server did not start: " + log.read_text()[-3000:])


# Our refusals of malformed input: schemathesis's defaults plus 413 (a generated body over MAX_BODY_BYTES).
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
            }
        }
    }
)


def _schema() -> OpenApiSchema:
    """Our OpenAPI as ``create_app`` with the test settings publishes it (no lifespan needed to render it)."""
    app = create_app(make_settings("sqlite+aiosqlite:///:memory:"))
    return schemathesis.openapi.from_dict(app.openapi(), config=CONFIG)


def _operations() -> list[Operation]:
    operations: list[Operation] = []
    for result in _schema().get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operations.append(result.ok())
    return operations


OPERATIONS = _operations()
CASES = [
    pytest.param(operation, mode, id=f"{operation.label} {mode}")
    for operation in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    # Negative data needs something that can be broken; free-form strings in paths cannot.
    if mode is GenerationMode.POSITIVE or operation.body
]


def _answer_as_json(case: AnyCase) -> AnyCase:
    """Positive chat cases ask for the JSON answer: the SSE variant is checked by its own test below."""
    if isinstance(case.body, dict):
        case.body["stream"] = False
    return case


@pytest.mark.parametrize(("operation", "mode"), CASES)
def test_no_server_errors_and_only_documented_statuses(served: str, operation: Operation, mode: GenerationMode) -> None:
    """All of schemathesis's response checks except ``positive_data_acceptance``: the schema cannot say "not blank
    after trimming" (a 422 for ``"   "``), so that one check would only restate a known imprecision."""
    # Admin operations are fuzzed as the operator, so their handlers are reached too (auth is tested elsewhere).
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if operation.path.startswith("/v1/admin") else None
    strategy = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE and operation.label == "POST /v1/chat":
        strategy = strategy.map(_answer_as_json)

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,  # no .hypothesis/ directory in the repository
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: AnyCase) -> None:
        case.call_and_validate(base_url=served, headers=headers, excluded_checks=[positive_data_acceptance])

    fuzz()


def test_streamed_chat_matches_its_documentation(served: str) -> None:
    operation = next(operation for operation in OPERATIONS if operation.label == "POST /v1/chat")
    case = operation.Case(
        body={"message": "How long does delivery take?", "stream": True}, media_type="application/json"
    )
    case.call_and_validate(base_url=served, excluded_checks=[positive_data_acceptance])


def test_every_operation_is_fuzzed() -> None:
    labels = {operation.label for operation in OPERATIONS}
    assert {"POST /v1/chat", "GET /v1/sessions/{session_id}/messages", "GET /v1/admin/stats"} <= labels
