"""Limits as a shopper meets them on /v1/chat: headers, 429 and 503 bodies, what is charged, streams, proxies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Message

from helpline.knowledge.embeddings import Embedder
from helpline.providers.fake import FakeProvider, FakeReply
from helpline.ratelimit.fallback import FallbackLimiter
from tests.conftest import Api, make_settings, running_api
from tests.fakes.servers import refused_url
from tests.ratelimit.conftest import REDIS_URL

QUESTION = {"message": "How long does delivery take?"}
PEER = "203.0.113.7"  # the client address tests.conftest.running_api gives every request
# The shipped defaults (tests.conftest raises them for everyone else's tests).
PRODUCT_DEFAULTS = {"rate_limit_ip": "5/minute", "rate_limit_user": "20/hour", "rate_limit_session": "20/hour"}


@asynccontextmanager
async def limited_api(
    tmp_path: Path, embedder: Embedder, *, provider: FakeProvider | None = None, **overrides: object
) -> AsyncIterator[Api]:
    values: dict[str, object] = {**PRODUCT_DEFAULTS, **overrides}
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'helpline.db'}",
        kb_load_sample_when_empty=False,
        tenant=f"t{time.monotonic_ns()}",  # own limiter and answer-cache keys in the shared Redis
        **values,
    )
    async with running_api(settings, embedder, [provider or FakeProvider()]) as api:
        yield api


def limiter_stats(api: Api) -> dict[str, Any]:
    assert api.services.limiter is not None
    return dict(api.services.limiter.stats())


@pytest.fixture(params=["memory", "redis"])
def redis_url(request: pytest.FixtureRequest) -> str:
    return REDIS_URL if request.param == "redis" else ""


async def test_headers_count_down_then_429_with_retry_after(tmp_path: Path, embedder: Embedder, redis_url: str) -> None:
    async with limited_api(tmp_path, embedder, rate_limit_ip="3/minute", redis_url=redis_url) as api:
        remaining = []
        for _ in range(3):
            response = await api.client.post("/v1/chat", json=QUESTION)
            assert response.status_code == 200, response.text
            assert response.headers["ratelimit-limit"] == "3"
            assert 0 < int(response.headers["ratelimit-reset"]) <= 60
            remaining.append(response.headers["ratelimit-remaining"])
        assert remaining == ["2", "1", "0"]
        refused = await api.client.post("/v1/chat", json=QUESTION)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "rate_limited"
        assert error["request_id"] == refused.headers["x-request-id"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["ratelimit-remaining"] == "0"
        assert refused.headers["ratelimit-limit"] == "3"
        assert limiter_stats(api)["backend"] == ("redis" if redis_url else "memory")


async def test_malformed_requests_cost_the_shopper_nothing(tmp_path: Path, embedder: Embedder) -> None:
    async with limited_api(tmp_path, embedder, rate_limit_ip="2/minute") as api:
        bad: list[tuple[dict[str, Any], int]] = [
            ({"json": {"message": "   "}}, 422),
            ({"json": {"message": "x" * 2001}}, 422),
            ({"json": {"nope": 1}}, 422),
            ({"json": {"message": "hi", "locale": "<script>"}}, 422),
            ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
            ({"content": b"message=hi", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415),
            ({"json": QUESTION, "headers": {"authorization": "Bearer hl_wrong"}}, 401),
        ]
        for _ in range(3):
            for kwargs, status in bad:
                response = await api.client.post("/v1/chat", **kwargs)
                assert response.status_code == status, (kwargs, response.text)
                assert "ratelimit-remaining" not in response.headers
        statuses = [(await api.client.post("/v1/chat", json=QUESTION)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]


async def test_a_signed_in_user_is_limited_per_key_not_per_address(tmp_path: Path, embedder: Embedder) -> None:
    async with limited_api(tmp_path, embedder, rate_limit_ip="1/minute", rate_limit_user="2/hour") as api:
        alice, _ = await api.services.api_keys.create("alice")
        bob, _ = await api.services.api_keys.create("bob")

        async def ask(key: str | None) -> httpx.Response:
            headers = {"authorization": f"Bearer {key}"} if key else {}
            return await api.client.post("/v1/chat", json=QUESTION, headers=headers)

        assert [(await ask(alice)).status_code for _ in range(3)] == [200, 200, 429]
        last = await ask(alice)
        assert last.headers["ratelimit-limit"] == "2"
        assert int(last.headers["retry-after"]) > 3000  # an hour's window
        assert (await ask(bob)).status_code == 200  # another key, same address
        assert [(await ask(None)).status_code for _ in range(2)] == [200, 429]  # the address had its own budget


async def test_an_anonymous_conversation_has_its_own_budget(tmp_path: Path, embedder: Embedder) -> None:
    async with limited_api(tmp_path, embedder, rate_limit_ip="100/minute", rate_limit_session="2/hour") as api:
        first = await api.client.post("/v1/chat", json=QUESTION)
        session_id = first.json()["session_id"]
        follow_up = {**QUESTION, "session_id": session_id}
        statuses = [(await api.client.post("/v1/chat", json=follow_up)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        refused = await api.client.post("/v1/chat", json=follow_up)
        assert "session" in refused.json()["error"]["message"]
        assert (await api.client.post("/v1/chat", json=QUESTION)).status_code == 200  # a new conversation may start


async def test_a_full_cap_answers_503_at_once(tmp_path: Path, embedder: Embedder, redis_url: str) -> None:
    slow = FakeProvider(default=FakeReply(first_token_delay_s=1.5))
    async with limited_api(tmp_path, embedder, provider=slow, max_concurrent=1, redis_url=redis_url) as api:
        in_flight = asyncio.create_task(api.client.post("/v1/chat", json=QUESTION))
        await asyncio.sleep(0.3)
        busy = await api.client.post("/v1/chat", json={"message": "Do you sell bananas?"})
        assert not in_flight.done()  # answered while the slot was still taken: no queueing behind it
        assert busy.status_code == 503
        assert busy.json()["error"]["code"] == "overloaded"
        assert busy.headers["retry-after"] == "1"
        assert (await in_flight).status_code == 200
        assert (await api.client.post("/v1/chat", json=QUESTION)).status_code == 200  # the slot came back
        # The overloaded request charged nothing: 5/minute minus the two that ran.
        assert (await api.client.post("/v1/chat", json=QUESTION)).headers["ratelimit-remaining"] == "2"


class AsgiCall:
    """Drives the ASGI app directly, so a test can act while a streamed body is still being written."""

    def __init__(self, api: Api, body: bytes) -> None:
        self.api = api
        self.body = body
        self.messages: list[Message] = []
        self.first_chunk = asyncio.Event()
        self.disconnect = asyncio.Event()
        self._sent_body = False

    async def receive(self) -> Message:
        if not self._sent_body:
            self._sent_body = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            self.first_chunk.set()

    async def run(self) -> None:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/v1/chat", "raw_path": b"/v1/chat", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"helpline.test"), (b"content-type", b"application/json"),
                        (b"accept", b"text/event-stream"), (b"content-length", str(len(self.body)).encode())],
            "client": (PEER, 5555), "server": ("helpline.test", 80), "state": {},
        }  # fmt: skip
        await self.api.app(scope, self.receive, self.send)

    @property
    def start_headers(self) -> dict[str, str]:
        start = next(message for message in self.messages if message["type"] == "http.response.start")
        return {name.decode(): value.decode() for name, value in start["headers"]}


def held_leases(api: Api) -> int:
    return int(limiter_stats(api)["leases"])


async def test_the_lease_covers_a_streamed_body_to_its_last_byte(tmp_path: Path, embedder: Embedder) -> None:
    streaming = FakeProvider(default=FakeReply(chunks=6, chunk_delay_s=0.15))
    async with limited_api(tmp_path, embedder, provider=streaming, max_concurrent=1) as api:
        call = AsgiCall(api, b'{"message": "How long does delivery take?", "stream": true}')
        task = asyncio.create_task(call.run())
        await asyncio.wait_for(call.first_chunk.wait(), 5)
        assert held_leases(api) == 1  # the route function has returned; the body is still streaming
        busy = await api.client.post("/v1/chat", json=QUESTION)
        assert busy.status_code == 503
        await asyncio.wait_for(task, 10)
        assert held_leases(api) == 0
        assert call.start_headers["ratelimit-remaining"] == "4"
        assert b"event: done" in b"".join(message.get("body", b"") for message in call.messages)
        assert (await api.client.post("/v1/chat", json=QUESTION)).status_code == 200


async def test_a_client_leaving_mid_stream_gives_the_slot_back(tmp_path: Path, embedder: Embedder) -> None:
    streaming = FakeProvider(default=FakeReply(chunks=20, chunk_delay_s=0.2))
    async with limited_api(tmp_path, embedder, provider=streaming, max_concurrent=1) as api:
        call = AsgiCall(api, b'{"message": "How long does delivery take?", "stream": true}')
        task = asyncio.create_task(call.run())
        await asyncio.wait_for(call.first_chunk.wait(), 5)
        call.disconnect.set()
        await asyncio.wait_for(task, 5)
        assert held_leases(api) == 0


async def test_trusted_proxy_decides_whose_budget_it_is(tmp_path: Path, embedder: Embedder) -> None:
    async with limited_api(tmp_path, embedder, rate_limit_ip="1/minute", trusted_proxies="203.0.113.0/24") as api:
        for client in ("198.51.100.1", "198.51.100.2"):
            headers = {"x-forwarded-for": f"6.6.6.6, {client}"}
            assert (await api.client.post("/v1/chat", json=QUESTION, headers=headers)).status_code == 200
        again = {"x-forwarded-for": "7.7.7.7, 198.51.100.1"}
        assert (await api.client.post("/v1/chat", json=QUESTION, headers=again)).status_code == 429


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(tmp_path: Path, embedder: Embedder) -> None:
    async with limited_api(tmp_path, embedder, rate_limit_ip="1/minute", trusted_proxies="10.0.0.0/8") as api:
        statuses = [
            (
                await api.client.post("/v1/chat", json=QUESTION, headers={"x-forwarded-for": f"198.51.100.{n}"})
            ).status_code
            for n in range(3)
        ]
        assert statuses == [200, 429, 429]


def counter(metrics_text: str, series: str) -> float:
    """The value of one Prometheus series in the text exposition (0 when absent)."""
    for line in metrics_text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


async def test_redis_down_still_answers_and_limits(tmp_path: Path, embedder: Embedder) -> None:
    async with limited_api(tmp_path, embedder, rate_limit_ip="2/minute", redis_url=refused_url("redis")) as api:
        fallbacks = 'helpline_redis_fallback_total{component="ratelimit"}'
        refusals = 'helpline_ratelimit_refusals_total{tier="ip"}'
        before = (await api.client.get("/metrics")).text
        started = time.perf_counter()
        statuses = [(await api.client.post("/v1/chat", json=QUESTION)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert time.perf_counter() - started < 3
        assert api.services.limiter is not None
        assert isinstance(api.services.limiter.limiter, FallbackLimiter)
        stats = limiter_stats(api)
        assert stats["degraded"] is True
        assert stats["fallback_decisions"] == 3
        after = (await api.client.get("/metrics")).text
        assert counter(after, fallbacks) - counter(before, fallbacks) == 3  # counted, not only logged
        assert counter(after, refusals) - counter(before, refusals) == 1


async def test_other_paths_are_not_limited(tmp_path: Path, embedder: Embedder) -> None:
    async with limited_api(tmp_path, embedder, rate_limit_ip="1/minute") as api:
        for _ in range(3):
            response = await api.client.get("/healthz")
            assert response.status_code == 200
            assert "ratelimit-limit" not in response.headers
