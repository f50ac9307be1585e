"""Engine and session factory, and running the Alembic migrations in-process."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def create_engine(database_url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine with settings that suit each backend."""
    url = make_url(database_url)
    # hide_parameters: an error's text (logged with its stack trace) never quotes what a shopper wrote.
    kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.update(sqlite_options())
    else:
        kwargs.update(pool_pre_ping=True, pool_recycle=1800, pool_size=10, max_overflow=20, pool_timeout=10)
    engine = create_async_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    return engine


def sqlite_options() -> dict[str, Any]:
    """Engine options for an SQLite file (the app's async engine and the writing process's alike)."""
    # SQLite allows one writer at a time; concurrent writers would wait in its busy handler, which sleeps in
    # coarse steps (p99 of ~1 s under 16 clients). One pooled connection per engine queues them fairly instead.
    return {"connect_args": {"timeout": 30}, "pool_size": 1, "max_overflow": 0, "pool_timeout": 30}


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    from alembic.config import Config  # noqa: PLC0415 - Alembic only where migrations run (not in the writing process)

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    from alembic import command  # noqa: PLC0415

    command.upgrade(config, revision)


def _downgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    from alembic import command  # noqa: PLC0415

    command.downgrade(config, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` on the engine's database."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    async with engine.begin() as connection:
        await connection.run_sync(_downgrade, revision)
