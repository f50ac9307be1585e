"""`/metrics` after known traffic: every counter moved by exactly what the traffic implies."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from helpline.observability import metrics
from helpline.observability.alerts import RULES, AlertWindow, evaluate_alerts
from helpline.providers.base import ProviderTimeout
from tests.conftest import Api

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


async def scrape(api: Api) -> Samples:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_counters_move_by_the_traffic_sent(gemini_api: Api) -> None:
    before = await scrape(gemini_api)
    first = (await gemini_api.client.post("/v1/chat", json={"message": "How long does delivery take?"})).json()
    session = first["session_id"]
    tiers = [first["cache"]]  # the answer cache is live: a question other tests asked may be a hit
    for question in ("Do you have bananas?", "Can I return an item?"):
        reply = await gemini_api.client.post("/v1/chat", json={"message": question, "session_id": session})
        assert reply.status_code == 200
        tiers.append(reply.json()["cache"])
    assert (await gemini_api.client.post("/v1/chat", json={"message": "   "})).status_code == 422
    too_big = b'{"message": "' + b"a" * 70_000 + b'"}'
    oversized = await gemini_api.client.post("/v1/chat", content=too_big, headers={"content-type": "application/json"})
    assert oversized.status_code == 413
    assert (await gemini_api.client.get(f"/v1/sessions/{session}/messages")).status_code == 200
    assert (await gemini_api.client.get("/nope")).status_code == 404
    after = await scrape(gemini_api)

    requests = "helpline_http_requests_total"
    assert delta(before, after, requests, route="/v1/chat", method="POST", status="200") == 3
    assert delta(before, after, requests, route="/v1/chat", method="POST", status="422") == 1
    assert delta(before, after, requests, route="/v1/chat", method="POST", status="413") == 1
    assert delta(before, after, requests, route="/v1/sessions/{session_id}/messages", method="GET", status="200") == 1
    assert delta(before, after, requests, route="unmatched", method="GET", status="404") == 1
    assert delta(before, after, requests, route="/metrics", method="GET", status="200") == 1  # the first scrape
    assert delta(before, after, "helpline_http_request_duration_seconds_count", route="/v1/chat") == 5
    assert not any(session in str(labels) for _, labels in after)  # ids never become labels

    for tier in ("miss", "exact", "semantic"):
        expected = tiers.count(tier)
        assert delta(before, after, "helpline_reply_latency_seconds_count", provider="gemini", cache=tier) == expected
        assert delta(before, after, "helpline_cache_lookups_total", tier=tier) == expected
    rows = await gemini_api.conversations.history(session)
    assert len(rows) == 3
    assert delta(before, after, "helpline_tokens_total", provider="gemini", direction="in") == sum(
        row.tokens_in for row in rows
    )
    assert delta(before, after, "helpline_tokens_total", provider="gemini", direction="out") == sum(
        row.tokens_out for row in rows
    )
    assert delta(before, after, "helpline_cost_usd_total", provider="gemini") == pytest.approx(
        sum(float(row.cost_usd or 0) for row in rows)
    )
    assert after[("helpline_http_requests_in_flight", ())] == 1  # only the scrape itself


@pytest.fixture
def window(monkeypatch: pytest.MonkeyPatch) -> AlertWindow:
    """A private alert window, so these direct calls do not leak into the process's in-app alerts."""
    private = AlertWindow()
    monkeypatch.setattr(metrics, "WINDOW", private)
    return private


async def test_direct_recorders_reach_metrics_and_the_in_app_alerts(gemini_api: Api, window: AlertWindow) -> None:
    before = await scrape(gemini_api)
    metrics.record_provider_call("ollama")
    metrics.record_provider_call("ollama", ProviderTimeout("first token late", provider="ollama"))
    metrics.record_provider_call("ollama", "Unavailable")
    metrics.set_provider_up("ollama", False)
    metrics.set_breaker_state("ollama", "open")
    metrics.record_ratelimit_refusal("ip")
    metrics.record_ratelimit_refusal("ip")
    metrics.record_conversation_write_failure()
    metrics.record_redis_fallback("cache")
    after = await scrape(gemini_api)

    assert delta(before, after, "helpline_provider_calls_total", provider="ollama") == 3
    assert delta(before, after, "helpline_provider_errors_total", provider="ollama", error="ProviderTimeout") == 1
    assert delta(before, after, "helpline_provider_errors_total", provider="ollama", error="Unavailable") == 1
    assert after[("helpline_provider_up", (("provider", "ollama"),))] == 0
    assert after[("helpline_provider_breaker_state", (("provider", "ollama"),))] == 2
    assert delta(before, after, "helpline_ratelimit_refusals_total", tier="ip") == 2
    assert delta(before, after, "helpline_conversation_write_failures_total") == 1
    assert delta(before, after, "helpline_redis_fallback_total", component="cache") == 1

    states = {status.name: status for status in evaluate_alerts(window)}
    assert states["HelplineConversationWriteFailures"].state == "firing"  # no `for`: at once
    assert states["HelplineCacheStoreDown"].firing == (((("component", "cache"),), 1.0),)
    assert states["HelplineOllamaDown"].state == "pending"  # down, but not yet for 2 minutes
    assert states["HelplineProviderBreakerOpen"].state == "pending"
    assert states["HelplineHighErrorRate"].state == "ok"
    metrics.set_provider_up("ollama", True)
    metrics.set_breaker_state("ollama", "closed")


def test_the_backlog_gauge_reaches_metrics_and_the_in_app_alert(window: AlertWindow) -> None:
    """Synchronous, so no running writer's own report (every second) can come in between."""
    try:
        metrics.set_conversation_backlog(7000)
        assert REGISTRY.get_sample_value("helpline_conversation_write_backlog") == 7000
        states = {status.name: status for status in evaluate_alerts(window)}
        assert states["HelplineConversationBacklog"].state == "pending"  # over 5,000, not yet for 5 minutes
        metrics.set_conversation_backlog(10)
        states = {status.name: status for status in evaluate_alerts(window)}
        assert states["HelplineConversationBacklog"].state == "ok"
    finally:
        metrics.set_conversation_backlog(0)


def test_unknown_http_methods_share_one_label(window: AlertWindow) -> None:
    labels = {"route": "unmatched", "method": "OTHER", "status": "405"}
    before = REGISTRY.get_sample_value("helpline_http_requests_total", labels) or 0.0
    metrics.observe_http_request("unmatched", "BREW", 405, 0.001)
    assert REGISTRY.get_sample_value("helpline_http_requests_total", labels) == before + 1


async def test_admin_stats_show_the_in_app_alerts(gemini_api: Api) -> None:
    token = gemini_api.services.settings.admin_token
    assert token is not None
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"}
    stats = (await gemini_api.client.get("/v1/admin/stats", headers=headers)).json()
    names = [alert["name"] for alert in stats["alerts"]]
    assert names == [rule.name for rule in RULES]
    for alert in stats["alerts"]:
        assert alert["state"] in ("ok", "pending", "firing")
        assert alert["runbook"]
