"""Streamed CSV / JSONL export of conversations with their feedback: pages of rows by keyset, never all at once."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import orjson

from helpline.store.models import Conversation
from helpline.store.repositories import ConversationRepository, as_message

PAGE_SIZE = 500
COLUMNS = [
    "message_id", "session_id", "created_at", "message", "reply", "provider", "model", "cache", "action",
    "citations", "latency_ms", "tokens_in", "tokens_out", "cost_usd", "cost_saved_usd", "error", "request_id",
    "feedback_rating", "feedback_comment",
]  # fmt: skip
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def export_record(row: Conversation, rating: str | None, comment: str | None) -> dict[str, Any]:
    """The contract's message shape plus what operators export (CSV columns follow COLUMNS, not this order)."""
    return {
        **as_message(row),
        "session_id": row.session_id,
        "latency_ms": row.response_time_ms,
        "tokens_in": row.tokens_in,
        "tokens_out": row.tokens_out,
        "cost_usd": row.cost_usd,
        "cost_saved_usd": row.cost_saved_usd,
        "error": row.error,
        "request_id": row.request_id,
        "feedback_rating": rating,
        "feedback_comment": comment,
    }


def csv_cell(value: Any) -> str:
    """A spreadsheet-safe cell: JSON for lists, and text that would start a formula is prefixed with a quote."""
    if value is None:
        return ""
    text = orjson.dumps(value).decode() if isinstance(value, list | dict) else str(value)
    return "'" + text if isinstance(value, str) and text.startswith(FORMULA_PREFIXES) else text


def csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([csv_cell(value) for value in values])
    return buffer.getvalue()


async def records(conversations: ConversationRepository) -> AsyncIterator[dict[str, Any]]:
    await conversations.flush()
    after_id = 0
    while True:
        page = await conversations.export_page(after_id, PAGE_SIZE)
        for row, rating, comment in page:
            yield export_record(row, rating, comment)
        if len(page) < PAGE_SIZE:
            return
        after_id = page[-1][0].id


async def export_lines(conversations: ConversationRepository, fmt: str) -> AsyncIterator[bytes]:
    if fmt == "csv":
        yield csv_line(COLUMNS).encode()
    async for record in records(conversations):
        if fmt == "csv":
            yield csv_line([record[column] for column in COLUMNS]).encode()
        else:
            yield orjson.dumps(record) + b"\n"
