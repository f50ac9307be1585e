"""`/v1/chat` (embedded defaults, extractive answers, SQLite writes) throughput against `/healthz`, same run.

Run: `make bench` or `.venv/bin/python -m bench.http`. One server worker; the load generator runs in this process.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from bench.common import LoadResult, load, server

CONCURRENCY = 16
SECONDS = 8.0


def row(name: str, result: LoadResult) -> str:
    return f"| {name} | {result.rps:.0f} | {result.p50:.1f} | {result.p99:.1f} | {result.errors} |"


async def run(base: str) -> None:
    await load(base, "GET", "/healthz", concurrency=4, seconds=1.0)  # warm-up
    health = await load(base, "GET", "/healthz", concurrency=CONCURRENCY, seconds=SECONDS)
    chat = await load(
        base, "POST", "/v1/chat", json={"message": "How long does delivery take?"}, concurrency=CONCURRENCY,
        seconds=SECONDS,
    )  # fmt: skip
    print(f"{CONCURRENCY} concurrent clients, {SECONDS:.0f} s each, one worker")
    print("| endpoint | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|")
    print(row("GET /healthz (baseline)", health))
    print(row("POST /v1/chat (miss: embed + retrieve + answer + store)", chat))
    print(f"ratio chat/healthz throughput: {chat.rps / health.rps:.3f}")


def main() -> None:
    limits_off = {"HELPLINE_RATE_LIMIT_IP": "1000000/second", "HELPLINE_RATE_LIMIT_SESSION": "1000000/second"}
    with tempfile.TemporaryDirectory() as tmp, server(Path(tmp), limits_off) as base:
        asyncio.run(run(base))


if __name__ == "__main__":
    main()
