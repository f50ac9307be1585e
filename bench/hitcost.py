"""What a cached answer costs in process, against `/healthz`: the app driven over raw ASGI, without a server.

Run: `.venv/bin/python -m bench.hitcost`. The same app bench.cache serves (embedded, then Redis), its start-up heap
frozen as `helpline serve` does, called by 32 concurrent tasks; each round measures the event loop's thread CPU
per request for `GET /healthz` and for `POST /v1/chat` answered from the cache, alternating, ROUNDS rounds,
medians. Without uvicorn, wrk and the sockets, it moves less with a noisy neighbour than bench.cache, so it is the
instrument for a change of a few per cent to a hit's cost; bench.cache remains the end-to-end figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from prometheus_client import REGISTRY
from tests.conftest import SAMPLE_KB
from tests.fakes.gemini import FakeGemini

from bench.cache import QUESTION, REPLY, Setup, setups
from bench.common import ROOT

TASKS = 32
REQUESTS = 6400  # per round and endpoint
ROUNDS = 7
BODY = f'{{"message": "{QUESTION}"}}'.encode()


def _scope(method: str, path: str, body: bytes) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip


async def call(app: Any, method: str, path: str, body: bytes = b"") -> int:
    """One request through the whole ASGI app (every middleware); its status."""
    delivered = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never goes away
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(_scope(method, path, body), receive, send)
    return status


async def cpu_per_request(app: Any, method: str, path: str, body: bytes = b"") -> float:
    """µs of this thread's CPU per request, TASKS requests at a time; every answer must be a 200."""

    async def client() -> None:
        for _ in range(REQUESTS // TASKS):
            status = await call(app, method, path, body)
            assert status == 200, (path, status)

    started = time.thread_time()
    await asyncio.gather(*(client() for _ in range(TASKS)))
    await asyncio.sleep(0.05)  # the conversation writer's batch for this round runs on this loop too
    return (time.thread_time() - started) / REQUESTS * 1e6


def exact_hits() -> float:
    """Replies answered from the exact cache tier so far, as the app counts them for /metrics."""
    return REGISTRY.get_sample_value("helpline_cache_lookups_total", {"tier": "exact"}) or 0.0


async def measure(setup: Setup) -> dict[str, list[float]]:
    os.environ.update(setup.env)
    from helpline.app import create_app  # noqa: PLC0415 - after the environment is set
    from helpline.config import Settings  # noqa: PLC0415

    app = create_app(Settings())
    results: dict[str, list[float]] = {"healthz": [], "hit": []}
    async with app.router.lifespan_context(app):
        first = await call(app, "POST", "/v1/chat", BODY)  # the miss that fills the cache
        assert first == 200
        gc.collect()
        gc.freeze()  # as `helpline serve` does after its start-up
        for _ in range(ROUNDS):
            results["healthz"].append(await cpu_per_request(app, "GET", "/healthz"))
            before = exact_hits()
            results["hit"].append(await cpu_per_request(app, "POST", "/v1/chat", BODY))
            # Every one a hit: a store call that timed out bypasses the cache and turns hits into provider calls,
            # which would be measured as hits (session 16 found 291 in one run).
            assert exact_hits() - before == REQUESTS, (setup.name, exact_hits() - before)
        gc.unfreeze()
    for key in setup.env:
        os.environ.pop(key, None)
    return results


def main() -> None:
    rows: list[tuple[str, float, float]] = []
    # The app's log lines go where bench.cache's server sends them: nowhere (a terminal would cost more than a hit).
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeGemini(reply_text=REPLY) as gemini,
        open(os.devnull, "w", encoding="utf-8") as devnull,
        contextlib.redirect_stderr(devnull),
    ):
        os.environ["HELPLINE_KB_SAMPLE_PATH"] = str(SAMPLE_KB)
        for number, setup in enumerate(setups(gemini.base_url)):
            workdir = Path(tmp, f"setup{number}")
            workdir.mkdir()
            os.chdir(workdir)  # the embedded SQLite store of this setup lands here
            found = uvloop.run(measure(setup))
            rows.append((setup.name, statistics.median(found["healthz"]), statistics.median(found["hit"])))
        os.chdir(ROOT)
    print(f"In process: {TASKS} concurrent tasks, {REQUESTS} requests per round and endpoint, {ROUNDS} alternating")
    print("rounds, medians of the event loop thread's CPU per request (µs)")
    print("| setup | `GET /healthz` | `POST /v1/chat`, exact hit | hit ÷ `/healthz` | `/healthz` ÷ hit |")
    print("|---|---|---|---|---|")
    for name, health, hit in rows:
        print(f"| {name} | {health:.0f} | {hit:.0f} | {hit / health:.2f} | {health / hit:.2f} |")


if __name__ == "__main__":
    main()
