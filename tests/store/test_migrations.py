"""The same Alembic migrations build the same schema on SQLite, MariaDB and PostgreSQL, up and down."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from helpline.store import db
from helpline.store.models import Base

TABLES = {"api_keys", "chat_sessions", "conversations", "kb_documents", "kb_chunks", "app_state"}


def _inspect(connection: sa.Connection) -> dict[str, set[str]]:
    inspector = sa.inspect(connection)
    return {table: {column["name"] for column in inspector.get_columns(table)} for table in inspector.get_table_names()}


def _indexes(connection: sa.Connection, table: str) -> dict[str, list[str]]:
    return {str(ix["name"]): [str(c) for c in ix["column_names"]] for ix in sa.inspect(connection).get_indexes(table)}


async def test_migrations_go_down_to_zero_and_back_up(engine: AsyncEngine) -> None:
    await db.downgrade(engine, "base")
    async with engine.connect() as connection:
        tables = await connection.run_sync(_inspect)
    assert not (TABLES & set(tables))
    await db.upgrade(engine, "head")
    async with engine.connect() as connection:
        tables = await connection.run_sync(_inspect)
        indexes = await connection.run_sync(_indexes, "conversations")
    assert set(tables) >= TABLES
    # The migrations and the models agree column for column.
    for table in TABLES:
        assert tables[table] == set(Base.metadata.tables[table].columns.keys()), table
    assert indexes["ix_conversations_session_created"] == ["session_id", "created_at"]
    conversation_columns = tables["conversations"]
    assert {"request_id", "provider", "cache_state", "action", "tokens_in", "tokens_out", "error", "user_key_id"} <= (
        conversation_columns
    )
