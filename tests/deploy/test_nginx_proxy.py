"""deploy/nginx.conf really proxies as promised: run it (on loopback) in front of a stub upstream.

`nginx -t` proves the syntax; this proves the behaviour the app relies on: the client address appended to
X-Forwarded-For (what the limiter reads), server-sent events passed on as they are written (not buffered until
the reply ends), bodies over 64 KiB refused before the app, and /metrics not served to the internet.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.deploy.server import free_port
from tests.deploy.test_validators import nginx_test_copy, tool

EVENT_GAP_S = 0.6


class StubApp(BaseHTTPRequestHandler):
    """Echoes the proxy headers on GET; streams three SSE events with pauses on POST /v1/chat."""

    def do_GET(self) -> None:
        body = json.dumps({name.lower(): value for name, value in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        for index in range(3):
            self.wfile.write(f"event: delta\ndata: {index}\n\n".encode())
            self.wfile.flush()
            time.sleep(EVENT_GAP_S)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[str]:
    """nginx with deploy/nginx.conf on a free loopback port, its upstream the stub on another."""
    upstream = ThreadingHTTPServer(("127.0.0.1", free_port()), StubApp)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    conf = nginx_test_copy(tmp_path, "blue")
    (tmp_path / "live.conf").write_text(
        (tmp_path / "live.conf").read_text().replace("127.0.0.1:8000", f"127.0.0.1:{upstream.server_port}")
    )
    port = free_port()
    conf.write_text(conf.read_text().replace("listen 80 default_server;", f"listen 127.0.0.1:{port};"))
    process = subprocess.Popen(  # noqa: S603 - nginx on a temporary copy of our config
        [tool("nginx"), "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{base}/nginx-health", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                time.sleep(0.05)
        yield base
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful stop
        process.wait(timeout=10)
        upstream.shutdown()
        upstream.server_close()


def test_client_address_is_appended_to_x_forwarded_for(proxy: str) -> None:
    spoofed = httpx.get(f"{proxy}/anything", headers={"X-Forwarded-For": "6.6.6.6"}, timeout=5).json()
    # The limiter reads from the right, so the spoofed entry is never taken for the client.
    assert spoofed["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"
    plain = httpx.get(f"{proxy}/anything", timeout=5).json()
    assert plain["x-forwarded-for"] == "127.0.0.1"
    assert len(plain["x-request-id"]) == 32  # nginx makes one when the client sent none
    kept = httpx.get(f"{proxy}/anything", headers={"X-Request-ID": "client-id-1"}, timeout=5).json()
    assert kept["x-request-id"] == "client-id-1"


def test_chat_events_arrive_as_they_are_written(proxy: str) -> None:
    started = time.monotonic()
    arrivals = []
    with httpx.stream("POST", f"{proxy}/v1/chat", json={"message": "hi", "stream": True}, timeout=10) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 3
    assert arrivals[0] < EVENT_GAP_S  # the first event did not wait for the reply to end
    assert arrivals[2] - arrivals[0] >= EVENT_GAP_S


def test_oversized_bodies_and_metrics_stop_at_nginx(proxy: str) -> None:
    big = httpx.post(f"{proxy}/v1/chat", content=b"x" * (64 * 1024 + 1), timeout=5)
    assert big.status_code == 413
    assert httpx.get(f"{proxy}/metrics", timeout=5).status_code == 404
