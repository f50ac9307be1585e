"""KnowledgeBase: ingest documents (embed once, store in the database), keep the vector index, retrieve passages."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from helpline.knowledge import versions
from helpline.knowledge.documents import SourceDocument
from helpline.knowledge.embeddings import Embedder, Vectors, from_bytes, to_bytes
from helpline.knowledge.index import IndexEntry, MemoryVectorIndex
from helpline.knowledge.lexical import LexicalScorer
from helpline.store.models import KnowledgeDocument, utcnow
from helpline.store.repositories import KnowledgeRepository, StoredChunk

ProgressFn = Callable[[int, int], None]
_WORDS = re.compile(r"[^\W\d_]{3,}")  # letters of any script, as the cache's guard reads a question's words
INGEST_BATCH_DOCUMENTS = 64
# Dense candidates re-ranked by ``dense + LEXICAL_WEIGHT * lexical``; calibrated with
# tests/knowledge/test_retrieval_quality.py on the sample store's labelled questions.
CANDIDATES = 20
LEXICAL_WEIGHT = 0.2


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved document with the similarity of its best-matching chunk."""

    id: str
    kind: str
    title: str
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    version: str = ""  # which version of the document an answer drew on (see knowledge/versions.py)


@dataclass(slots=True)
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changed(self) -> list[str]:
        return self.added + self.updated


class KnowledgeBase:
    def __init__(self, repository: KnowledgeRepository, embedder: Embedder) -> None:
        self._repository = repository
        self._embedder = embedder
        self._index = MemoryVectorIndex(embedder.dimensions)
        self._documents: dict[str, Passage] = {}
        self._lexical = LexicalScorer()
        # The knowledge revision this copy was last read at from the database: it holds every change up to it (its
        # own writes since may be newer). A cache store refuses answers from a copy older than one a replica
        # declared (see the Invalidator).
        self.revision = 0
        self._revised = asyncio.Event()  # set (and replaced) when the revision moves on: see reached
        # Moves on with every change this process makes to its copy of the knowledge. An answer retrieved under
        # one epoch and finished under another may have missed a document added meanwhile (no version reaches
        # that): it is not cached (see ChatService).
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._documents)

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    async def load(self) -> None:
        """Fill the index from the database (vectors were computed at ingest, so start-up embeds nothing)."""
        revision = await self._repository.revision()  # first: the rows read next hold at least its changes
        documents = await self._repository.documents()
        chunks = await self._repository.all_chunks()
        self._documents = {row.id: _passage(row) for row in documents}
        self._lexical.load((doc.id, _lexical_text(doc)) for doc in self._documents.values())
        vectors = (
            np.vstack([from_bytes(chunk.embedding) for chunk in chunks])
            if chunks
            else np.zeros((0, self._embedder.dimensions))
        )
        self._index.load([IndexEntry(c.document_id, c.ordinal) for c in chunks], vectors.astype(np.float32))
        self.epoch += 1
        self._revise(revision)

    def _revise(self, revision: int) -> None:
        self.revision = revision
        revised, self._revised = self._revised, asyncio.Event()
        revised.set()

    async def reached(self, revision: int) -> None:
        """Returns once this copy holds every change up to ``revision`` (it was read from the database at it or
        later)."""
        while self.revision < revision:
            await self._revised.wait()

    async def ingest(self, documents: Sequence[SourceDocument], progress: ProgressFn | None = None) -> IngestReport:
        """Store new and changed documents with their embeddings; unchanged ones cost nothing.

        Embeddings are computed in batches across documents (the slow part), then each document is written in
        its own transaction, so an interrupted ingest leaves every document either old or new, never half.
        """
        known = await self._repository.content_hashes()
        report = IngestReport()
        todo = [doc for doc in documents if known.get(doc.id) != doc.content_hash()]
        report.unchanged = len(documents) - len(todo)
        for start in range(0, len(todo), INGEST_BATCH_DOCUMENTS):
            batch = todo[start : start + INGEST_BATCH_DOCUMENTS]
            texts = [doc.chunks() for doc in batch]
            vectors = await self._embedder.aembed([text for chunk_texts in texts for text in chunk_texts])
            offset = 0
            for document, chunk_texts in zip(batch, texts, strict=True):
                await self._store(document, chunk_texts, vectors[offset : offset + len(chunk_texts)])
                offset += len(chunk_texts)
                (report.updated if document.id in known else report.added).append(document.id)
            if progress is not None:
                progress(start + len(batch), len(todo))
        return report

    async def upsert(self, document: SourceDocument) -> None:
        texts = document.chunks()
        await self._store(document, texts, await self._embedder.aembed(texts))

    async def delete(self, document_id: str) -> bool:
        """Remove a document from the database and from this process's index; whether it existed."""
        existed = await self._repository.delete(document_id)
        self._forget(document_id)
        return existed

    def _remember(self, row: KnowledgeDocument, vectors: Vectors) -> None:
        """A document's new version into this process's copy (index, passages with their versions, lexical scores)."""
        self.epoch += 1
        self._index.replace_document(row.id, vectors)
        passage = _passage(row)
        self._documents[row.id] = passage
        self._lexical.replace(row.id, _lexical_text(passage))

    def _forget(self, document_id: str) -> None:
        self.epoch += 1
        self._index.remove_document(document_id)
        self._lexical.remove(document_id)
        self._documents.pop(document_id, None)

    async def _store(self, document: SourceDocument, texts: list[str], vectors: Vectors) -> None:
        row = KnowledgeDocument(
            id=document.id,
            kind=document.kind,
            title=document.title[:300],
            text=document.text,
            doc_metadata=document.metadata,
            tags=document.tags,
            source=document.source[-300:],
            content_hash=document.content_hash(),
            updated_at=utcnow(),
        )
        chunks = [
            StoredChunk(document.id, ordinal, text, to_bytes(vector))
            for ordinal, (text, vector) in enumerate(zip(texts, vectors, strict=True))
        ]
        await self._repository.upsert(row, chunks, self._embedder.model_id)
        self._remember(row, vectors)

    async def search(self, query: str, k: int) -> list[Passage]:
        """The ``k`` best passages for a question, scored by meaning and by the rare words they share."""
        (vector,) = await self._embedder.aembed([query])
        return self.search_vector(vector, k, query)

    def search_vector(self, vector: Vectors, k: int, query: str = "") -> list[Passage]:
        passages = []
        for hit in self._index.search(vector, max(k, CANDIDATES)):
            document = self._documents.get(hit.document_id)
            if document is not None:
                lexical = self._lexical.score(query, hit.document_id) if query else 0.0
                passages.append(_with_score(document, hit.score + LEXICAL_WEIGHT * lexical))
        passages.sort(key=lambda passage: passage.score, reverse=True)
        return passages[:k]

    async def refresh(self) -> list[str]:
        """Pick up documents another process added, changed or deleted; the ids that changed.

        Every replica keeps its own index, so each polls the database's versions (cheap: one small query) and
        reloads only what moved. A document is taken at the version of the row it reloaded (it may have changed
        again since the first query: the next poll picks that up)."""
        revision, found = await self._repository.versions()
        current = {doc_id: versions.version(*version) for doc_id, version in found.items()}
        changed = [doc_id for doc_id, version in current.items() if self.version(doc_id) != version]
        removed = [doc_id for doc_id in self._documents if doc_id not in current]
        for doc_id in removed:
            self._forget(doc_id)
        reloaded = await self._repository.documents(changed) if changed else []
        for row in reloaded:
            chunks = await self._repository.chunks_for(row.id)
            self._remember(row, np.vstack([from_bytes(c.embedding) for c in chunks]))
        for doc_id in set(changed).difference(row.id for row in reloaded):  # deleted since the first query
            self._forget(doc_id)
        self._revise(revision)
        return changed + removed

    async def database_id(self) -> str:
        """The database's identity (drawn once; see KnowledgeRepository.database_id)."""
        return await self._repository.database_id()

    async def database_revision(self) -> int:
        """The knowledge revision in the database now (this copy may be behind it)."""
        return await self._repository.revision()

    async def pending_changes(self) -> dict[int, str]:
        """Changes whose cached answers are still to be removed, by any process (see KnowledgeChange)."""
        return await self._repository.pending_changes()

    async def settle_changes(self, change_ids: Collection[int]) -> None:
        await self._repository.settle_changes(change_ids)

    def product_vocabulary(self) -> set[str]:
        """Words that name products but are not common in the FAQ and policies (for the cache's product guard)."""
        return product_vocabulary((p.kind, p.title, p.text) for p in self._documents.values())

    def passages(self) -> list[Passage]:
        return list(self._documents.values())

    def get(self, document_id: str) -> Passage | None:
        return self._documents.get(document_id)

    def version(self, document_id: str) -> str | None:
        """The version of the document this process has (knowledge/versions.py); None when it has no such
        document."""
        document = self._documents.get(document_id)
        return None if document is None else document.version


def _passage(row: KnowledgeDocument) -> Passage:
    return Passage(
        row.id, row.kind, row.title, row.text, 0.0, dict(row.doc_metadata or {}), tuple(row.tags or ()),
        _version(row),
    )  # fmt: skip


def _version(row: KnowledgeDocument) -> str:
    return versions.version(row.revision or 0, row.content_hash)


def _with_score(passage: Passage, score: float) -> Passage:
    return replace(passage, score=score)


def _lexical_text(passage: Passage) -> str:
    return f"{passage.title}\n{passage.text}"


def product_vocabulary(documents: Iterable[tuple[str, str, str]]) -> set[str]:
    """Words of product titles that the FAQ and policies do not use: they name what the store sells."""
    product_words: set[str] = set()
    other_words: set[str] = set()
    for kind, title, text in documents:
        if kind == "product":
            product_words.update(_WORDS.findall(title.lower()))
        else:
            other_words.update(_WORDS.findall(f"{title} {text}".lower()))
    return product_words - other_words
