"""Repositories against the three real databases: ownership, ordering, hashing, verbatim storage."""

from __future__ import annotations

import asyncio
import re
import secrets
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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


@pytest.mark.parametrize("same_id", [False, True])
async def test_two_new_documents_written_at_once_are_both_saved(
    sessions: async_sessionmaker[AsyncSession], backend: str, monkeypatch: pytest.MonkeyPatch, same_id: bool
) -> None:
    """Two writes of new documents whose transactions interleave (each has deleted its chunks before either saves
    its document): MariaDB breaks the deadlock their gap locks make by aborting one, which was a 500 for an admin or
    a failed ingest; it is run again (found by a review, session 19). Two writes of the same new id deadlock there
    too (with other timings PostgreSQL refuses the second insert as a duplicate key, also run again: the next
    review). On every database, all are saved, each id with its outbox change."""
    merge = AsyncSession.merge
    arrived: list[object] = []
    both = asyncio.Event()

    async def merge_when_both_got_here(self: AsyncSession, instance: object, **kwargs: object) -> object:
        if len(arrived) < 2:  # the first two transactions meet here; a retry goes straight on
            arrived.append(instance)
            if len(arrived) == 2:
                both.set()
            await asyncio.wait_for(both.wait(), 5)
        return await merge(self, instance, **kwargs)  # type: ignore[arg-type]

    interleave = backend != "sqlite"  # SQLite has one writer at a time: its two transactions run one after the other
    if interleave:
        monkeypatch.setattr(AsyncSession, "merge", merge_when_both_got_here)
    repository = KnowledgeRepository(sessions)
    ids = [f"faq-race-{secrets.token_hex(3)}-{side}" for side in ("a", "a" if same_id else "b")]
    hashes = [secrets.token_hex(8) for _ in ids]
    documents = [
        KnowledgeDocument(id=i, kind="faq", title="T", text="x", content_hash=h)
        for i, h in zip(ids, hashes, strict=True)
    ]
    await asyncio.gather(*(repository.upsert(d, [StoredChunk(d.id, 0, "x", b"\0" * 8)], "m") for d in documents))
    monkeypatch.undo()
    assert len(arrived) == (2 if interleave else 0)
    for document_id in set(ids):
        saved = await repository.get(document_id)
        assert saved is not None
        assert saved.content_hash in hashes
    changes = await repository.pending_changes()
    assert {doc for doc in changes.values() if doc in ids} == set(ids)
    for document_id in set(ids):  # the text saved last is the one its revision names: the newest change of it
        saved = await repository.get(document_id)
        assert saved is not None
        assert saved.revision == max(i for i, doc in changes.items() if doc == document_id)
    for document_id in set(ids):
        assert await repository.delete(document_id)
    await repository.settle_changes([i for i, doc in (await repository.pending_changes()).items() if doc in ids])


async def test_a_documents_revision_is_the_change_that_wrote_its_text(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Revisions order a document's versions across writers (the cache store keeps the newest one any replica
    declared): every new text gets a higher one, also a text changed back or a document deleted and written again;
    an unchanged text keeps its revision and leaves no change."""
    repository = KnowledgeRepository(sessions)
    doc_id = f"faq-revision-{secrets.token_hex(3)}"

    async def write(content_hash: str) -> int:
        document = KnowledgeDocument(id=doc_id, kind="faq", title="T", text=content_hash, content_hash=content_hash)
        await repository.upsert(document, [StoredChunk(doc_id, 0, content_hash, b"\0" * 8)], "m")
        assert (await repository.revisions())[doc_id] == (document.revision, content_hash)
        return document.revision

    async def changes() -> list[int]:
        return [i for i, doc in (await repository.pending_changes()).items() if doc == doc_id]

    first = await write("h1")
    assert await changes() == [first]
    assert await write("h1") == first
    assert await changes() == [first]
    second = await write("h2")
    third = await write("h1")  # back to the first text: a new version all the same
    assert first < second < third
    assert await changes() == [first, second, third]
    assert await repository.delete(doc_id)
    assert doc_id not in await repository.revisions()
    deletion = max(await changes())
    assert deletion > third
    assert await write("h1") > deletion
    assert await repository.delete(doc_id)
    await repository.settle_changes(await changes())
