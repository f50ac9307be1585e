"""Engine and session factory, and running the Alembic migrations in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def create_engine(database_url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine with settings that suit each backend."""
    url = make_url(database_url)
    kwargs: dict[str, Any] = {"echo": echo}
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.update(_sqlite_options())
    else:
        kwargs.update(pool_pre_ping=True, pool_recycle=1800, pool_size=10, max_overflow=20, pool_timeout=10)
    engine = create_async_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


class ThreadWrites:
    """Write transactions for an SQLite file, each run whole on a thread of its own with its own connection.

    Why: through aiosqlite, every DBAPI call is a round trip between the event loop and aiosqlite's thread; a
    write-behind batch made 8 (cursor, execute and close per table, commit, the pool's rollback). On a busy
    server each round trip waits for the event loop to finish everything else that is ready, and the batch
    waited for 8 of them: at saturation (bench.cache, 32 connections) a batch of 500 took 0.4-1.3 s, the writer
    fell behind by about 2,000 records a second, and the backlog (memory, work for the garbage collector, and
    the wait of every read that flushes first) grew for as long as the load lasted. Here a batch is one round
    trip: the thread runs the whole transaction (multi-row INSERTs, the commit) and answers once.

    A second writing connection to the file: SQLite lets one write at a time, so the other one waits in its busy
    handler (``timeout``, as for the async engine); the conversation batches hold the lock for milliseconds.
    """

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url).set(drivername="sqlite+pysqlite")
        self._engine = sqlalchemy.create_engine(url, **_sqlite_options())
        event.listen(self._engine, "connect", _sqlite_pragmas)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writes")

    async def run(self, work: Callable[[Connection], None]) -> None:
        """``work(connection)`` in one transaction on the writing thread; committed when this returns."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._transaction, work)

    def _transaction(self, work: Callable[[Connection], None]) -> None:
        with self._engine.begin() as connection:
            work(connection)

    def close(self) -> None:
        """Wait for a transaction under way, then close the connection."""
        self._thread.shutdown(wait=True)
        self._engine.dispose()


def thread_writes(database_url: str) -> ThreadWrites | None:
    """A :class:`ThreadWrites` for an SQLite file; None for a server database (its async driver makes no thread
    round trips) and for an in-memory SQLite database (a second connection would open another database)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return ThreadWrites(database_url)


def _sqlite_options() -> dict[str, Any]:
    """Engine options for an SQLite file (the app's async engine and the writing thread's alike)."""
    # SQLite allows one writer at a time; concurrent writers would wait in its busy handler, which sleeps in
    # coarse steps (p99 of ~1 s under 16 clients). One pooled connection per engine queues them fairly instead.
    return {"connect_args": {"timeout": 30}, "pool_size": 1, "max_overflow": 0, "pool_timeout": 30}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _downgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` on the engine's database."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    async with engine.begin() as connection:
        await connection.run_sync(_downgrade, revision)
