"""Personal data in a message is masked before it reaches a provider (the cache and the embedder get the same
masked text), and kept in the conversation record."""

from __future__ import annotations

from helpline.knowledge.embeddings import Embedder
from helpline.providers.extractive import ExtractiveProvider
from helpline.providers.fake import FakeProvider
from tests.conftest import make_settings, running_api

MESSAGE = "Please email jane.doe@example.com about my refund, card 4111 1111 1111 1111, thanks"


async def test_pii_is_masked_for_the_provider_and_the_cache_but_kept_in_the_record(
    sqlite_url: str, embedder: Embedder
) -> None:
    fake = FakeProvider(name="gemini", model="gemini-test")
    async with running_api(make_settings(sqlite_url), embedder, [fake, ExtractiveProvider(0.5)]) as api:
        body = (await api.client.post("/v1/chat", json={"message": MESSAGE})).json()
        follow_up = await api.client.post("/v1/chat", json={"message": "and when?", "session_id": body["session_id"]})
        assert follow_up.status_code == 200
        rows = await api.conversations.history(body["session_id"])
    sent = fake.requests[0].message
    assert "jane.doe@example.com" not in sent
    assert "4111 1111 1111 1111" not in sent
    assert "[email]" in sent
    history_sent = fake.requests[1].history[0].message
    assert "jane.doe@example.com" not in history_sent
    assert rows[0].user_query == MESSAGE  # the store keeps what the shopper wrote
