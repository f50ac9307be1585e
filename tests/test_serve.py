"""`helpline serve` as `make run` starts it: a real server process on a free port, embedded defaults."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import SAMPLE_KB
from tests.fakes.servers import free_port


@contextmanager
def serving(
    workdir: Path, extra_env: dict[str, str] | None = None, *, quiet: bool = False
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`helpline serve` on a free port in ``workdir``, ready; ``quiet`` discards its output (long benchmarks
    would otherwise fill the pipes and stall it)."""
    output = subprocess.DEVNULL if quiet else subprocess.PIPE
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELPLINE_")}
    env["HELPLINE_KB_SAMPLE_PATH"] = str(SAMPLE_KB)
    env.update(extra_env or {})
    process = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "helpline", "serve", "--port", str(port)],
        cwd=workdir, env=env, stdout=output, stderr=output, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1]
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise AssertionError("server did not become ready")
        yield base, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_embedded_server_answers_from_the_sample_store(tmp_path: Path) -> None:
    with serving(tmp_path) as (base, process):
        delivery = httpx.post(f"{base}/v1/chat", json={"message": "How long does delivery take?"}, timeout=30).json()
        assert delivery["citations"][0]["id"] == "policy-delivery.delivery-times"
        bananas = httpx.post(f"{base}/v1/chat", json={"message": "Do you have bananas?"}, timeout=30).json()
        assert "banana" in bananas["citations"][0]["title"].lower()
        swallow = httpx.post(f"{base}/v1/chat", json={"message": "what is the airspeed of a swallow"}, timeout=30)
        assert swallow.json()["action"] == "handoff"
    first_stderr = process.stderr.read() if process.stderr else ""
    assert "admin token (shown once" in first_stderr
    assert (tmp_path / "var" / "helpline.db").exists()
    # Second start: the database and knowledge are kept, the admin token is not printed again.
    with serving(tmp_path) as (base, process):
        assert httpx.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
    second_stderr = process.stderr.read() if process.stderr else ""
    assert "admin token" not in second_stderr
    assert "sample_kb_loaded" not in second_stderr
