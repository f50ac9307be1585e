"""SQLAlchemy models. The same tables on SQLite, MariaDB/MySQL and PostgreSQL (Alembic keeps them in step)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT ids everywhere but SQLite, where only INTEGER PRIMARY KEY autoincrements.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# Microsecond timestamps on MySQL/MariaDB so ordering within a second is kept.
Timestamp = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# Message text can exceed MySQL's 64 KiB TEXT when a store pastes long documents.
LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ApiKey(Base):
    """A signed-in user (or an operator with ``is_admin``); only the SHA-256 of the key is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class ChatSession(Base):
    """A conversation. ``owner_key_id`` NULL means anonymous: whoever holds the unguessable id owns it."""

    __tablename__ = "chat_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)
    locale: Mapped[str | None] = mapped_column(String(35), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class Conversation(Base):
    """One shopper message and the reply it got (the seed's ``conversations`` table, extended)."""

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_session_created", "session_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(32), unique=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("chat_sessions.id"))
    user_query: Mapped[str] = mapped_column(LongText)
    ai_response: Mapped[str] = mapped_column(LongText)
    model_used: Mapped[str] = mapped_column(String(100))
    provider: Mapped[str] = mapped_column(String(32))
    response_time_ms: Mapped[int] = mapped_column(Integer)
    cache_state: Mapped[str] = mapped_column(String(16), default="miss")
    action: Mapped[str] = mapped_column(String(16), default="answer")
    citations: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    tokens_in: Mapped[int] = mapped_column(Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    cost_saved_usd: Mapped[float] = mapped_column(Float, default=0.0)
    cache_similarity: Mapped[float | None] = mapped_column(Float, nullable=True)
    cache_matched: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    request_id: Mapped[str] = mapped_column(String(64))
    user_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)
    locale: Mapped[str | None] = mapped_column(String(35), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class Feedback(Base):
    """A shopper's thumbs up/down (and optional comment) on one reply; the latest one counts."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("conversations.message_id"), unique=True)
    rating: Mapped[str] = mapped_column(String(8))
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class KnowledgeDocument(Base):
    """A passage the bot may answer from: an FAQ entry, a policy section or a product record."""

    __tablename__ = "kb_documents"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(300))
    text: Mapped[str] = mapped_column(LongText)
    doc_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    source: Mapped[str] = mapped_column(String(300), default="")
    content_hash: Mapped[str] = mapped_column(String(64))
    # The knowledge revision (KnowledgeRevision) that wrote this text: ordered across every writer of the
    # document, unlike the hash (a cache store keeps the newest version any replica declared, not the last to arrive).
    revision: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class KnowledgeChunk(Base):
    """A searchable piece of a document with its embedding (float32 little-endian bytes)."""

    __tablename__ = "kb_chunks"
    __table_args__ = (Index("ix_kb_chunks_document", "document_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("kb_documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    model_id: Mapped[str] = mapped_column(String(64))


class KnowledgeRevision(Base):
    """One row: how many changes the knowledge has had (each added, changed or deleted document moves it on).

    Every writer of documents locks it first and moves it on in the transaction of its change, so revisions are in
    the order the changes committed; a process's copy of the knowledge read with revision N holds every change up
    to N. A cache store refuses answers from a copy older than the newest revision a replica declared when it
    invalidated (an added document reaches no earlier answer's tags).

    ``database_id``: random, drawn once by the first process to start on the database (see
    KnowledgeRepository.database_id); the cache store's keys carry it, so two databases on one cache tenant keep
    their answers and their revisions apart."""

    __tablename__ = "kb_revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    database_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class KnowledgeChange(Base):
    """A document added, changed or deleted whose cached answers are still to be removed (an outbox).

    Written in the transaction that changes the document and deleted once the cache store confirmed the removal,
    so a change is never forgotten: not when the cache store was down at the time, nor when the process that made
    it stopped before the store answered. Every replica drains it on its knowledge poll, and serves no cached
    answer while it is not empty (a replica started after the change would otherwise never see it as a change)."""

    __tablename__ = "kb_changes"
    # SQLite reuses the highest rowid once it is deleted: a drainer settling the ids it read could delete a change
    # written since under the same id. AUTOINCREMENT never reuses one (PostgreSQL and MariaDB never do).
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012 - SQLAlchemy's declarative attribute

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    document_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class KeyValue(Base):
    """Small facts about this installation (e.g. that the admin token was generated)."""

    __tablename__ = "app_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


__all__ = [
    "ApiKey",
    "Base",
    "ChatSession",
    "Conversation",
    "Feedback",
    "KeyValue",
    "KnowledgeChange",
    "KnowledgeChunk",
    "KnowledgeDocument",
]
