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

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import positive_data_acceptance

from helpline.app import create_app
from tests.conftest import make_settings
from tests.fakes.servers import free_port

EXAMPLES_PER_OPERATION = 40
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


def _operations() -> list[APIOperation]:
    """Our OpenAPI as ``create_app`` with the test settings publishes it (no lifespan needed to render it)."""
    app = create_app(make_settings("sqlite+aiosqlite:///:memory:"))
    schema = schemathesis.openapi.from_dict(app.openapi())
    return [result.ok() for result in schema.get_all_operations()]


OPERATIONS = _operations()
CASES = [
    pytest.param(operation, mode, id=f"{operation.label} {mode}")
    for operation in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    # Negative data needs something to break: a body or a parameter.
    if mode is GenerationMode.POSITIVE or operation.body or len(operation.path_parameters) or len(operation.query)
]


@pytest.mark.parametrize(("operation", "mode"), CASES)
def test_no_server_errors_and_only_documented_statuses(
    served: str, operation: APIOperation, mode: GenerationMode
) -> None:
    """All of schemathesis's response checks except ``positive_data_acceptance``: the schema cannot say "not blank
    after trimming" (a 422 for ``"   "``), so that one check would only restate a known imprecision."""
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,  # no .hypothesis/ directory in the repository
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Case) -> None:
        case.call_and_validate(base_url=served, excluded_checks=[positive_data_acceptance])

    fuzz()


def test_every_operation_is_fuzzed() -> None:
    labels = {operation.label for operation in OPERATIONS}
    assert {"POST /v1/chat", "GET /v1/sessions/{session_id}/messages", "GET /v1/admin/stats"} <= labels
