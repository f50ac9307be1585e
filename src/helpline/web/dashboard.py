"""The dashboard's figures (hourly series, shares and failover events computed from recent exchanges) and the
shapes of its JSON rows, kept out of the routes."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from helpline.store.models import Conversation, KnowledgeDocument
from helpline.store.repositories import ConversationRepository, as_message, as_utc

WINDOW = timedelta(hours=24)


def percentile(values: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of ``values`` (0 when empty)."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def hour_of(moment: datetime) -> str:
    return as_utc(moment).replace(minute=0, second=0, microsecond=0).isoformat()


def hourly(rows: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Requests and latency p50/p95 per hour (only the hours that had traffic, oldest first)."""
    latencies: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        latencies[hour_of(row[0])].append(int(row[1]))
    return [
        {"hour": hour, "requests": len(values), "p50_ms": percentile(values, 0.5), "p95_ms": percentile(values, 0.95)}
        for hour, values in sorted(latencies.items())
    ]


def shares(counter: Counter[str], total: int) -> dict[str, float]:
    return {name: round(count / total, 4) for name, count in counter.most_common()} if total else {}


def is_failover(row: Sequence[Any], primary: str) -> bool:
    """Whether an exchange is a failover event: a cache miss answered by a provider other than ``primary``, the
    first of the chain. The router only reaches a later provider when the first one failed, timed out, lost a hedge
    or was skipped (open breaker, Retry-After cooldown). Cache hits call no provider; ``none`` is the apology when
    every provider failed, which no provider answered."""
    provider = str(row[3])
    return row[2] == "miss" and provider not in (primary, "none", "")


def failovers(rows: Sequence[tuple[Any, ...]], primary: str) -> dict[str, Any]:
    """Failover events in total, by the provider that answered instead, and per hour over the hours with traffic
    (the requests series' hours, so an hour without failovers shows as 0)."""
    events = [row for row in rows if is_failover(row, primary)]
    per_hour = Counter(hour_of(row[0]) for row in events)
    hours = sorted({hour_of(row[0]) for row in rows})
    return {
        "primary": primary,
        "total": len(events),
        "by_provider": dict(Counter(str(row[3]) for row in events).most_common()),
        "series": [{"hour": hour, "failovers": per_hour[hour]} for hour in hours],
    }


def summarise(rows: Sequence[tuple[Any, ...]], feedback: dict[str, int], primary: str) -> dict[str, Any]:
    total = len(rows)
    caches = Counter(str(row[2]) for row in rows)
    handoffs = sum(1 for row in rows if row[4] == "handoff")
    return {
        "window_hours": int(WINDOW.total_seconds() // 3600),
        "requests": total,
        "series": hourly(rows),
        "cache": {"counts": dict(caches), "hit_rate": shares(caches, total)},
        "providers": shares(Counter(str(row[3]) for row in rows), total),
        "failovers": failovers(rows, primary),
        "handoff_rate": round(handoffs / total, 4) if total else 0.0,
        "feedback": {"up": feedback.get("up", 0), "down": feedback.get("down", 0)},
        "cost_usd": round(sum(float(row[5] or 0) for row in rows), 6),
        "cost_saved_usd": round(sum(float(row[6] or 0) for row in rows), 6),
    }


async def dashboard_stats(
    conversations: ConversationRepository, primary: str, now: datetime | None = None
) -> dict[str, Any]:
    """The last 24 hours' figures; ``primary`` is the first provider of the chain the router runs."""
    since = (now or datetime.now(UTC)) - WINDOW
    rows = await conversations.activity_since(since)
    return summarise(rows, await conversations.feedback_counts(), primary)


def conversation_row(row: Conversation) -> dict[str, Any]:
    """One exchange for the conversation browser (the contract's message shape plus the operator's fields)."""
    return {
        **as_message(row),
        "session_id": row.session_id,
        "latency_ms": row.response_time_ms,
        "request_id": row.request_id,
        "error": row.error,
    }


# FAQ metadata the editor shows as the title and text: saving derives them again (api/admin.py save_document).
FAQ_DERIVED = frozenset({"question", "answer"})


def document_row(row: tuple[str, str, str, datetime]) -> dict[str, Any]:
    """One line of the editor's document list."""
    return {"id": row[0], "kind": row[1], "title": row[2], "updated_at": as_utc(row[3]).isoformat()}


def document_view(document: KnowledgeDocument) -> dict[str, Any]:
    """A stored document as the editor edits it. An FAQ is answered from its question and answer metadata, which
    saving sets from the title and text; they are left out here so that what the operator edits is what is said."""
    metadata = dict(document.doc_metadata or {})
    if document.kind == "faq":
        metadata = {key: value for key, value in metadata.items() if key not in FAQ_DERIVED}
    return {
        "id": document.id,
        "kind": document.kind,
        "title": document.title,
        "text": document.text,
        "metadata": metadata,
        "tags": list(document.tags or []),
        "source": document.source,
        "updated_at": as_utc(document.updated_at).isoformat(),
    }
