"""Conversation batches on SQLite run whole on a thread of their own: one round trip through the event loop each.

Through aiosqlite every DBAPI call is a round trip: the call goes to aiosqlite's thread and its result comes back
as a callback the event loop runs on its next turn. On a busy server a turn is long, so a batch of 8 of them fell
behind the requests (see ``db.ThreadWrites``). The round trips are counted here as what they are, callbacks from
another thread into the loop.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine

from helpline.store import db
from helpline.store.repositories import (
    ANONYMOUS,
    ApiKeyRepository,
    ConversationRecord,
    ConversationRepository,
    _write_positionally,
)
from helpline.store.writer import ConversationWriter, PendingSession

EXCHANGES = 100  # a session and an exchange each: 200 items, one batch


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[tuple[str, AsyncEngine]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'helpline.db'}"
    engine = db.create_engine(url)
    await db.upgrade(engine)
    yield url, engine
    await engine.dispose()


async def round_trips_to_write(engine: AsyncEngine, writes: db.ThreadWrites | None) -> tuple[int, int]:
    """Callbacks into the event loop from the thread that writes (the writing thread, or aiosqlite's) while a batch
    of new sessions and exchanges is written; and how many of the last session's exchanges a read through the app's
    engine then finds. Callbacks from other threads (other tests' apps share this event loop) are not counted."""
    writer = ConversationWriter(ConversationRepository(db.session_factory(engine), thread_writes=writes).write_batch)
    conversations = ConversationRepository(db.session_factory(engine), writer)
    session_id = ""
    for index in range(EXCHANGES):
        session_id = await conversations.create_session(ANONYMOUS, None)
        await conversations.add(ConversationRecord(session_id, f"question {index}", "answer", "m", "p", 1, "r"))
    loop = asyncio.get_running_loop()
    trips = 0
    original = loop.call_soon_threadsafe

    writing_thread = "sqlite-writes" if writes is not None else "(_connection_worker_thread)"  # aiosqlite's target

    def counted(callback: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Handle:
        nonlocal trips
        trips += writing_thread in threading.current_thread().name
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign,assignment]
    try:
        writer.start()
        await writer.flush()
    finally:
        loop.call_soon_threadsafe = original  # type: ignore[method-assign]
    await writer.close()
    return trips, len(await conversations.history(session_id))


async def test_a_batch_is_one_round_trip_through_the_event_loop(sqlite_engine: tuple[str, AsyncEngine]) -> None:
    url, engine = sqlite_engine
    writes = db.thread_writes(url)
    assert writes is not None
    try:
        threaded, found = await round_trips_to_write(engine, writes)
    finally:
        writes.close()
    assert threaded == 1
    assert found == 1  # written, committed, and visible to the app's own engine
    # The same batch through aiosqlite: cursor, execute and close per table, the commit, the pool's rollback.
    through_aiosqlite, found = await round_trips_to_write(engine, None)
    assert through_aiosqlite >= 8
    assert found == 1


def test_only_sqlite_files_get_a_writing_thread(tmp_path: Path) -> None:
    writes = db.thread_writes(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    assert writes is not None
    writes.close()
    # An in-memory database would be another, empty one on a second connection; server databases' async drivers
    # make no thread round trips.
    assert db.thread_writes("sqlite+aiosqlite://") is None
    assert db.thread_writes("sqlite+aiosqlite:///:memory:") is None
    assert db.thread_writes("postgresql+asyncpg://u@127.0.0.1/test") is None
    assert db.thread_writes("mysql+asyncmy://root@127.0.0.1/test") is None


async def test_rows_written_by_position_are_stored_as_sqlalchemy_stores_them(tmp_path: Path) -> None:
    """The same batch through SQLAlchemy's executemany (the async engine) and through PositionalInsert on the
    writing thread, into two databases: every stored value is the same text, number or NULL, byte for byte."""
    records: list[object] = []
    for index in range(150):  # three statements of PositionalInsert.PAGE rows, the last one short
        session_id = f"s_{index:04d}"
        owner = 1 if index % 5 == 0 else None  # the API key each database is given first (id 1)
        records.append(PendingSession(session_id, owner, "fr-CA" if index % 2 else None))
        records.append(
            ConversationRecord(
                session_id=session_id, user_query=f"1'; DROP TABLE conversations; -- ü 🍌 {index}",
                ai_response='"quoted" \\ answer', model_used="gemini-2.5-flash", provider="gemini",
                response_time_ms=index, request_id=f"r{index}", cache_state="semantic" if index % 3 else "exact",
                action="answer", citations=[{"id": "policy-delivery", "title": "Délai"}] if index % 2 else [],
                tokens_in=index * 3, tokens_out=7, cost_usd=index / 1e6, cost_saved_usd=0.000125,
                cache_similarity=0.9134 if index % 3 else None, cache_matched="Delivery time?" if index % 3 else None,
                error="ProviderTimeout" if index == 7 else None, user_key_id=owner,
                locale="fr-CA" if index % 2 else None,
                created_at=datetime(2026, 11, 27, 13, 5, 9, index * 1001, tzinfo=UTC),
            )
        )  # fmt: skip
    stored: list[list[tuple[object, ...]]] = []
    for name, threaded in (("core.db", False), ("positional.db", True)):
        url = f"sqlite+aiosqlite:///{tmp_path / name}"
        engine = db.create_engine(url)
        await db.upgrade(engine)
        _, key = await ApiKeyRepository(db.session_factory(engine)).create("widget")
        assert key.id == 1
        writes = db.thread_writes(url) if threaded else None
        await ConversationRepository(db.session_factory(engine), thread_writes=writes).write_batch(records)
        if writes is not None:
            writes.close()
        async with engine.connect() as connection:
            exchanges = (await connection.exec_driver_sql("SELECT * FROM conversations ORDER BY id")).all()
            sessions = (await connection.exec_driver_sql("SELECT * FROM chat_sessions ORDER BY id")).all()
        await engine.dispose()
        # A session's created_at is the time of the write: compared by its stored form, not its value.
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", row[-1]) for row in sessions)
        stored.append([tuple(row) for row in exchanges] + [tuple(row)[:-1] for row in sessions])
    core, positional = stored
    assert len(core) == 300
    assert positional == core


async def test_pages_fit_the_databases_parameter_limit(tmp_path: Path) -> None:
    """SQLite before 3.32 allows 999 parameters a statement (SQLAlchemy's dialect knows it): 64 rows of 21 columns
    would be 1,344, and the batch would fail on every retry. Here a connection limited to 999 writes 150 rows."""
    path = tmp_path / "helpline.db"
    engine = db.create_engine(f"sqlite+aiosqlite:///{path}")
    await db.upgrade(engine)
    await engine.dispose()
    limited = sqlalchemy.create_engine(f"sqlite:///{path}")

    @sqlalchemy.event.listens_for(limited, "connect")
    def limit(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    limited.dialect.insertmanyvalues_max_parameters = 999  # as SQLAlchemy sets it for SQLite before 3.32
    records: list[object] = []
    for index in range(150):
        records.append(PendingSession(f"s_{index}", None, None))
        records.append(ConversationRecord(f"s_{index}", f"question {index}", "answer", "m", "p", 1, "r"))
    with limited.begin() as connection:
        _write_positionally(records, connection)
    with limited.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM conversations").scalar() == 150
    limited.dispose()
