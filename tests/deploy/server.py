"""Start ``python -m helpline serve`` as a real process (as `make run` and the container do) for system tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import SAMPLE_KB

# Load tests send many requests from one address, and no LLM runs here: the limiter and the provider chain are
# not what these tests are about.
QUIET_DEFAULTS = {
    "HELPLINE_PROVIDERS": "extractive",
    "HELPLINE_RATE_LIMIT_IP": "1000000/minute",
    "HELPLINE_RATE_LIMIT_USER": "1000000/minute",
    "HELPLINE_RATE_LIMIT_SESSION": "1000000/minute",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(base: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


@contextmanager
def serving(
    workdir: Path, *args: str, env: dict[str, str] | None = None, ready_timeout_s: float = 50
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The server on a free port with embedded defaults in ``workdir``; stderr goes to ``workdir/server.log``.

    On exit the process is stopped with SIGTERM (if still running) and waited for.
    """
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HELPLINE_", "PROMETHEUS_"))}
    clean.update({"HELPLINE_KB_SAMPLE_PATH": str(SAMPLE_KB), **QUIET_DEFAULTS, **(env or {})})
    with (workdir / "server.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "helpline", "serve", "--port", str(port), *args],
            cwd=workdir, env=clean, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_ready(f"http://127.0.0.1:{port}", process, ready_timeout_s)
            yield f"http://127.0.0.1:{port}", process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc, no psutil needed)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children
