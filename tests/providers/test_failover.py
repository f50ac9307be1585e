"""Failover through the real google-genai and ollama SDKs against stand-in servers with injected faults.

Every fault on the primary (Gemini) still gives the shopper a complete answer, from the right provider, with the
right `provider` field and the right record; and when Gemini and Ollama are both down, the knowledge base answers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from helpline.knowledge.embeddings import Embedder
from helpline.providers.base import Provider
from helpline.providers.extractive import ExtractiveProvider
from helpline.providers.gemini import GeminiProvider
from helpline.providers.ollama import OllamaProvider
from tests.api.test_streaming import parse_sse
from tests.conftest import Api, make_settings, running_api
from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.fakes.servers import Fault, refused_url

QUESTION = "How long does delivery take?"
CITED = "policy-delivery.delivery-times"
GEMINI_TEXT = f"Gemini: standard delivery takes one to two working days.\n<<ACTION=answer; SOURCES={CITED}>>"
OLLAMA_TEXT = f"Ollama: delivery takes one to two working days.\n<<ACTION=answer; SOURCES={CITED}>>"
FIRST_TOKEN_S = 0.4
STALL_S = 0.4


@pytest.fixture(scope="module")
def gemini_server() -> Iterator[FakeGemini]:
    with FakeGemini(reply_text=GEMINI_TEXT) as server:
        yield server


@pytest.fixture(scope="module")
def ollama_server() -> Iterator[FakeOllama]:
    with FakeOllama(reply_text=OLLAMA_TEXT) as server:
        yield server


@dataclass
class Stack:
    api: Api
    gemini: FakeGemini
    ollama: FakeOllama


def chain(gemini_url: str, ollama_url: str) -> list[Provider]:
    return [
        GeminiProvider("test-key", "gemini-2.5-flash", gemini_url, timeout_s=3.0),
        OllamaProvider(ollama_url, "phi3", timeout_s=3.0, connect_timeout_s=0.5),
        ExtractiveProvider(0.5),
    ]


@pytest.fixture
async def stack(
    sqlite_url: str, embedder: Embedder, gemini_server: FakeGemini, ollama_server: FakeOllama
) -> AsyncIterator[Stack]:
    gemini_server.reset()
    ollama_server.reset()
    settings = make_settings(
        sqlite_url, first_token_timeout_s=FIRST_TOKEN_S, stall_timeout_s=STALL_S, provider_timeout_s=3.0
    )
    async with running_api(settings, embedder, chain(gemini_server.base_url, ollama_server.base_url)) as api:
        yield Stack(api, gemini_server, ollama_server)


FAULTS = {
    "429 with Retry-After": Fault.http_error(429, retry_after=2),
    "500": Fault.http_error(500),
    "503": Fault.http_error(503),
    "accept and hang": Fault.hang(),
    "slow first token": Fault.slow_first_token(3.0),
    "malformed body": Fault.malformed(),
    "empty reply": Fault.empty(),
    "empty reply, no candidates": Fault.empty(no_candidates=True),
    "safety block on the prompt": Fault.safety(prompt_blocked=True),
    "safety finish on the reply": Fault.safety(prompt_blocked=False),
    "stream cut after 2 chunks": Fault.stream_cut(after_chunks=2),
    "hangs after its first chunk": Fault.stall(after_chunks=1),
    "connection reset": Fault.connection_reset(),
}


async def assert_recorded(api: Api, session_id: str, provider: str) -> None:
    rows = await api.conversations.history(session_id)
    assert len(rows) == 1
    assert rows[0].provider == provider
    assert rows[0].error is None
    assert rows[0].citations == [{"id": CITED, "title": "Delivery policy: Delivery times"}]


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_every_gemini_fault_fails_over_to_ollama(stack: Stack, fault: Fault) -> None:
    stack.gemini.script([fault])
    started = time.perf_counter()
    response = await stack.api.client.post("/v1/chat", json={"message": QUESTION})
    elapsed = time.perf_counter() - started
    body = response.json()
    assert response.status_code == 200
    assert body["provider"] == "ollama", body
    assert body["reply"] == "Ollama: delivery takes one to two working days."
    assert body["citations"] == [{"id": CITED, "title": "Delivery policy: Delivery times"}]
    # A hung or slow primary costs the first-token (or stall) deadline, not the whole-reply one (3 s), nor minutes.
    assert elapsed < max(FIRST_TOKEN_S, STALL_S) + 1.5
    await assert_recorded(stack.api, body["session_id"], "ollama")


async def test_gemini_refused_fails_over_to_ollama(
    sqlite_url: str, embedder: Embedder, ollama_server: FakeOllama
) -> None:
    ollama_server.reset()
    settings = make_settings(sqlite_url, first_token_timeout_s=FIRST_TOKEN_S)
    async with running_api(settings, embedder, chain(refused_url(), ollama_server.base_url)) as api:
        body = (await api.client.post("/v1/chat", json={"message": QUESTION})).json()
    assert body["provider"] == "ollama"


async def test_healthy_gemini_answers_and_is_accounted(stack: Stack) -> None:
    body = (await stack.api.client.post("/v1/chat", json={"message": QUESTION})).json()
    assert body["provider"] == "gemini"
    assert body["model"] == "gemini-2.5-flash"
    rows = await stack.api.conversations.history(body["session_id"])
    assert rows[0].tokens_in > 0
    assert rows[0].tokens_out > 0
    assert rows[0].cost_usd > 0
    sent = stack.gemini.requests[-1].body
    assert sent["systemInstruction"]["parts"][0]["text"].startswith("You are the customer-support assistant")
    assert "<shopper_message>" in sent["contents"][-1]["parts"][0]["text"]


@pytest.mark.parametrize("ollama_fault", [Fault.http_error(500), Fault.hang(), Fault.stream_cut(after_chunks=1)])
async def test_gemini_and_ollama_down_together_the_knowledge_base_answers(stack: Stack, ollama_fault: Fault) -> None:
    stack.gemini.script([Fault.http_error(503)])
    stack.ollama.script([ollama_fault])
    body = (await stack.api.client.post("/v1/chat", json={"message": QUESTION})).json()
    assert body["provider"] == "extractive"
    assert body["action"] == "answer"
    assert body["citations"][0]["id"] == CITED
    await assert_recorded(stack.api, body["session_id"], "extractive")


async def test_gemini_and_ollama_both_hanging_mid_reply_cost_seconds_not_the_deadline(stack: Stack) -> None:
    """Both models send a first piece and then nothing: each is dropped at its stall deadline, and the knowledge
    base answers (it used to take the whole-reply deadline of each model in turn: minutes with the defaults)."""
    stack.gemini.script([Fault.stall(after_chunks=1)])
    stack.ollama.script([Fault.stall(after_chunks=1)])
    started = time.perf_counter()
    body = (await stack.api.client.post("/v1/chat", json={"message": QUESTION})).json()
    elapsed = time.perf_counter() - started
    assert body["provider"] == "extractive", body
    assert body["action"] == "answer"
    assert body["citations"][0]["id"] == CITED
    assert elapsed < 2 * STALL_S + 1.5  # the whole-reply deadline is 3 s per call
    await assert_recorded(stack.api, body["session_id"], "extractive")


@pytest.mark.parametrize(
    "fault", [Fault.stream_cut(after_chunks=2), Fault.stall(after_chunks=2)], ids=["cut", "hangs mid-reply"]
)
async def test_streamed_cut_is_continued_by_ollama(stack: Stack, fault: Fault) -> None:
    stack.gemini.chunks = 6
    stack.gemini.script([fault])
    started = time.perf_counter()
    try:
        response = await stack.api.client.post("/v1/chat", json={"message": QUESTION, "stream": True})
    finally:
        stack.gemini.chunks = 4
    assert time.perf_counter() - started < STALL_S + 1.5  # a hang is dropped at the stall deadline, not at 3 s
    events = parse_sse(response.text)
    assert events[-1][0] == "done"
    assert events[-1][1]["provider"] == "ollama"
    continued = stack.ollama.requests[-1].body["messages"][-1]["content"]
    assert "<partial_reply>" in continued
    assert "Gemini: standard" in continued


async def test_health_checks_use_the_cheap_endpoints(stack: Stack) -> None:
    router = stack.api.services.provider
    await router.check_health()  # type: ignore[attr-defined]
    assert any(
        r.path.startswith("/v1beta/models/gemini-2.5-flash") and r.method == "GET" for r in stack.gemini.requests
    )
    assert any(r.path == "/api/tags" for r in stack.ollama.requests)
