"""The dashboard's figures: failover events computed from activity rows, and over HTTP from a real failover (a
scripted primary that fails, the real router, app and database)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from helpline.knowledge.embeddings import Embedder
from helpline.providers.base import Unavailable
from helpline.providers.fake import FakeProvider, FakeReply
from helpline.web.dashboard import failovers, is_failover, summarise
from tests.conftest import Api, make_settings, running_api
from tests.web.test_pages import login

NINE = datetime(2024, 5, 1, 9, 15, tzinfo=UTC)
TEN = datetime(2024, 5, 1, 10, 5)  # naive, as SQLite and MySQL hand it back: UTC


def activity(at: datetime, cache: str, provider: str, action: str = "answer") -> tuple[Any, ...]:
    """A row as ``ConversationRepository.activity_since`` returns it."""
    return (at, 120, cache, provider, action, 0.0, 0.0)


@pytest.mark.parametrize(
    ("cache", "provider", "expected"),
    [
        ("miss", "gemini", False),  # the first of the chain answered
        ("miss", "ollama", True),
        ("miss", "extractive", True),  # the last resort answered: a failover too, even when it hands off
        ("exact", "ollama", False),  # a cache hit called no provider
        ("semantic", "extractive", False),
        ("miss", "none", False),  # every provider failed: the apology, answered by nobody
    ],
)
def test_a_failover_is_a_miss_answered_by_another_provider_than_the_first(
    cache: str, provider: str, expected: bool
) -> None:
    assert is_failover(activity(NINE, cache, provider), "gemini") is expected


def test_failovers_are_counted_per_hour_over_the_hours_with_traffic() -> None:
    rows = [
        activity(NINE, "miss", "gemini"),
        activity(NINE, "miss", "ollama"),
        activity(NINE, "exact", "ollama"),
        activity(TEN, "miss", "gemini"),
        activity(TEN, "miss", "extractive", "handoff"),
        activity(TEN, "miss", "ollama"),
        activity(TEN, "miss", "none", "handoff"),
    ]
    result = failovers(rows, "gemini")
    assert result == {
        "primary": "gemini",
        "total": 3,
        "by_provider": {"ollama": 2, "extractive": 1},
        "series": [
            {"hour": "2024-05-01T09:00:00+00:00", "failovers": 1},
            {"hour": "2024-05-01T10:00:00+00:00", "failovers": 2},
        ],
    }
    # The same rows with ollama first: gemini's answers are the failovers now.
    assert failovers(rows, "ollama")["by_provider"] == {"gemini": 2, "extractive": 1}


def test_a_chain_of_one_provider_never_fails_over_and_no_traffic_has_no_hours() -> None:
    rows = [activity(NINE, "miss", "extractive"), activity(TEN, "miss", "extractive", "handoff")]
    only = failovers(rows, "extractive")
    assert only["total"] == 0
    assert [point["failovers"] for point in only["series"]] == [0, 0]
    assert failovers([], "gemini") == {"primary": "gemini", "total": 0, "by_provider": {}, "series": []}


def test_the_summary_carries_the_failovers_next_to_the_hourly_series() -> None:
    rows = [activity(NINE, "miss", "gemini"), activity(TEN, "miss", "ollama")]
    summary = summarise(rows, {"up": 1}, "gemini")
    assert [point["hour"] for point in summary["failovers"]["series"]] == [point["hour"] for point in summary["series"]]
    assert summary["failovers"]["total"] == 1
    assert summary["providers"] == {"gemini": 0.5, "ollama": 0.5}


@pytest.fixture
async def failing_primary(sqlite_url: str, embedder: Embedder) -> AsyncIterator[Api]:
    """Gemini (scripted) is down for the first two questions; Ollama (scripted) answers instead."""
    down = FakeReply(error=Unavailable("scripted outage", provider="gemini"))
    gemini = FakeProvider(name="gemini", model="gemini-fake", replies=[down, down])
    ollama = FakeProvider(name="ollama", model="ollama-fake", default=FakeReply(text="Ollama stands in."))
    async with running_api(make_settings(sqlite_url), embedder, [gemini, ollama]) as running:
        yield running


async def test_stats_count_the_failovers_the_router_made(failing_primary: Api) -> None:
    client = failing_primary.client
    replies = []
    for question in ("How long does delivery take?", "Do you have bananas?", "Can I pay with PayPal?"):
        response = await client.post("/v1/chat", json={"message": question})
        assert response.status_code == 200
        replies.append(response.json())
    assert [reply["provider"] for reply in replies] == ["ollama", "ollama", "gemini"]
    again = await client.post("/v1/chat", json={"message": "How long does delivery take?"})
    assert again.json()["cache"] == "exact"  # served by the cache: no provider, no failover
    await login(client)
    stats = (await client.get("/admin/api/stats")).json()
    assert stats["requests"] == 4
    assert stats["failovers"]["primary"] == "gemini"
    assert stats["failovers"]["total"] == 2
    assert stats["failovers"]["by_provider"] == {"ollama": 2}
    assert sum(point["failovers"] for point in stats["failovers"]["series"]) == 2
    assert [point["hour"] for point in stats["failovers"]["series"]] == [point["hour"] for point in stats["series"]]


async def test_the_primary_is_the_first_provider_that_runs(sqlite_url: str, embedder: Embedder) -> None:
    """The configured chain is gemini,ollama,extractive; without a Gemini key the router starts at Ollama, and
    answers of the extractive answerer after Ollama failed are the failovers."""
    settings = make_settings(sqlite_url, providers="gemini,ollama,extractive", ollama_host="http://127.0.0.1:9")
    async with running_api(settings, embedder) as api:
        response = await api.client.post("/v1/chat", json={"message": "How long does delivery take?"})
        assert response.json()["provider"] == "extractive"
        await login(api.client)
        stats = (await api.client.get("/admin/api/stats")).json()
    assert stats["failovers"]["primary"] == "ollama"
    assert stats["failovers"]["total"] == 1
    assert stats["failovers"]["by_provider"] == {"extractive": 1}
