"""The same Alembic migrations build the same schema on SQLite, MariaDB and PostgreSQL, up and down."""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from helpline.store import db
from helpline.store.models import Base

TABLES = {
    "api_keys", "chat_sessions", "conversations", "kb_documents", "kb_chunks", "kb_changes", "kb_revision", "app_state",
}  # fmt: skip


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


async def _add_change(engine: AsyncEngine, document_id: str) -> int:
    async with engine.begin() as connection:
        result = await connection.execute(
            sa.text("INSERT INTO kb_changes (document_id, created_at) VALUES (:doc, CURRENT_TIMESTAMP) RETURNING id"),
            {"doc": document_id},
        )
        return int(result.scalar_one())


async def _changes(engine: AsyncEngine, prefix: str) -> list[tuple[int, str]]:
    query = sa.text("SELECT id, document_id FROM kb_changes WHERE document_id LIKE :p ORDER BY id")
    async with engine.connect() as connection:
        return [(int(i), str(d)) for i, d in (await connection.execute(query, {"p": prefix + "%"})).all()]


async def _settle(engine: AsyncEngine, *change_ids: int) -> None:
    async with engine.begin() as connection:
        for change_id in change_ids:
            await connection.execute(sa.text("DELETE FROM kb_changes WHERE id = :id"), {"id": change_id})


async def test_an_outbox_id_is_never_given_twice(engine: AsyncEngine) -> None:
    """A drainer settles the ids it read: a change written after the newest was settled must not get its id (SQLite
    reused the highest rowid; found by a review, session 19), also on a database migrated before the fix (0005)."""
    prefix = f"doc-{secrets.token_hex(4)}-"
    await db.downgrade(engine, "0005")
    first = await _add_change(engine, prefix + "a")
    await db.upgrade(engine, "head")  # 0006 copies the table on SQLite: the change and its id stay
    assert await _changes(engine, prefix) == [(first, prefix + "a")]
    await _settle(engine, first)
    second = await _add_change(engine, prefix + "a")
    assert second > first
    await _settle(engine, second)
    third = await _add_change(engine, prefix + "b")
    assert third > second
    await _settle(engine, third)
    assert await _changes(engine, prefix) == []


async def test_documents_stored_before_revisions_keep_their_text_at_revision_0(engine: AsyncEngine) -> None:
    """0007 adds kb_documents.revision in place: the rows (and their chunks, which a copy of the table would have
    cascade-deleted on SQLite) stay, at revision 0, older than any version written from then on."""
    doc_id = f"doc-{secrets.token_hex(4)}"
    await db.downgrade(engine, "0006")
    async with engine.begin() as connection:
        await connection.execute(
            sa.text(
                "INSERT INTO kb_documents (id, kind, title, text, metadata, tags, source, content_hash, updated_at) "
                "VALUES (:id, 'faq', 'T', 'x', '{}', '[]', '', 'h', CURRENT_TIMESTAMP)"
            ),
            {"id": doc_id},
        )
        await connection.execute(
            sa.text(
                "INSERT INTO kb_chunks (document_id, ordinal, text, embedding, model_id) "
                "VALUES (:id, 0, 'x', :vector, 'm')"
            ),
            {"id": doc_id, "vector": b"\0" * 8},
        )
    await db.upgrade(engine, "head")
    async with engine.begin() as connection:
        found = (
            await connection.execute(
                sa.text("SELECT revision, content_hash FROM kb_documents WHERE id = :id"), {"id": doc_id}
            )
        ).all()
        chunks = await connection.scalar(
            sa.text("SELECT count(*) FROM kb_chunks WHERE document_id = :id"), {"id": doc_id}
        )
        await connection.execute(sa.text("DELETE FROM kb_chunks WHERE document_id = :id"), {"id": doc_id})
        await connection.execute(sa.text("DELETE FROM kb_documents WHERE id = :id"), {"id": doc_id})
    assert [tuple(row) for row in found] == [(0, "h")]
    assert chunks == 1
