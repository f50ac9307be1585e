"""Repositories against the three real databases: ownership, ordering, hashing, verbatim storage."""

from __future__ import annotations

import asyncio
import re
import secrets
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from helpline.store import db
from helpline.store.models import ApiKey, KnowledgeDocument
from helpline.store.repositories import (
    ANONYMOUS,
    ApiKeyRepository,
    ConversationRecord,
    ConversationRepository,
    KnowledgeRepository,
    Principal,
    StateRepository,
    StoredChunk,
    hash_secret,
    new_message_id,
    new_session_id,
)


async def test_api_keys_are_stored_hashed_and_authenticate(sessions: async_sessionmaker[AsyncSession]) -> None:
    keys = ApiKeyRepository(sessions)
    plain, row = await keys.create("alice", is_admin=False)
    assert plain.startswith("hl_")
    assert len(plain) > 40
    async with sessions() as session:
        stored = await session.get(ApiKey, row.id)
    assert stored is not None
    assert stored.key_hash == hash_secret(plain)
    assert plain not in (stored.key_hash, stored.key_prefix, stored.name)
    principal = await keys.authenticate(plain)
    assert principal is not None
    assert principal.key_id == row.id
    assert not principal.is_admin
    assert await keys.authenticate(plain + "x") is None
    async with sessions.begin() as session:
        await session.execute(sa.update(ApiKey).where(ApiKey.id == row.id).values(revoked_at=sa.func.now()))
    assert await keys.authenticate(plain) is None


async def test_sessions_are_unguessable_and_owned(sessions: async_sessionmaker[AsyncSession]) -> None:
    conversations = ConversationRepository(sessions)
    _, owner_row = await ApiKeyRepository(sessions).create("bob")
    ids = {await conversations.create_session(ANONYMOUS, None) for _ in range(20)}
    assert len(ids) == 20
    assert all(len(session_id) >= 32 for session_id in ids)
    owned = await conversations.create_session(Principal(key_id=owner_row.id, name="bob"), "en")
    assert await conversations.session_owner(owned) == (True, owner_row.id)
    assert await conversations.session_owner(next(iter(ids))) == (True, None)
    assert await conversations.session_owner("s_missing") == (False, None)


def test_new_ids_sort_by_creation_and_keep_their_random_bits() -> None:
    """Time first (indexes grow at their end instead of at a random leaf), then randomness enough to stay
    unguessable: 144 bits in a session id, 80 in a message id, within the columns' lengths (64 and 32)."""
    earlier = [(new_session_id(), new_message_id()) for _ in range(500)]
    time.sleep(0.003)  # past the millisecond: every later id sorts after every earlier one
    later = [(new_session_id(), new_message_id()) for _ in range(500)]
    assert max(session for session, _ in earlier) < min(session for session, _ in later)
    assert max(message for _, message in earlier) < min(message for _, message in later)
    sessions, messages = [s for s, _ in earlier + later], [m for _, m in earlier + later]
    assert len(set(sessions)) == len(set(messages)) == 1000  # the same millisecond still gives distinct ids
    assert all(re.fullmatch(r"s_[0-9a-f]{12}[A-Za-z0-9_-]{24}", session) for session in sessions)  # 24 x 6 bits
    assert all(re.fullmatch(r"[0-9a-f]{32}", message) for message in messages)  # 20 hex random = 80 bits
    assert len(sessions[0]) <= 64
    now_ms = time.time_ns() // 1_000_000
    assert 0 <= now_ms - int(sessions[-1][2:14], 16) < 5_000
    assert 0 <= now_ms - int(messages[-1][:12], 16) < 5_000


async def test_history_is_oldest_first_and_text_verbatim(sessions: async_sessionmaker[AsyncSession]) -> None:
    conversations = ConversationRepository(sessions)
    session_id = await conversations.create_session(ANONYMOUS, None)
    tricky = ["1'; DROP TABLE conversations; --", 'emoji 🍌 and "quotes" and \\ backslash', "x" * 5000, "ünïcödé"]
    for text in tricky:
        await conversations.add(
            ConversationRecord(
                session_id=session_id, user_query=text, ai_response=text[::-1], model_used="m", provider="p",
                response_time_ms=1, request_id="r", citations=[{"id": "faq-x", "title": "X"}],
            )
        )  # fmt: skip
        await asyncio.sleep(0.002)
    rows = await conversations.history(session_id)
    assert [row.user_query for row in rows] == tricky
    assert [row.ai_response for row in rows] == [text[::-1] for text in tricky]
    assert rows[0].citations == [{"id": "faq-x", "title": "X"}]
    latest_two = await conversations.history(session_id, limit=2)
    assert [row.user_query for row in latest_two] == tricky[2:]


async def test_state_repository_upserts(sessions: async_sessionmaker[AsyncSession]) -> None:
    state = StateRepository(sessions)
    await state.put("k-test", "1")
    await state.put("k-test", "2")
    assert await state.get("k-test") == "2"
    assert await state.get("k-missing") is None


async def test_writers_in_several_processes_get_one_revision_each_in_commit_order(database_url: str) -> None:
    """Three engines on one database (three processes: replicas, `helpline kb ingest`) write four documents at
    once, several times each. Every change gets a revision of its own, the knowledge revision is the highest, and
    each document holds the text of its highest-revision write. On SQLite two processes read the same revision
    and both wrote the next (SQLite ignores FOR UPDATE; found by a review, session 20). Writers also queue: two new
    documents written at once had deadlocked on MariaDB (session 19), never both inside at once now."""
    merge = AsyncSession.merge
    inside = most = 0

    async def slow_merge(self: AsyncSession, instance: object, **kwargs: object) -> object:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        try:
            await asyncio.sleep(0.02)  # another writer gets here meanwhile, if it can
            return await merge(self, instance, **kwargs)  # type: ignore[arg-type]
        finally:
            inside -= 1

    engines = [db.create_engine(database_url) for _ in range(3)]
    await db.upgrade(engines[0])
    repositories = [KnowledgeRepository(db.session_factory(engine)) for engine in engines]
    ids = [f"faq-race-{secrets.token_hex(3)}-{n}" for n in range(4)]
    written: list[tuple[int, str, str]] = []

    async def writer(n: int) -> None:
        for round_ in range(4):
            doc_id, content_hash = ids[(n + round_) % len(ids)], secrets.token_hex(8)
            document = KnowledgeDocument(id=doc_id, kind="faq", title="T", text="x", content_hash=content_hash)
            await repositories[n % 3].upsert(document, [StoredChunk(doc_id, 0, "x", b"\0" * 8)], "m")
            written.append((document.revision, doc_id, content_hash))

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(AsyncSession, "merge", slow_merge)
            await asyncio.gather(*(writer(n) for n in range(6)))
        revision, found = await repositories[0].versions()
        assert len({written_revision for written_revision, _, _ in written}) == len(written) == 24
        assert revision == max(written_revision for written_revision, _, _ in written)
        last = {doc_id: (rev, content_hash) for rev, doc_id, content_hash in sorted(written)}
        assert {doc_id: found[doc_id] for doc_id in ids} == last
        assert most == 1
        for doc_id in ids:
            assert await repositories[0].delete(doc_id)
        changes = await repositories[0].pending_changes()
        await repositories[0].settle_changes([i for i, doc in changes.items() if doc in ids])
    finally:
        for engine in engines:
            await engine.dispose()


async def test_processes_starting_together_on_a_database_agree_on_its_identity(database_url: str) -> None:
    """The database's identity (the cache store's keys carry it) is drawn once: three processes starting on a
    database that has none yet all get the same one, and keep it; a second database draws another."""
    engines = [db.create_engine(database_url) for _ in range(3)]
    await db.upgrade(engines[0])
    repositories = [KnowledgeRepository(db.session_factory(engine)) for engine in engines]
    try:
        async with engines[0].begin() as connection:  # as a database built afresh has it
            await connection.execute(sa.text("UPDATE kb_revision SET database_id = NULL"))
        drawn = await asyncio.gather(*(repository.database_id() for repository in repositories * 2))
        assert len(set(drawn)) == 1
        assert re.fullmatch(r"[0-9a-f]{16}", drawn[0])
        assert await repositories[2].database_id() == drawn[0]
        async with engines[0].begin() as connection:
            await connection.execute(sa.text("UPDATE kb_revision SET database_id = NULL"))
        assert await repositories[1].database_id() != drawn[0]
    finally:
        for engine in engines:
            await engine.dispose()


async def test_every_change_of_a_document_moves_the_knowledge_revision_on(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Revisions order a document's versions across writers (the cache store keeps the newest one any replica
    declared): every new text gets a higher one, also a text changed back or a document deleted and written again;
    an unchanged text keeps its revision, leaves no change and moves nothing on."""
    repository = KnowledgeRepository(sessions)
    doc_id = f"faq-revision-{secrets.token_hex(3)}"

    async def write(content_hash: str) -> int:
        document = KnowledgeDocument(id=doc_id, kind="faq", title="T", text=content_hash, content_hash=content_hash)
        await repository.upsert(document, [StoredChunk(doc_id, 0, content_hash, b"\0" * 8)], "m")
        revision, found = await repository.versions()
        assert found[doc_id] == (document.revision, content_hash)
        assert revision == await repository.revision() >= document.revision
        return document.revision

    async def changes() -> list[int]:
        return [i for i, doc in (await repository.pending_changes()).items() if doc == doc_id]

    first = await write("h1")
    assert len(await changes()) == 1
    assert await write("h1") == first
    assert (len(await changes()), await repository.revision()) == (1, first)
    second = await write("h2")
    third = await write("h1")  # back to the first text: a new version all the same
    assert first < second < third
    assert len(await changes()) == 3
    assert await repository.delete(doc_id)
    deletion, found = await repository.versions()
    assert doc_id not in found
    assert deletion > third
    assert await write("h1") > deletion
    assert await repository.delete(doc_id)
    await repository.settle_changes(await changes())


async def test_a_database_error_does_not_quote_what_was_written(engine: AsyncEngine) -> None:
    """A failed statement's error (logged with its stack trace) names none of its parameters: they are what shoppers
    wrote (a message, a comment). The SQLite writing process already hid them; the app's engine did not."""
    with pytest.raises(sa.exc.DBAPIError) as raised:
        async with engine.connect() as connection:
            await connection.execute(sa.text("SELECT :said FROM no_such_table"), {"said": "jane.doe@example.com"})
    assert "no_such_table" in str(raised.value)
    assert "jane.doe@example.com" not in str(raised.value)
