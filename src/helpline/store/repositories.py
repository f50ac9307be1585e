"""Repositories: every SQL statement Helpline runs lives here, built with SQLAlchemy (always parameterised)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import operator
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import Connection, Dialect, Table, delete, func, insert, or_, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from helpline.store.models import (
    ApiKey,
    ChatSession,
    Conversation,
    Feedback,
    KeyValue,
    KnowledgeChange,
    KnowledgeChunk,
    KnowledgeDocument,
    KnowledgeRevision,
    utcnow,
)
from helpline.store.writer import ConversationWriter, PendingSession

if TYPE_CHECKING:
    from helpline.store.sqlite_writer import WritingProcess

API_KEY_PREFIX = "hl_"
CHANGES_READ = 5000  # knowledge changes drained per read (an ingest of a whole catalogue leaves one per document)
CHANGES_DELETED = 500  # ids per delete statement
_T = TypeVar("_T")
DEADLOCK_TRIES = 4  # a knowledge write the database chose as a deadlock's victim is run again, this often in all
RETRIED_ERRORS = ("deadlock", "duplicate", "database is locked")  # what a knowledge write is run again for


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a high-entropy secret; keys are random, so no slow KDF is needed to resist guessing."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _millis_hex() -> str:
    """The time in ms as 12 hex digits: ids made later sort after those made earlier (until the year 10889)."""
    return f"{time.time_ns() // 1_000_000:012x}"


def new_session_id() -> str:
    """A server-issued, unguessable conversation id: its creation time (ms), then 144 random bits.

    Time first, as in UUIDv7 or ULID: a new conversation's rows land at the end of the B-tree indexes that lead
    with its id (the sessions' primary key, the conversations' (session_id, created_at) index) instead of at a
    random leaf each. With random ids every hit rewrote about three scattered pages per batch, in the WAL and again
    at the checkpoint: on SQLite that was 60% of the writing thread's CPU (56 -> 22 µs a cached answer, bench
    server, 32 connections); MariaDB's and PostgreSQL's indexes fill and split the same way. The random part
    alone is far beyond guessing; the time it reveals is only the conversation's start, to its own holder."""
    return f"s_{_millis_hex()}{secrets.token_urlsafe(18)}"


def new_message_id() -> str:
    """32 hex digits: creation time (ms, 48 bits) then 80 random bits; time first for the same reason as
    sessions' (the unique index on it). Unguessable, so an anonymous shopper's id can stand for their message."""
    return _millis_hex() + secrets.token_hex(10)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a signed-in API key holder, or anonymous (``key_id`` None)."""

    key_id: int | None = None
    name: str = "anonymous"
    is_admin: bool = False


ANONYMOUS = Principal()


@dataclass(slots=True)
class ConversationRecord:
    """What ChatService hands the store for one exchange."""

    session_id: str
    user_query: str
    ai_response: str
    model_used: str
    provider: str
    response_time_ms: int
    request_id: str
    cache_state: str = "miss"
    action: str = "answer"
    citations: list[dict[str, str]] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    cost_saved_usd: float = 0.0
    cache_similarity: float | None = None
    cache_matched: str | None = None
    error: str | None = None
    user_key_id: int | None = None
    locale: str | None = None
    message_id: str = field(default_factory=new_message_id)
    created_at: datetime = field(default_factory=utcnow)


class ApiKeyRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def create(self, name: str, *, is_admin: bool = False) -> tuple[str, ApiKey]:
        """Create a key; the plain key is returned once and never stored."""
        plain = API_KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(
            name=name,
            key_hash=hash_secret(plain),
            key_prefix=plain[:10],
            is_admin=is_admin,
            created_at=utcnow(),
        )
        async with self._sessions.begin() as session:
            session.add(row)
        return plain, row

    async def authenticate(self, plain: str) -> Principal | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(ApiKey).where(ApiKey.key_hash == hash_secret(plain), ApiKey.revoked_at.is_(None))
            )
        if row is None:
            return None
        return Principal(key_id=row.id, name=row.name, is_admin=row.is_admin)

    async def count_admins(self) -> int:
        async with self._sessions() as session:
            count = await session.scalar(
                select(func.count()).select_from(ApiKey).where(ApiKey.is_admin.is_(True), ApiKey.revoked_at.is_(None))
            )
        return int(count or 0)


class ConversationRepository:
    """Sessions and exchanges. With a :class:`ConversationWriter`, writes leave the request path (write-behind)
    and reads flush first, so callers see their own writes."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        writer: ConversationWriter | None = None,
        *,
        writing_process: WritingProcess | None = None,
    ) -> None:
        self._sessions = sessions
        self._writer = writer
        self._writing_process = writing_process  # write_batch's transactions run there when given (SQLite files)

    async def create_session(self, owner: Principal, locale: str | None) -> str:
        session_id = new_session_id()
        if self._writer is not None:
            self._writer.add_session(PendingSession(session_id, owner.key_id, locale))
            return session_id
        async with self._sessions.begin() as session:
            session.add(ChatSession(id=session_id, owner_key_id=owner.key_id, locale=locale, created_at=utcnow()))
        return session_id

    async def session_owner(self, session_id: str) -> tuple[bool, int | None]:
        """(exists, owner key id) for a session."""
        pending = self._writer.pending_session(session_id) if self._writer is not None else None
        if pending is not None:
            return True, pending.owner_key_id
        async with self._sessions() as session:
            row = await session.execute(select(ChatSession.owner_key_id).where(ChatSession.id == session_id))
            found = row.first()
        if found is None:
            return False, None
        return True, found[0]

    async def add(self, record: ConversationRecord) -> None:
        if self._writer is not None:
            self._writer.add(record)
            return
        async with self._sessions.begin() as session:
            session.add(_to_row(record))

    async def flush(self) -> None:
        if self._writer is not None:
            await self._writer.flush()

    async def write_batch(self, items: Sequence[object]) -> None:
        """One transaction for a write-behind batch: bulk INSERTs (Core, not the ORM's unit of work, which costs
        far more per row), sessions first so every exchange finds its session. On an SQLite file, whole on its
        writing process (``sqlite_writer``), as tuples bound by position there (:class:`PositionalInsert`)."""
        if self._writing_process is not None:
            await self._writing_process.write(*batch_rows(items))
            return
        sessions = [
            {"id": i.session_id, "owner_key_id": i.owner_key_id, "locale": i.locale, "created_at": utcnow()}
            for i in items
            if isinstance(i, PendingSession)
        ]
        exchanges = [_row_values(i) for i in items if isinstance(i, ConversationRecord)]
        async with self._sessions.begin() as session:
            connection = await session.connection()
            if sessions:
                await connection.execute(insert(cast(Table, ChatSession.__table__)), sessions)
            if exchanges:
                await connection.execute(insert(cast(Table, Conversation.__table__)), exchanges)

    async def history(self, session_id: str, limit: int = 200) -> list[Conversation]:
        """The session's exchanges, oldest first (the most recent ``limit`` of them)."""
        await self.flush()
        async with self._sessions() as session:
            rows = await session.scalars(
                select(Conversation)
                .where(Conversation.session_id == session_id)
                .order_by(Conversation.created_at.desc(), Conversation.id.desc())
                .limit(limit)
            )
            return list(reversed(rows.all()))

    async def count(self) -> int:
        await self.flush()
        async with self._sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(Conversation)) or 0)

    async def count_sessions(self) -> int:
        await self.flush()
        async with self._sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(ChatSession)) or 0)

    # --- the admin dashboard (web/): activity rows, a conversation search and a keyset-paged export ---

    async def activity_since(self, since: datetime, limit: int = 200_000) -> list[tuple[Any, ...]]:
        """(created_at, latency ms, cache, provider, action, cost, cost saved) of recent exchanges, oldest first;
        the dashboard buckets them by hour in Python (percentiles are not portable SQL)."""
        await self.flush()
        query = (
            select(
                Conversation.created_at, Conversation.response_time_ms, Conversation.cache_state,
                Conversation.provider, Conversation.action, Conversation.cost_usd, Conversation.cost_saved_usd,
            )
            .where(Conversation.created_at >= since)
            .order_by(Conversation.id)
            .limit(limit)
        )  # fmt: skip
        async with self._sessions() as session:
            return [tuple(row) for row in (await session.execute(query)).all()]

    async def feedback_counts(self) -> dict[str, int]:
        """Thumbs by rating, e.g. ``{"up": 3, "down": 1}``."""
        async with self._sessions() as session:
            rows = await session.execute(select(Feedback.rating, func.count()).group_by(Feedback.rating))
            return {str(rating): int(count) for rating, count in rows.all()}

    async def search(self, filters: dict[str, str], limit: int = 50) -> list[Conversation]:
        """Newest first; ``q`` is a substring of the question or reply (LIKE wildcards escaped), and ``provider``,
        ``cache`` and ``action`` must match exactly."""
        await self.flush()
        query = select(Conversation).order_by(Conversation.id.desc()).limit(limit)
        if q := filters.get("q"):
            asked = Conversation.user_query.contains(q, autoescape=True)
            query = query.where(asked | Conversation.ai_response.contains(q, autoescape=True))
        for name, column in (
            ("provider", Conversation.provider), ("cache", Conversation.cache_state), ("action", Conversation.action),
        ):  # fmt: skip
            if value := filters.get(name):
                query = query.where(column == value)
        async with self._sessions() as session:
            return list((await session.scalars(query)).all())

    async def export_page(self, after_id: int, limit: int = 500) -> list[tuple[Conversation, str | None, str | None]]:
        """The next ``limit`` exchanges after ``after_id`` (keyset: no OFFSET), each with its feedback, if any."""
        query = (
            select(Conversation, Feedback.rating, Feedback.comment)
            .outerjoin(Feedback, Feedback.message_id == Conversation.message_id)
            .where(Conversation.id > after_id)
            .order_by(Conversation.id)
            .limit(limit)
        )
        async with self._sessions() as session:
            return [(row[0], row[1], row[2]) for row in (await session.execute(query)).all()]


class PositionalInsert:
    """A multi-row INSERT bound by position: SQLite's writing process (``sqlite_writer``) writes a batch with it.

    SQLAlchemy's executemany builds and processes a dict per row: 17 µs of CPU a record; this way, 12 µs, of which
    about 5 are SQLite's own work. It binds tuples read straight off the records, converts them with the bind
    processors of the same column types (the timestamp's text form, the JSON), so what the app reads back is what
    SQLAlchemy itself would have written (tested), and sends up to ``PAGE`` rows a statement: one statement step,
    not one a row. ``idempotent`` adds ``ON CONFLICT DO NOTHING``: a row whose unique key is already there is
    skipped (any other violation, a NULL where none may be, still fails), for a batch that may already be in (see
    ``sqlite_writer``).

    ``columns`` are given in the table's order (checked), which the compiled statement follows; rows bind in it."""

    PAGE = 64  # rows a statement, fewer where the database allows fewer parameters (SQLite before 3.32: 999)

    def __init__(self, table: Table, columns: Sequence[str]) -> None:
        self.table = table
        self.columns = tuple(columns)
        in_table_order = tuple(column.name for column in table.columns if column.name in self.columns)
        if in_table_order != self.columns:
            raise ValueError(f"{table.name}: columns must be its own, in its order: {in_table_order}")
        self._dialect: Dialect | None = None
        self._processors: list[tuple[int, Callable[[Any], Any]]] = []
        self._head = self._group = ""
        self._page = 1
        self._statements: dict[tuple[int, bool], str] = {}

    def execute(self, connection: Connection, rows: Sequence[Sequence[Any]], *, idempotent: bool = False) -> None:
        if connection.dialect is not self._dialect:
            self._prepare(connection.dialect)
        processors, page_rows = self._processors, self._page
        for start in range(0, len(rows), page_rows):
            page = rows[start : start + page_rows]
            values: list[Any] = []
            for row in page:
                converted = list(row)
                for index, process in processors:
                    converted[index] = process(converted[index])
                values.extend(converted)
            connection.exec_driver_sql(self._sql(len(page), idempotent), tuple(values))

    def _prepare(self, dialect: Dialect) -> None:
        compiled = insert(self.table).compile(dialect=dialect, column_keys=list(self.columns))
        if tuple(compiled.positiontup or ()) != self.columns:  # the statement binds in another order: refuse
            raise RuntimeError(f"{self.table.name}: unexpected parameter order {compiled.positiontup}")
        head, separator, group = str(compiled).partition(" VALUES ")
        if not separator:
            raise RuntimeError(f"{self.table.name}: unexpected INSERT form")
        self._head, self._group = head + separator, group
        self._page = max(1, min(self.PAGE, dialect.insertmanyvalues_max_parameters // len(self.columns)))
        self._statements = {}
        self._processors = []
        for index, name in enumerate(self.columns):
            process = self.table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self._processors.append((index, process))
        self._dialect = dialect

    def _sql(self, rows: int, idempotent: bool) -> str:
        statement = self._statements.get((rows, idempotent))
        if statement is None:
            statement = self._head + ", ".join([self._group] * rows) + (" ON CONFLICT DO NOTHING" if idempotent else "")
            self._statements[rows, idempotent] = statement
        return statement


_SESSIONS = PositionalInsert(cast(Table, ChatSession.__table__), ("id", "owner_key_id", "locale", "created_at"))
_EXCHANGES = PositionalInsert(
    cast(Table, Conversation.__table__),
    tuple(column.name for column in Conversation.__table__.columns if column.name != "id"),
)
# A record's fields are the columns' names (an import-time error if one is not, or one is missing).
_exchange_row = operator.attrgetter(*_EXCHANGES.columns)
if {field.name for field in dataclasses.fields(ConversationRecord)} != set(_EXCHANGES.columns):
    raise ImportError("ConversationRecord's fields and the conversations table's columns differ")


def batch_rows(items: Sequence[object]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """A write-behind batch as :func:`write_rows` takes it: new sessions as (id, owner_key_id, locale), and each
    exchange's fields in ``_EXCHANGES.columns``' order."""
    sessions = [(i.session_id, i.owner_key_id, i.locale) for i in items if isinstance(i, PendingSession)]
    return sessions, [_exchange_row(i) for i in items if isinstance(i, ConversationRecord)]


def write_rows(
    connection: Connection,
    sessions: Sequence[tuple[Any, ...]],
    exchanges: Sequence[tuple[Any, ...]],
    *,
    idempotent: bool = False,
) -> None:
    """A write-behind batch in SQLite's writing process: sessions first, so every exchange finds its session.
    ``sessions`` and ``exchanges`` as :func:`batch_rows` makes them; the sessions are created now."""
    if sessions:
        now = utcnow()
        _SESSIONS.execute(connection, [(*session, now) for session in sessions], idempotent=idempotent)
    if exchanges:
        _EXCHANGES.execute(connection, exchanges, idempotent=idempotent)


def _row_values(record: ConversationRecord) -> dict[str, Any]:
    """The record as column values (its fields are the columns, checked at import)."""
    return dict(zip(_EXCHANGES.columns, _exchange_row(record), strict=True))


def _to_row(record: ConversationRecord) -> Conversation:
    return Conversation(**_row_values(record))


@dataclass(slots=True)
class StoredChunk:
    document_id: str
    ordinal: int
    text: str
    embedding: bytes


class KnowledgeRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def content_hashes(self) -> dict[str, str]:
        async with self._sessions() as session:
            rows = await session.execute(select(KnowledgeDocument.id, KnowledgeDocument.content_hash))
            return {doc_id: digest for doc_id, digest in rows.all()}

    async def versions(self) -> tuple[int, dict[str, tuple[int, str]]]:
        """The knowledge revision, and every document's (revision, content hash), read in one statement (one
        snapshot: the documents hold every change up to that revision, none after it)."""
        counter = select(KnowledgeRevision.revision).where(KnowledgeRevision.id == 1)
        query = select(
            counter.scalar_subquery(), KnowledgeDocument.id, KnowledgeDocument.revision, KnowledgeDocument.content_hash
        )
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
            if not rows:  # no document: nothing to be out of step with
                return int(await session.scalar(counter) or 0), {}
        return int(rows[0][0] or 0), {doc_id: (int(revision), digest) for _, doc_id, revision, digest in rows}

    async def revision(self) -> int:
        """The knowledge revision now (read before the documents, a copy claims no change it may lack)."""
        async with self._sessions() as session:
            return int(await session.scalar(select(KnowledgeRevision.revision).where(KnowledgeRevision.id == 1)) or 0)

    async def database_id(self) -> str:
        """This database's identity: random, drawn by the first process to ask and kept in the knowledge revision's
        row (under its lock, so processes starting together agree on one). A copy of the database file or a
        restored backup keeps it; a database built afresh draws its own."""
        row = KnowledgeRevision.id == 1
        async with self._sessions() as session:
            found = await session.scalar(select(KnowledgeRevision.database_id).where(row))
        if found:
            return str(found)

        async def claim(session: AsyncSession) -> str:
            await self._lock_revision(session)
            unclaimed = row & KnowledgeRevision.database_id.is_(None)
            await session.execute(update(KnowledgeRevision).where(unclaimed).values(database_id=secrets.token_hex(8)))
            return str(await session.scalar(select(KnowledgeRevision.database_id).where(row)))

        return await self._transaction(claim)

    @staticmethod
    async def _lock_revision(session: AsyncSession) -> int:
        """Take the knowledge revision's row until commit (every writer of documents takes it first: changes then
        commit one at a time, in revision order) and return it.

        By writing it: SQLite ignores ``FOR UPDATE``, and its driver begins the transaction only at the first
        write, so a locking read let two processes on one file read the same revision and both write the next
        (found by a review, session 20). A write takes SQLite's one write lock (another process waits in the busy
        handler) and the row's lock on PostgreSQL and MariaDB."""
        row = KnowledgeRevision.id == 1
        await session.execute(update(KnowledgeRevision).where(row).values(revision=KnowledgeRevision.revision))
        found = await session.scalar(select(KnowledgeRevision.revision).where(row))
        if found is None:  # a database the migration did not seed (two first writers: one runs again, duplicate)
            session.add(KnowledgeRevision(id=1, revision=0))
            await session.flush()
            return 0
        return int(found)

    @staticmethod
    async def _next_revision(session: AsyncSession, locked: int) -> int:
        await session.execute(update(KnowledgeRevision).where(KnowledgeRevision.id == 1).values(revision=locked + 1))
        return locked + 1

    async def count(self) -> int:
        async with self._sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(KnowledgeDocument)) or 0)

    async def _transaction(self, work: Callable[[AsyncSession], Awaitable[_T]]) -> _T:
        """Run ``work`` in a transaction, again when the database aborted it: to break a deadlock (two writes of
        new documents at once deadlocked on MariaDB on the gap locks of their chunk deletes, found by a review in
        session 19; writers now queue on the knowledge revision's row first, the retry stays as a net), because a
        first writer seeding that row met another (a duplicate key), or because an SQLite file stayed locked by
        another process past the busy timeout. The loser's change was a 500 for an admin or a failed ingest."""
        for attempt in range(1, DEADLOCK_TRIES + 1):
            try:
                async with self._sessions.begin() as session:
                    return await work(session)
            except DBAPIError as error:
                reason = str(error.orig).lower()
                if attempt == DEADLOCK_TRIES or not any(word in reason for word in RETRIED_ERRORS):
                    raise
                await asyncio.sleep(0.01 * attempt + secrets.randbelow(10) / 1000)
        raise AssertionError  # pragma: no cover - the loop returns or raises

    async def upsert(self, document: KnowledgeDocument, chunks: Sequence[StoredChunk], model_id: str) -> None:
        """Replace a document and its chunks in one transaction; a new or changed text moves the knowledge revision
        on (the document's revision, set on ``document``; an unchanged text keeps the one it had) and leaves a
        change to drain (:meth:`pending_changes`) in the same transaction."""

        async def write(session: AsyncSession) -> None:
            # Writers of documents take the revision first, so each compares with the version the one before left
            # (a change back to an older text still leaves its change) and gets the next revision.
            locked = await self._lock_revision(session)
            before = (
                await session.execute(
                    select(KnowledgeDocument.content_hash, KnowledgeDocument.revision).where(
                        KnowledgeDocument.id == document.id
                    )
                )
            ).first()
            if before is None or before.content_hash != document.content_hash:
                document.revision = await self._next_revision(session, locked)
                session.add(KnowledgeChange(document_id=document.id, created_at=utcnow()))
            else:
                document.revision = before.revision
            await session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.document_id == document.id))
            await session.merge(document)
            await session.flush()
            session.add_all(
                [
                    KnowledgeChunk(
                        document_id=chunk.document_id,
                        ordinal=chunk.ordinal,
                        text=chunk.text,
                        embedding=chunk.embedding,
                        model_id=model_id,
                    )
                    for chunk in chunks
                ]
            )

        await self._transaction(write)

    async def get(self, document_id: str) -> KnowledgeDocument | None:
        async with self._sessions() as session:
            return await session.get(KnowledgeDocument, document_id)

    async def delete(self, document_id: str) -> bool:
        """Remove a document and its chunks in one transaction, leaving a change to drain; whether it existed."""

        async def remove(session: AsyncSession) -> bool:
            locked = await self._lock_revision(session)
            await session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.document_id == document_id))
            result = await session.execute(delete(KnowledgeDocument).where(KnowledgeDocument.id == document_id))
            existed = bool(getattr(result, "rowcount", 0))
            if existed:
                await self._next_revision(session, locked)
                session.add(KnowledgeChange(document_id=document_id, created_at=utcnow()))
            return existed

        return await self._transaction(remove)

    async def pending_changes(self) -> dict[int, str]:
        """The oldest changes not yet drained (at most CHANGES_READ): change id -> document id."""
        query = select(KnowledgeChange.id, KnowledgeChange.document_id).order_by(KnowledgeChange.id)
        query = query.limit(CHANGES_READ)
        async with self._sessions() as session:
            return {change_id: doc_id for change_id, doc_id in (await session.execute(query)).all()}

    async def settle_changes(self, change_ids: Collection[int]) -> None:
        """Forget changes whose cached answers are gone (only those read: one made since stays)."""
        ids = sorted(change_ids)
        for start in range(0, len(ids), CHANGES_DELETED):
            async with self._sessions.begin() as session:
                await session.execute(
                    delete(KnowledgeChange).where(KnowledgeChange.id.in_(ids[start : start + CHANGES_DELETED]))
                )

    async def find(self, q: str = "", kind: str = "", limit: int = 500) -> list[tuple[str, str, str, datetime]]:
        """(id, kind, title, updated at) of the documents whose id, title or text contains ``q`` (any case, LIKE
        wildcards escaped) and of ``kind`` when given, by id; at most ``limit`` (the dashboard's document list)."""
        query = (
            select(KnowledgeDocument.id, KnowledgeDocument.kind, KnowledgeDocument.title, KnowledgeDocument.updated_at)
            .order_by(KnowledgeDocument.id)
            .limit(limit)
        )
        if q:
            needle = q.lower()  # case-insensitive on every backend (PostgreSQL's LIKE is not)
            columns = (KnowledgeDocument.id, KnowledgeDocument.title, KnowledgeDocument.text)
            query = query.where(or_(*(func.lower(column).contains(needle, autoescape=True) for column in columns)))
        if kind:
            query = query.where(KnowledgeDocument.kind == kind)
        async with self._sessions() as session:
            return [(row[0], row[1], row[2], row[3]) for row in (await session.execute(query)).all()]

    async def documents(self, ids: Sequence[str] | None = None) -> list[KnowledgeDocument]:
        async with self._sessions() as session:
            query = select(KnowledgeDocument)
            if ids is not None:
                query = query.where(KnowledgeDocument.id.in_(list(ids)))
            return list((await session.scalars(query)).all())

    async def all_chunks(self) -> list[StoredChunk]:
        return await self._chunks(None)

    async def chunks_for(self, document_id: str) -> list[StoredChunk]:
        return await self._chunks(document_id)

    async def _chunks(self, document_id: str | None) -> list[StoredChunk]:
        query = select(
            KnowledgeChunk.document_id, KnowledgeChunk.ordinal, KnowledgeChunk.text, KnowledgeChunk.embedding
        ).order_by(KnowledgeChunk.document_id, KnowledgeChunk.ordinal)
        if document_id is not None:
            query = query.where(KnowledgeChunk.document_id == document_id)
        async with self._sessions() as session:
            rows = await session.execute(query)
            return [StoredChunk(doc_id, ordinal, chunk_text, blob) for doc_id, ordinal, chunk_text, blob in rows.all()]


class FeedbackRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def message_owner(self, message_id: str) -> tuple[bool, int | None]:
        """(exists, owner key id of the message's conversation)."""
        async with self._sessions() as session:
            row = await session.execute(
                select(ChatSession.owner_key_id)
                .join(Conversation, Conversation.session_id == ChatSession.id)
                .where(Conversation.message_id == message_id)
            )
            found = row.first()
        return (False, None) if found is None else (True, found[0])

    async def upsert(self, message_id: str, rating: str, comment: str | None) -> None:
        async with self._sessions.begin() as session:
            existing = await session.scalar(select(Feedback).where(Feedback.message_id == message_id))
            if existing is None:
                session.add(Feedback(message_id=message_id, rating=rating, comment=comment, created_at=utcnow()))
            else:
                existing.rating, existing.comment, existing.created_at = rating, comment, utcnow()

    async def get(self, message_id: str) -> Feedback | None:
        async with self._sessions() as session:
            return await session.scalar(select(Feedback).where(Feedback.message_id == message_id))


class StateRepository:
    """Installation facts in ``app_state``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def get(self, key: str) -> str | None:
        async with self._sessions() as session:
            row = await session.get(KeyValue, key)
            return None if row is None else row.value

    async def put(self, key: str, value: str) -> None:
        async with self._sessions.begin() as session:
            await session.merge(KeyValue(key=key, value=value, updated_at=utcnow()))


async def ping(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Round-trip to the database; raises when it does not answer."""
    async with sessions() as session:
        await session.execute(text("SELECT 1"))


def as_utc(moment: datetime) -> datetime:
    """SQLite and MySQL hand back naive datetimes; we only ever store UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def as_message(row: Conversation) -> dict[str, Any]:
    """A stored exchange in the contract's message shape."""
    return {
        "message_id": row.message_id,
        "message": row.user_query,
        "reply": row.ai_response,
        "provider": row.provider,
        "model": row.model_used,
        "cache": row.cache_state,
        "action": row.action,
        "citations": row.citations,
        "created_at": as_utc(row.created_at).isoformat(),
    }
