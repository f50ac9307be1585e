"""`/v1/chat` as server-sent events: meta, deltas, then done (or error for a cut reply); records follow."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from helpline.knowledge.embeddings import Embedder
from helpline.providers.base import Unavailable
from helpline.providers.extractive import ExtractiveProvider
from helpline.providers.fake import FakeProvider, FakeReply
from tests.conftest import Api, make_settings, running_api


def parse_sse(text: str) -> list[tuple[str, dict[str, object]]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], orjson.loads(fields["data"])))
    return events


@pytest.fixture
async def fake_api(sqlite_url: str, embedder: Embedder) -> AsyncIterator[tuple[Api, FakeProvider]]:
    fake = FakeProvider(name="gemini", model="gemini-test")
    async with running_api(make_settings(sqlite_url), embedder, [fake, ExtractiveProvider(0.5)]) as api:
        yield api, fake


async def post_stream(api: Api, message: str, **extra: object) -> list[tuple[str, dict[str, object]]]:
    async with api.client.stream("POST", "/v1/chat", json={"message": message, "stream": True, **extra}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = (await response.aread()).decode()
    return parse_sse(body)


async def test_stream_sends_meta_deltas_and_done(fake_api: tuple[Api, FakeProvider]) -> None:
    api, fake = fake_api
    fake.default = FakeReply(text="Standard delivery takes one to two working days.", chunks=5)
    events = await post_stream(api, "How long does delivery take?")
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "meta"
    assert kinds[-1] == "done"
    assert kinds.count("delta") >= 2
    text = "".join(str(data["text"]) for kind, data in events if kind == "delta")
    assert text.strip() == "Standard delivery takes one to two working days."
    assert "<<" not in text  # the control line never reaches the shopper
    done = events[-1][1]
    assert done["reply"] == text.strip()
    assert done["provider"] == "gemini"
    assert done["cache"] == "miss"
    assert done["action"] == "answer"
    assert done["citations"] == [{"id": "policy-delivery.delivery-times", "title": "Delivery policy: Delivery times"}]
    history = (await api.client.get(f"/v1/sessions/{done['session_id']}/messages")).json()["messages"]
    assert history[-1]["reply"] == done["reply"]


async def test_accept_header_also_streams(fake_api: tuple[Api, FakeProvider]) -> None:
    api, _ = fake_api
    response = await api.client.post(
        "/v1/chat", json={"message": "Do you have bananas?"}, headers={"accept": "text/event-stream"}
    )
    assert [kind for kind, _ in parse_sse(response.text)][-1] == "done"


async def test_cut_stream_ends_with_error_and_is_recorded_as_an_error(fake_api: tuple[Api, FakeProvider]) -> None:
    api, fake = fake_api
    fake.default = FakeReply(text="Standard delivery takes one to two working days.", chunks=5, cut_after=2)
    events = await post_stream(api, "How long does delivery take?")
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "error"
    assert "done" not in kinds
    assert events[-1][1]["error"]["code"] == "reply_cut"  # type: ignore[index]
    session_id = events[0][1]["session_id"]
    rows = await api.conversations.history(str(session_id))
    assert len(rows) == 1
    assert rows[0].error is not None
    assert rows[0].error.startswith("reply cut")


async def test_bad_input_on_a_stream_request_is_a_plain_json_error(fake_api: tuple[Api, FakeProvider]) -> None:
    api, _ = fake_api
    response = await api.client.post("/v1/chat", json={"message": " ", "stream": True})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "message_empty"


async def test_every_provider_failing_still_answers_with_a_handoff(sqlite_url: str, embedder: Embedder) -> None:
    broken = FakeProvider(name="gemini", default=FakeReply(error=Unavailable("down")))
    async with running_api(make_settings(sqlite_url), embedder, [broken]) as api:
        body = (await api.client.post("/v1/chat", json={"message": "How long does delivery take?"})).json()
    assert body["action"] == "handoff"
    assert body["provider"] == "none"
    assert body["citations"] == []
