"""The dashboard's figures: hourly series and shares computed from recent exchanges (kept out of the routes)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from helpline.store.models import Conversation
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


def summarise(rows: Sequence[tuple[Any, ...]], feedback: dict[str, int]) -> dict[str, Any]:
    total = len(rows)
    caches = Counter(str(row[2]) for row in rows)
    handoffs = sum(1 for row in rows if row[4] == "handoff")
    return {
        "window_hours": int(WINDOW.total_seconds() // 3600),
        "requests": total,
        "series": hourly(rows),
        "cache": {"counts": dict(caches), "hit_rate": shares(caches, total)},
        "providers": shares(Counter(str(row[3]) for row in rows), total),
        "handoff_rate": round(handoffs / total, 4) if total else 0.0,
        "feedback": {"up": feedback.get("up", 0), "down": feedback.get("down", 0)},
        "cost_usd": round(sum(float(row[5] or 0) for row in rows), 6),
        "cost_saved_usd": round(sum(float(row[6] or 0) for row in rows), 6),
    }


async def dashboard_stats(conversations: ConversationRepository, now: datetime | None = None) -> dict[str, Any]:
    since = (now or datetime.now(UTC)) - WINDOW
    rows = await conversations.activity_since(since)
    return summarise(rows, await conversations.feedback_counts())


def conversation_row(row: Conversation) -> dict[str, Any]:
    """One exchange for the conversation browser (the contract's message shape plus the operator's fields)."""
    return {
        **as_message(row),
        "session_id": row.session_id,
        "latency_ms": row.response_time_ms,
        "request_id": row.request_id,
        "error": row.error,
    }
