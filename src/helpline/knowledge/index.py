"""Vector index behind one small interface.

``MemoryVectorIndex`` (numpy, exact cosine over unit vectors) serves the embedded default and any backend: the
vectors live in the database (``kb_chunks.embedding``) and are loaded at start. A PostgreSQL deployment can swap in
a pgvector implementation of the same Protocol (``ORDER BY embedding <=> :query LIMIT :k`` over the same table)
without touching retrieval.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class IndexEntry:
    document_id: str
    ordinal: int


@dataclass(frozen=True, slots=True)
class IndexHit:
    document_id: str
    ordinal: int
    score: float


class VectorIndex(Protocol):
    def replace_document(self, document_id: str, vectors: npt.NDArray[np.float32]) -> None: ...

    def remove_document(self, document_id: str) -> None: ...

    def search(self, query: npt.NDArray[np.float32], k: int) -> list[IndexHit]: ...

    def __len__(self) -> int: ...


class MemoryVectorIndex:
    """Exact search; a few thousand store documents fit comfortably and search in well under a millisecond."""

    def __init__(self, dimensions: int) -> None:
        self._dimensions = dimensions
        self._entries: list[IndexEntry] = []
        self._matrix: npt.NDArray[np.float32] = np.zeros((0, dimensions), dtype=np.float32)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, entries: Sequence[IndexEntry], vectors: npt.NDArray[np.float32]) -> None:
        if len(entries) != vectors.shape[0]:
            raise ValueError("one vector per entry is needed")
        with self._lock:
            self._entries = list(entries)
            self._matrix = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self._dimensions)

    def replace_document(self, document_id: str, vectors: npt.NDArray[np.float32]) -> None:
        with self._lock:
            keep = [i for i, entry in enumerate(self._entries) if entry.document_id != document_id]
            entries = [self._entries[i] for i in keep]
            entries += [IndexEntry(document_id, ordinal) for ordinal in range(vectors.shape[0])]
            matrix = np.vstack([self._matrix[keep], vectors.reshape(-1, self._dimensions)])
            self._entries, self._matrix = entries, np.ascontiguousarray(matrix, dtype=np.float32)

    def remove_document(self, document_id: str) -> None:
        self.replace_document(document_id, np.zeros((0, self._dimensions), dtype=np.float32))

    def search(self, query: npt.NDArray[np.float32], k: int) -> list[IndexHit]:
        """The best chunk per document, best first, at most ``k`` documents."""
        with self._lock:
            entries, matrix = self._entries, self._matrix
        if not entries:
            return []
        scores = matrix @ query.astype(np.float32)
        hits: list[IndexHit] = []
        seen: set[str] = set()
        for i in np.argsort(-scores):
            entry = entries[int(i)]
            if entry.document_id in seen:
                continue
            seen.add(entry.document_id)
            hits.append(IndexHit(entry.document_id, entry.ordinal, float(scores[int(i)])))
            if len(hits) == k:
                break
        return hits
