"""Cache storage behind one Protocol: in-process memory (embedded default) and Redis (single node or Cluster).

Values are opaque bytes (the cache compresses them). Besides get/put, a backend keeps per-scope semantic indexes
(key → question and vector) with a version number, tag sets for invalidation and a popularity counter.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class IndexedQuestion:
    key: str
    question: str
    vector: bytes
    answer_key: str = ""  # entries with equal answer keys give the same answer (same cited documents)


class CacheBackend(Protocol):
    kind: str

    async def get(self, key: str) -> bytes | None: ...

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        ttl_s: int,
        tags: Sequence[str],
        scope_id: str,
        question: str,
        vector: bytes,
        answer_key: str = "",
    ) -> None: ...

    async def semantic_version(self, scope_id: str) -> int: ...

    async def semantic_entries(self, scope_id: str) -> list[IndexedQuestion]: ...

    async def forget(self, key: str) -> None: ...

    async def invalidate(self, tags: Sequence[str]) -> list[str]: ...

    async def tag_members(self, tag: str) -> list[str]: ...

    async def bump_popularity(self, counts: Mapping[str, int]) -> None: ...

    async def popularity(self, keys: Sequence[str]) -> dict[str, int]: ...

    async def lock(self, key: str, ttl_s: float) -> bool: ...

    async def unlock(self, key: str) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


@dataclass
class _Scope:
    version: int = 0
    entries: dict[str, IndexedQuestion] = field(default_factory=dict)


class MemoryBackend:
    """One process's cache: exact, same semantics as Redis (TTL, tags, versions), nothing shared."""

    kind = "memory"

    def __init__(self) -> None:
        self._clock = time.monotonic
        self._values: dict[str, tuple[bytes, float]] = {}
        self._scopes: dict[str, _Scope] = {}
        self._tags: dict[str, set[str]] = {}
        self._popularity: dict[str, int] = {}
        self._locks: dict[str, float] = {}

    async def get(self, key: str) -> bytes | None:
        found = self._values.get(key)
        if found is None:
            return None
        if found[1] <= self._clock():
            await self.forget(key)
            return None
        return found[0]

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        ttl_s: int,
        tags: Sequence[str],
        scope_id: str,
        question: str,
        vector: bytes,
        answer_key: str = "",
    ) -> None:
        self._values[key] = (value, self._clock() + ttl_s)
        scope = self._scopes.setdefault(scope_id, _Scope())
        scope.entries[key] = IndexedQuestion(key, question, vector, answer_key)
        scope.version += 1
        for tag in tags:
            self._tags.setdefault(tag, set()).add(key)

    async def semantic_version(self, scope_id: str) -> int:
        scope = self._scopes.get(scope_id)
        return scope.version if scope else 0

    async def semantic_entries(self, scope_id: str) -> list[IndexedQuestion]:
        scope = self._scopes.get(scope_id)
        return list(scope.entries.values()) if scope else []

    async def forget(self, key: str) -> None:
        self._values.pop(key, None)
        self._popularity.pop(key, None)
        scope = self._scopes.get(key.rsplit(":", 2)[-2])
        if scope is not None and scope.entries.pop(key, None) is not None:
            scope.version += 1

    async def invalidate(self, tags: Sequence[str]) -> list[str]:
        removed = []
        for tag in tags:
            for key in self._tags.pop(tag, set()):
                if key in self._values:
                    removed.append(key)
                await self.forget(key)
        return removed

    async def tag_members(self, tag: str) -> list[str]:
        return sorted(self._tags.get(tag, set()))

    async def bump_popularity(self, counts: Mapping[str, int]) -> None:
        for key, hits in counts.items():
            self._popularity[key] = self._popularity.get(key, 0) + hits

    async def popularity(self, keys: Sequence[str]) -> dict[str, int]:
        return {key: self._popularity.get(key, 0) for key in keys}

    async def lock(self, key: str, ttl_s: float) -> bool:
        now = self._clock()
        if self._locks.get(key, 0.0) > now:
            return False
        self._locks[key] = now + ttl_s
        return True

    async def unlock(self, key: str) -> None:
        self._locks.pop(key, None)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
