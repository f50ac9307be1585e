"""Two replicas on a real 3-node Redis Cluster (cache and limiter), one database, through the HTTP API: answers are
shared across replicas, personal ones are not, and a document's change reaches the other replica at once.

The backends are tested on the cluster one by one (test_backends.py); this is the service on it end to end (the
keys of one tenant share a hash slot, the scripts run there, the near copies wait out a removal).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from helpline.knowledge.embeddings import Embedder
from helpline.providers.extractive import ExtractiveProvider
from helpline.providers.fake import FakeProvider, FakeReply
from tests.cache.test_cache_api import ADMIN, DELIVERY_TIMES, UNLIMITED, ask
from tests.conftest import Api, make_settings, running_api

QUESTION = "How long does delivery take?"


@asynccontextmanager
async def replicas_on(cluster_url: str, sqlite_url: str, embedder: Embedder) -> AsyncIterator[tuple[Api, Api]]:
    settings = make_settings(
        sqlite_url, redis_url=cluster_url, tenant="t" + secrets.token_hex(6), kb_refresh_s=3600,
        cache_timeout_s=1.0, **UNLIMITED,  # generous: a cluster client's first commands open a connection per node
    )  # fmt: skip
    fake_a = FakeProvider(name="gemini", model="a", default=FakeReply(text="Replica A: one to two working days."))
    fake_b = FakeProvider(name="gemini", model="b", default=FakeReply(text="Replica B: one to two working days."))
    async with (
        running_api(settings, embedder, [fake_a, ExtractiveProvider(0.5)]) as a,
        running_api(settings, embedder, [fake_b, ExtractiveProvider(0.5)]) as b,
    ):
        assert a.services.cache is not None
        assert a.services.cache.backend.kind == "redis"
        yield a, b


async def test_replicas_on_a_cluster_share_answers_but_not_personal_ones(
    cache_cluster_url: str, sqlite_url: str, embedder: Embedder
) -> None:
    async with replicas_on(cache_cluster_url, sqlite_url, embedder) as (a, b):
        first = await ask(a, QUESTION)
        assert (first["cache"], first["reply"]) == ("miss", "Replica A: one to two working days.")
        shared = await ask(b, QUESTION)
        assert (shared["cache"], shared["reply"]) == ("exact", "Replica A: one to two working days.")
        paraphrase = await ask(b, "How long does the delivery take?")
        assert (paraphrase["cache"], paraphrase["reply"]) == ("semantic", "Replica A: one to two working days.")

        # Two shoppers, each in a conversation of their own (anonymous: the conversation owns a personal answer).
        hers = await ask(a, "Where is my order?")
        his = await ask(b, "Where is my order?")
        assert hers["session_id"] != his["session_id"]
        assert (hers["cache"], his["cache"]) == ("miss", "miss")  # nobody is served another's personal answer
        assert his["reply"] == "Replica B: one to two working days."


async def test_a_document_changed_on_one_replica_is_not_served_by_the_other(
    cache_cluster_url: str, sqlite_url: str, embedder: Embedder
) -> None:
    async with replicas_on(cache_cluster_url, sqlite_url, embedder) as (a, b):
        await ask(a, QUESTION)
        assert (await ask(b, QUESTION))["cache"] == "exact"  # B holds a near copy of it now
        body = {"title": "Delivery times", "text": "Every order now arrives within 2 hours.", "kind": "policy"}
        response = await a.client.put(f"/v1/admin/kb/documents/{DELIVERY_TIMES}", json=body, headers=ADMIN)
        assert response.status_code == 200, response.text
        assert response.json()["removed"] >= 1
        after = await ask(b, QUESTION)  # B has not polled the change: the store no longer has the answer
        assert (after["cache"], after["reply"]) == ("miss", "Replica B: one to two working days.")
