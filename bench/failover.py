"""Failover under injected faults, and the gateway's overhead on a miss, against stand-in Gemini/Ollama servers.

Run: `.venv/bin/python -m bench.failover`. The app runs in-process (httpx ASGI transport) on a temporary SQLite
database; the providers are the real google-genai and ollama SDKs aimed at the stand-ins of tests/fakes.
"Added latency" is each fault's latency minus the no-fault latency measured in the same run; breakers and
cooldowns are reset before each fault, so "first request" pays the full cost (e.g. the first-token deadline) and
later requests show what the breaker saves.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
from google import genai
from google.genai import types
from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.fakes.servers import Fault

from bench.common import ROOT, percentile
from helpline.app import create_app
from helpline.config import Settings
from helpline.knowledge.embeddings import Embedder
from helpline.providers.base import Provider
from helpline.providers.extractive import ExtractiveProvider
from helpline.providers.gemini import GeminiProvider
from helpline.providers.ollama import OllamaProvider
from helpline.providers.router import FallbackRouter

QUESTION = "How long does delivery take?"
_asked = itertools.count(1)


def fresh_question() -> str:
    """The question with a number of its own: every request is a cache miss (the answer cache would otherwise
    serve all but the first from memory, and no fault would reach a provider)."""
    return f"{QUESTION} (ref {next(_asked)})"


CITED = "policy-delivery.delivery-times"
REPLY = f"Standard delivery takes one to two working days.\n<<ACTION=answer; SOURCES={CITED}>>"
FIRST_TOKEN_S = 0.5
PER_FAULT = 20
OVERHEAD_ROUNDS = 100
FAULTS: dict[str, Callable[[], Fault]] = {
    "none (baseline)": Fault.ok,
    "429 + Retry-After": lambda: Fault.http_error(429, retry_after=1),
    "500": lambda: Fault.http_error(500),
    "503": lambda: Fault.http_error(503),
    "accept and hang": Fault.hang,
    "slow first token (3 s)": lambda: Fault.slow_first_token(3.0),
    "malformed body": Fault.malformed,
    "empty reply": Fault.empty,
    "safety block": Fault.safety,
    "stream cut after 2 chunks": lambda: Fault.stream_cut(after_chunks=2),
    "hangs after its first chunk": lambda: Fault.stall(after_chunks=1),
    "Gemini and Ollama both hang after their first chunk": lambda: Fault.stall(after_chunks=1),
}
OLLAMA_TOO = {"Gemini and Ollama both hang after their first chunk"}  # the fault is scripted on Ollama as well


def providers(gemini: FakeGemini, ollama: FakeOllama) -> list[Provider]:
    return [
        GeminiProvider("bench-key", "gemini-2.5-flash", gemini.base_url, timeout_s=5.0),
        OllamaProvider(ollama.base_url, "phi3", timeout_s=5.0),
        ExtractiveProvider(0.5),
    ]


async def run_fault(
    client: httpx.AsyncClient, gemini: FakeGemini, ollama: FakeOllama, router: FallbackRouter, name: str
) -> tuple[int, list[float], Counter[str]]:
    router.reset_state()  # each scenario starts with a closed breaker: the first request pays the full cost
    ok, latencies, used = 0, [], Counter[str]()
    for _ in range(PER_FAULT):
        gemini.script([FAULTS[name]()])
        ollama.script([FAULTS[name]()] if name in OLLAMA_TOO else [])
        started = time.perf_counter()
        response = await client.post("/v1/chat", json={"message": fresh_question()})
        latencies.append((time.perf_counter() - started) * 1000)
        body = response.json()
        used[body.get("provider", "?")] += 1
        ok += response.status_code == 200 and body["action"] == "answer" and bool(body["citations"])
    return ok, latencies, used


async def sdk_direct(gemini: FakeGemini) -> list[float]:
    client = genai.Client(
        api_key="bench-key", http_options=types.HttpOptions(base_url=gemini.base_url, api_version="v1beta")
    )
    latencies = []
    for _ in range(OVERHEAD_ROUNDS):
        started = time.perf_counter()
        await client.aio.models.generate_content(model="gemini-2.5-flash", contents=QUESTION)
        latencies.append((time.perf_counter() - started) * 1000)
    await client.aio.aclose()
    return latencies


async def main() -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeGemini(reply_text=REPLY) as gemini,
        FakeOllama(reply_text=REPLY) as ollama,
    ):
        settings = Settings(
            env="test", database_url=f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
            kb_sample_path=ROOT / "data" / "sample-store", first_token_timeout_s=FIRST_TOKEN_S,
            stall_timeout_s=FIRST_TOKEN_S, provider_timeout_s=5.0, log_level="WARNING",
            admin_token="bench-admin-token-0123456789abcdef",
            rate_limit_ip="1000000/minute", rate_limit_session="1000000/minute",  # measure failover, not limits
        )  # fmt: skip
        app = create_app(settings, embedder=Embedder(), providers=providers(gemini, ollama))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=30) as client:
                router = app.state.services.provider
                for _ in range(10):  # warm-up
                    await client.post("/v1/chat", json={"message": fresh_question()})
                await report_faults(client, gemini, ollama, router)
                gemini.script([])
                ours = []
                for _ in range(OVERHEAD_ROUNDS):
                    started = time.perf_counter()
                    await client.post("/v1/chat", json={"message": fresh_question()})
                    ours.append((time.perf_counter() - started) * 1000)
        direct = await sdk_direct(gemini)
    print(f"\ngateway overhead on a miss ({OVERHEAD_ROUNDS} sequential requests each):")
    print("| path | p50 ms | p99 ms |")
    print("|---|---|---|")
    sdk_p50, sdk_p99 = statistics.median(direct), percentile(direct, 99)
    print(f"| google-genai SDK → stand-in directly (baseline) | {sdk_p50:.1f} | {sdk_p99:.1f} |")

    print(
        f"| POST /v1/chat → router → same SDK → stand-in | {statistics.median(ours):.1f} | {percentile(ours, 99):.1f} |"
    )
    print(f"overhead p50: +{statistics.median(ours) - statistics.median(direct):.1f} ms "
          f"({statistics.median(ours) / statistics.median(direct):.2f}x)")  # fmt: skip


async def report_faults(
    client: httpx.AsyncClient, gemini: FakeGemini, ollama: FakeOllama, router: FallbackRouter
) -> None:
    print(f"faults injected on Gemini (primary), Ollama healthy unless said; first-token and stall deadlines "
          f"{FIRST_TOKEN_S} s, whole reply 5 s; {PER_FAULT} requests per fault")  # fmt: skip
    print("| fault | success | first request ms | added p50 ms | added p99 ms | provider used |")
    print("|---|---|---|---|---|---|")
    base_p50 = base_p99 = 0.0
    for name in FAULTS:
        ok, latencies, used = await run_fault(client, gemini, ollama, router, name)
        p50, p99 = statistics.median(latencies), percentile(latencies, 99)
        if name.startswith("none"):
            base_p50, base_p99 = p50, p99
        providers_used = ", ".join(f"{p} {n}" for p, n in used.most_common())
        print(
            f"| {name} | {ok}/{PER_FAULT} | {latencies[0]:.0f} | {p50 - base_p50:+.0f} | {p99 - base_p99:+.0f} "
            f"| {providers_used} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
