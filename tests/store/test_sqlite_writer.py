"""Conversation batches on an SQLite file are written by a process of their own (``store.sqlite_writer``).

What must hold: a batch is in (committed, visible to the app's own engine) when its write returns; nothing is lost
or written twice when the process dies, is killed or refuses a batch; the process neither dies with a terminal's
Ctrl+C before the server has handed it the last batch nor outlives the server; and the rows are stored exactly as
SQLAlchemy itself would store them.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine

from helpline.store import db, sqlite_writer
from helpline.store.repositories import (
    ANONYMOUS,
    ApiKeyRepository,
    ConversationRecord,
    ConversationRepository,
    batch_rows,
    write_rows,
)
from helpline.store.sqlite_writer import WritingProcess, WritingProcessError
from helpline.store.writer import ConversationWriter, PendingSession


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[tuple[str, AsyncEngine]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'helpline.db'}"
    engine = db.create_engine(url)
    await db.upgrade(engine)
    yield url, engine
    await engine.dispose()


def exchanges(count: int, prefix: str = "s") -> list[object]:
    """A new session and one exchange in it, ``count`` times."""
    items: list[object] = []
    for index in range(count):
        items.append(PendingSession(f"{prefix}_{index:04d}", None, None))
        items.append(ConversationRecord(f"{prefix}_{index:04d}", f"question {index}", "answer", "m", "p", 1, "r"))
    return items


async def count_rows(engine: AsyncEngine) -> tuple[int, int]:
    """(sessions, exchanges) stored."""
    async with engine.connect() as connection:
        sessions = (await connection.exec_driver_sql("SELECT count(*) FROM chat_sessions")).scalar_one()
        stored = (await connection.exec_driver_sql("SELECT count(*) FROM conversations")).scalar_one()
    return sessions, stored


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A dead child not yet reaped is a zombie: gone for our purposes.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def test_a_batch_is_written_by_another_process_and_read_back_by_the_app(
    sqlite_engine: tuple[str, AsyncEngine],
) -> None:
    url, engine = sqlite_engine
    writes = sqlite_writer.for_database(url)
    assert writes is not None
    repository = ConversationRepository(db.session_factory(engine), writing_process=writes)
    writer = ConversationWriter(repository.write_batch, release=writes.close)  # as the app makes it
    conversations = ConversationRepository(db.session_factory(engine), writer)
    writer.start()
    session_id = ""
    for index in range(100):
        session_id = await conversations.create_session(ANONYMOUS, None)
        await conversations.add(ConversationRecord(session_id, f"question {index}", "answer", "m", "p", 1, "r"))
    # A read flushes first: everything queued is committed by the other process when it returns.
    history = await conversations.history(session_id)
    assert [row.user_query for row in history] == ["question 99"]
    assert await count_rows(engine) == (100, 100)
    pid = writes.pid
    assert pid is not None
    assert pid != os.getpid()
    assert alive(pid)
    await writer.close()  # drains, then lets the process go: it exits
    assert writes.pid is None
    for _ in range(100):
        if not alive(pid):
            break
        await asyncio.sleep(0.05)
    assert not alive(pid)


def test_only_sqlite_files_get_a_writing_process(tmp_path: Path) -> None:
    assert isinstance(sqlite_writer.for_database(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"), WritingProcess)
    # An in-memory database would be another, empty one in another process; server databases' async drivers
    # write from the event loop.
    assert sqlite_writer.for_database("sqlite+aiosqlite://") is None
    assert sqlite_writer.for_database("sqlite+aiosqlite:///:memory:") is None
    assert sqlite_writer.for_database("postgresql+asyncpg://u@127.0.0.1/test") is None
    assert sqlite_writer.for_database("mysql+asyncmy://root@127.0.0.1/test") is None


async def test_a_refused_batch_is_rolled_back_reported_by_type_only_and_the_process_carries_on(
    sqlite_engine: tuple[str, AsyncEngine],
) -> None:
    url, engine = sqlite_engine
    writes = WritingProcess(url)
    private = "my card 4111 1111 1111 1111 was charged twice"
    orphan = ConversationRecord("no-such-session", private, "answer", "m", "p", 1, "r")
    good = exchanges(3)
    try:
        # Sessions first, then an exchange whose session does not exist: the foreign key refuses the whole batch.
        with pytest.raises(WritingProcessError) as refused:
            await ConversationRepository(db.session_factory(engine), writing_process=writes).write_batch(
                [*good[:2], orphan]
            )
        assert str(refused.value) == "refused: IntegrityError"
        assert "4111" not in str(refused.value)
        assert await count_rows(engine) == (0, 0)  # the session written before the failure was rolled back
        pid = writes.pid
        await ConversationRepository(db.session_factory(engine), writing_process=writes).write_batch(good)
        assert writes.pid == pid  # the same process wrote the next batch
        assert await count_rows(engine) == (3, 3)
    finally:
        await writes.close()


async def test_a_process_killed_mid_batch_loses_nothing_and_writes_nothing_twice(
    sqlite_engine: tuple[str, AsyncEngine], tmp_path: Path
) -> None:
    """The process is killed while its batch waits for SQLite's write lock (held here): the write fails, the
    writer retries, a new process writes the batch once the lock is free, and every row is there exactly once."""
    url, engine = sqlite_engine
    writes = WritingProcess(url)
    failures: list[BaseException] = []
    writer = ConversationWriter(
        ConversationRepository(db.session_factory(engine), writing_process=writes).write_batch,
        on_failure=failures.append,
        max_backoff_s=0.2,
        release=writes.close,
    )
    lock = sqlite3.connect(tmp_path / "helpline.db", timeout=30)
    lock.execute("BEGIN IMMEDIATE")  # SQLite's write lock: the process's transaction waits in its busy handler
    try:
        writer.start()
        for item in exchanges(50):
            writer.add(item)
        for _ in range(200):  # the process is started for the batch and is reading it
            if writes.pid is not None:
                break
            await asyncio.sleep(0.02)
        first = writes.pid
        assert first is not None
        await asyncio.sleep(1.0)  # it has imported, read the batch and waits for the lock
        os.kill(first, signal.SIGKILL)
        for _ in range(200):
            if failures:
                break
            await asyncio.sleep(0.02)
        assert failures
        assert isinstance(failures[0], WritingProcessError)
    finally:
        lock.rollback()
        lock.close()
    await asyncio.wait_for(writer.flush(), 30)
    assert await count_rows(engine) == (50, 50)
    assert writes.pid not in (None, first)  # a new process wrote it
    await writer.close()


async def test_a_batch_committed_without_an_answer_stays_uncertain_until_one_is_answered_ok(
    sqlite_engine: tuple[str, AsyncEngine], tmp_path: Path
) -> None:
    """The wait for a batch is cancelled after the child has committed it (its answer unread): the batch is
    uncertain. A batch refused in between (rolled back) settles nothing, so the same batch sent again is still
    written idempotently: it succeeds, once. (Clearing the uncertainty on any answer made every later retry of it
    fail on its unique ids, for ever: review.)"""
    url, engine = sqlite_engine
    writes = WritingProcess(url)
    repository = ConversationRepository(db.session_factory(engine), writing_process=writes)
    try:
        await repository.write_batch(exchanges(1, "warm"))  # started and imported
        batch = exchanges(3)
        task = asyncio.create_task(repository.write_batch(batch))
        await asyncio.sleep(0)  # the frame is sent; the task waits for the answer
        reader = sqlite3.connect(tmp_path / "helpline.db")
        deadline = time.monotonic() + 30
        # The event loop is held here, so the answer cannot be read before the cancellation.
        while reader.execute("SELECT count(*) FROM conversations").fetchone()[0] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.002)  # noqa: ASYNC251
        reader.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        orphan = ConversationRecord("no-such-session", "q", "a", "m", "p", 1, "r")
        with pytest.raises(WritingProcessError, match="refused"):
            await repository.write_batch([orphan])
        await repository.write_batch(batch)  # already in: skipped, not refused
        assert await count_rows(engine) == (4, 4)
        # Answered ok since: a plain INSERT again, which refuses a repeat.
        with pytest.raises(WritingProcessError, match="refused: IntegrityError"):
            await repository.write_batch(batch[:1])
    finally:
        await writes.close()


async def test_the_process_has_a_session_of_its_own_and_ignores_the_working_directory(
    sqlite_engine: tuple[str, AsyncEngine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of the terminal's process group (its Ctrl+C does not reach it); and a module in the server's working
    directory named like one the child imports does not shadow it there (the server itself never imports from it)."""
    url, engine = sqlite_engine
    here = tmp_path / "cwd"
    here.mkdir()
    (here / "pickle.py").write_text("raise ImportError('the working directory was searched')\n")
    monkeypatch.chdir(here)
    writes = WritingProcess(url)
    try:
        await ConversationRepository(db.session_factory(engine), writing_process=writes).write_batch(exchanges(1))
        pid = writes.pid
        assert pid is not None
        assert os.getsid(pid) == pid != os.getsid(0)
    finally:
        await writes.close()
    assert await count_rows(engine) == (1, 1)


async def test_a_process_that_ended_between_batches_is_started_again_for_the_next(
    sqlite_engine: tuple[str, AsyncEngine],
) -> None:
    url, engine = sqlite_engine
    writes = WritingProcess(url)
    repository = ConversationRepository(db.session_factory(engine), writing_process=writes)
    try:
        await repository.write_batch(exchanges(2, "a"))
        first = writes.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)  # idle: no batch of ours is lost with it
        for _ in range(200):
            if writes.pid is None:
                break
            await asyncio.sleep(0.02)
        assert writes.pid is None
        await repository.write_batch(exchanges(2, "b"))  # no error: a new process writes it
        assert writes.pid not in (None, first)
        assert await count_rows(engine) == (4, 4)
    finally:
        await writes.close()


def frame(number: int, idempotent: bool, items: list[object]) -> bytes:
    body = pickle.dumps((number, idempotent, *batch_rows(items)))
    return len(body).to_bytes(sqlite_writer.HEADER, "big") + body


def spawn(url: str) -> tuple[subprocess.Popen[bytes], IO[bytes], IO[bytes]]:
    """The writing process started as the server starts it, with plain pipes: the protocol byte for byte."""
    child = subprocess.Popen(sqlite_writer.command(url), stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # noqa: S603
    assert child.stdin is not None
    assert child.stdout is not None
    return child, child.stdin, child.stdout


async def test_a_batch_sent_again_after_an_unknown_outcome_is_not_written_twice(
    sqlite_engine: tuple[str, AsyncEngine],
) -> None:
    """The child's side of the protocol, driven directly: a batch that was in fact committed (its answer lost with
    the process) and is sent again is refused as a plain INSERT (unique ids) and skipped row by row as an
    idempotent one; a batch that mixes rows already in with new ones writes only the new ones."""
    url, engine = sqlite_engine
    batch = exchanges(70)  # more than one statement page
    child, stdin, stdout = spawn(url)
    answers = []
    sends = ((False, batch), (False, batch), (True, batch), (True, [*batch, *exchanges(5, "t")]))
    for number, (idempotent, items) in enumerate(sends, 1):
        stdin.write(frame(number, idempotent, items))
        stdin.flush()
        answers.append(await asyncio.to_thread(stdout.readline))
    stdin.close()
    assert await asyncio.to_thread(child.wait, 30) == 0  # the end of its input: it exits, cleanly
    stdout.close()
    assert answers == [b"ok 1\n", b"error 2 IntegrityError\n", b"ok 3\n", b"ok 4\n"]
    assert await count_rows(engine) == (75, 75)


async def test_the_process_ignores_ctrl_c_and_exits_once_the_server_has_gone(
    sqlite_engine: tuple[str, AsyncEngine],
) -> None:
    """A terminal's Ctrl+C reaches the whole process group: the process must still write what the server's
    shutdown hands it. A server that dies without closing anything closes the pipe all the same: it exits."""
    url, engine = sqlite_engine
    child, stdin, stdout = spawn(url)
    stdin.write(frame(1, False, exchanges(1)))
    stdin.flush()
    assert await asyncio.to_thread(stdout.readline) == b"ok 1\n"  # started, signal handlers in place
    child.send_signal(signal.SIGINT)
    child.send_signal(signal.SIGTERM)
    stdin.write(frame(2, False, exchanges(2, "after")))
    stdin.flush()
    assert await asyncio.to_thread(stdout.readline) == b"ok 2\n"
    stdin.close()  # as the kernel does for a server killed outright
    assert await asyncio.to_thread(child.wait, 30) == 0
    stdout.close()
    assert await count_rows(engine) == (3, 3)


async def test_rows_written_by_position_are_stored_as_sqlalchemy_stores_them(tmp_path: Path) -> None:
    """The same batch through SQLAlchemy's executemany (the async engine) and through the writing process
    (PositionalInsert), into two databases: every stored value is the same text, number or NULL, byte for byte."""
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
    for name, in_process in (("core.db", False), ("positional.db", True)):
        url = f"sqlite+aiosqlite:///{tmp_path / name}"
        engine = db.create_engine(url)
        await db.upgrade(engine)
        _, key = await ApiKeyRepository(db.session_factory(engine)).create("widget")
        assert key.id == 1
        writes = sqlite_writer.for_database(url) if in_process else None
        await ConversationRepository(db.session_factory(engine), writing_process=writes).write_batch(records)
        if writes is not None:
            await writes.close()
        async with engine.connect() as connection:
            exchanges_stored = (await connection.exec_driver_sql("SELECT * FROM conversations ORDER BY id")).all()
            sessions = (await connection.exec_driver_sql("SELECT * FROM chat_sessions ORDER BY id")).all()
        await engine.dispose()
        # A session's created_at is the time of the write: compared by its stored form, not its value.
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", row[-1]) for row in sessions)
        stored.append([tuple(row) for row in exchanges_stored] + [tuple(row)[:-1] for row in sessions])
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
    items = exchanges(150)
    sessions, rows = batch_rows(items)
    for idempotent in (False, True):  # the second time, every row is already there: all skipped
        with limited.begin() as connection:
            write_rows(connection, sessions, rows, idempotent=idempotent)
    with limited.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM conversations").scalar() == 150
    limited.dispose()
