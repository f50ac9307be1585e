"""Cache storage behind one Protocol: in-process memory (embedded default) and Redis (single node or Cluster).

Values are opaque bytes (the cache compresses them). Besides get/put, a backend keeps per-scope semantic indexes
(key → question and vector) with a version number, tags for invalidation and a popularity counter.

Two checks keep an answer drawn from a changed document from being written after the invalidation that should
have removed it (its provider call was still running, or its replica still had the old text):
- A document change is invalidated with the document's new version: the store drops what drew on any other
  version and, for a while, refuses writes that drew on another (each write says which versions it drew on).
  Repeating it (every replica polls the same change) removes nothing cached from the new version since.
- Any other invalidation (a whole tag, by an operator) moves a generation on; a put given the generation read
  before its answer was computed is refused once it has moved.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from helpline.cache.keys import KeySpace
from helpline.knowledge.versions import newest
from helpline.knowledge.versions import revision as version_revision


class Forget(enum.Enum):
    """``forget(key, unless=ANYWAY)``: whatever the entry holds now."""

    ANYWAY = "anyway"


ANYWAY = Forget.ANYWAY


@dataclass(frozen=True, slots=True)
class IndexedQuestion:
    key: str
    question: str
    vector: bytes
    answer_key: str = ""  # entries with equal answer keys give the same answer (same cited documents)


class CacheBackend(Protocol):
    kind: str
    shared: bool  # other replicas read what this one writes (so a call's text is relayed to them, cache.relay)

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
        generation: int | None = None,
        versions: Mapping[str, str] | None = None,
        revision: int | None = None,
    ) -> bool:
        """Store the entry; with ``generation``, only if no invalidation happened since it was read; with
        ``versions`` (tag → the version of that document the answer drew on), only if none of them is other than
        the version an invalidation declared current for its tag; with ``revision`` (the knowledge revision of the
        copy the answer was drawn from), only if no invalidation declared a newer one (False: refused)."""
        ...

    async def generation(self) -> int:
        """How many whole-tag invalidations this store has seen (moves on with each, see :meth:`invalidate`)."""
        ...

    async def semantic_version(self, scope_id: str) -> int: ...

    async def semantic_entries(self, scope_id: str) -> list[IndexedQuestion]: ...

    async def scope_ids(self) -> list[str]:
        """Every scope with a semantic index (each cached entry is in its scope's index)."""
        ...

    async def forget(self, key: str, *, unless: bytes | Forget | None = ANYWAY) -> None:
        """Remove an entry (and its index field). ``unless``: only if the entry is still as the caller found it —
        ``None``, found gone (an expired entry's index field), or these bytes (an unreadable value) — so an
        answer written meanwhile by another request or replica is not removed with it."""
        ...

    async def invalidate(
        self,
        tags: Sequence[str],
        current: Mapping[str, str] | None = None,
        mark_ttl_s: float = 0,
        revision: int | None = None,
    ) -> list[str]:
        """Remove the entries tagged with ``tags``, atomically; the keys removed.

        A tag in ``current`` is a document that changed to that version: only entries that drew on another
        version go, and writes of other versions are refused for ``mark_ttl_s`` (see :meth:`put`). So a second
        invalidation of the same change (every replica polls the knowledge) keeps what was cached since, the
        re-warmed answers among them. A version older (knowledge/versions.py) than the one the tag's mark holds
        (an invalidation arriving late from a replica's older copy) leaves the mark as it is, and only entries
        that drew on another version than the mark's go (unless the mark's revision is at or below ``revision``:
        then the knowledge went back, and the version given wins). Any other tag goes whole, and moves the
        generation on.
        ``revision``: the knowledge revision the invalidating replica's copy was read at, declared (kept for
        ``mark_ttl_s``) if newer than the one declared before (see :meth:`put`)."""
        ...

    async def knowledge_mark(self) -> int | None:
        """The newest knowledge revision an invalidation declared (None: none, or it expired)."""
        ...

    async def reset(self) -> int:
        """Remove everything this tenant's cache holds (entries, indexes, tags, version and knowledge marks), moving
        the generation on first (a write computed before is refused); how many keys went. For knowledge that went
        back (a database restored from a backup): every answer and mark may be from knowledge that is gone."""
        ...

    async def tag_members(self, tag: str, keep: str | None = None) -> list[str]:
        """The entries tagged ``tag``, except those that drew on version ``keep`` of it."""
        ...

    async def bump_popularity(self, counts: Mapping[str, int]) -> None: ...

    async def popularity(self, keys: Sequence[str]) -> dict[str, int]: ...

    async def lock(self, key: str, ttl_s: float, token: str) -> bool:
        """Take ``key`` for ``ttl_s`` unless someone holds it; ``token`` says who holds it."""
        ...

    async def unlock(self, key: str, token: str) -> None:
        """Give ``key`` back, only if ``token`` still holds it (a lock that expired and was taken by another stays)."""
        ...

    async def extend(self, key: str, ttl_s: float, token: str) -> bool:
        """Hold ``key`` for ``ttl_s`` more, only if ``token`` still holds it; False when it lapsed meanwhile."""
        ...

    async def peek(self, key: str, lock: str) -> tuple[bytes | None, bytes | None]:
        """The value under ``key`` and the token holding ``lock`` (None: nobody), in one round trip (a waiter's
        poll)."""
        ...

    async def marks(self) -> tuple[int, int, int]:
        """(the generation, how many invalidations the store has seen, its knowledge mark or -1), in one round trip:
        a call reads them with the knowledge, and an identical request on another replica follows that call only if
        neither of the first two has moved since and the call's copy of the knowledge is not older than the mark
        (cache.relay)."""
        ...

    async def relay_append(self, key: str, entries: Sequence[tuple[bytes, bytes]], ttl_s: float) -> bool:
        """Add ``entries`` (kind, payload) to the relay stream ``key``, in order, if anybody reads it (a
        :meth:`relay_poll` of it lately); whether they were added. The stream lapses ``ttl_s`` after its last
        addition (see cache.relay)."""
        ...

    async def relay_poll(self, key: str, lock: str, stream: str | None, after: bytes, reader_ttl_s: float) -> RelayPoll:
        """One round trip of a relay's follower: the entry's value, the lock's holder and the store's
        :meth:`marks`; with a ``stream``, its entries after ``after`` (as :meth:`relay_read`), and the follower
        counted as its reader for ``reader_ttl_s``."""
        ...

    async def relay_read(self, key: str, after: bytes) -> list[tuple[bytes, bytes, bytes]]:
        """The entries (id, kind, payload) of the relay stream ``key`` added after the entry ``after`` (``RELAY_START``:
        from its first), oldest first; at most ``RELAY_READ_COUNT`` of them."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


LOCK_SWEEP_AT = 1024
RELAY_START = b"0-0"  # read a relay stream from its first entry
RELAY_READ_COUNT = 256


@dataclass(frozen=True, slots=True)
class RelayPoll:
    value: bytes | None
    holder: bytes | None
    marks: tuple[int, int, int]
    entries: list[tuple[bytes, bytes, bytes]]


@dataclass
class _Scope:
    version: int = 0
    entries: dict[str, IndexedQuestion] = field(default_factory=dict)


class MemoryBackend:
    """One process's cache: exact, same semantics as Redis (TTL, tags, versions), nothing shared.

    Bounded: entries leave in the order they were written (all share one TTL, so the oldest expires first) once they
    have expired or once there are more than ``max_entries``; the tags, semantic index and popularity of an
    entry leave with it. Without this an embedded server kept every answer it ever cached (each with its vector).
    """

    kind = "memory"
    shared = False

    def __init__(self, max_entries: int = 50_000) -> None:
        self._clock = time.monotonic
        self._max_entries = max_entries
        # In write order; an OrderedDict, whose oldest item is found in O(1) however many were popped before it
        # (a plain dict's first item is found by skipping the deleted slots in front of it).
        self._values: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._scopes: dict[str, _Scope] = {}
        self._tags: dict[str, dict[str, str]] = {}  # tag -> {entry key: the tag's version it drew on, or ""}
        self._current: dict[str, tuple[str, float]] = {}  # tag -> (its current version, until when it is checked)
        self._knowledge: tuple[int, float] = (-1, 0.0)  # the newest knowledge revision declared, until when
        self._key_tags: dict[str, tuple[str, ...]] = {}
        self._popularity: dict[str, int] = {}
        self._locks: dict[str, tuple[float, str]] = {}  # key -> (until, holder)
        self._relays: dict[str, tuple[list[tuple[bytes, bytes]], float]] = {}  # key -> (entries, until)
        self._readers: dict[str, float] = {}  # relay stream -> until when somebody reads it
        self._invalidations = 0
        self._generation = 0
        # Scope versions come from one counter, so a scope emptied (and dropped) then refilled never repeats a
        # version that a reader's copy of the old index still carries.
        self._versions = itertools.count(1)

    async def get(self, key: str) -> bytes | None:
        found = self._values.get(key)
        if found is None:
            return None
        if found[1] <= self._clock():
            self._drop(key)
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
        generation: int | None = None,
        versions: Mapping[str, str] | None = None,
        revision: int | None = None,
    ) -> bool:
        versions = {tag: version for tag, version in (versions or {}).items() if version}  # "": unversioned
        if generation is not None and generation != self._generation:
            return False
        now = self._clock()
        if revision is not None and self._knowledge[1] > now and self._knowledge[0] > revision:
            return False
        for tag, version in versions.items():
            current, until = self._current.get(tag, ("", 0.0))
            if until > now and current != version:
                return False
        self._values[key] = (value, self._clock() + ttl_s)
        self._values.move_to_end(key)  # a rewrite is the newest entry again
        scope = self._scopes.setdefault(scope_id, _Scope())
        scope.entries[key] = IndexedQuestion(key, question, vector, answer_key)
        scope.version = next(self._versions)
        for tag in set(self._key_tags.get(key, ())).difference(tags):  # drawn on by its previous answer only
            members = self._tags.get(tag)
            if members is not None:
                members.pop(key, None)
                if not members:
                    del self._tags[tag]
        for tag in tags:
            self._tags.setdefault(tag, {})[key] = versions.get(tag, "")
        self._key_tags[key] = tuple(dict.fromkeys(tags))
        self._evict()
        return True

    def _evict(self) -> None:
        now = self._clock()
        while self._values:
            oldest = next(iter(self._values))
            if self._values[oldest][1] > now and len(self._values) <= self._max_entries:
                return
            self._drop(oldest)

    def _drop(self, key: str) -> None:
        self._values.pop(key, None)
        self._popularity.pop(key, None)
        for tag in self._key_tags.pop(key, ()):
            members = self._tags.get(tag)
            if members is not None:
                members.pop(key, None)
                if not members:
                    del self._tags[tag]
        scope_id = KeySpace.scope_of(key)
        scope = self._scopes.get(scope_id)
        if scope is not None and scope.entries.pop(key, None) is not None:
            scope.version = next(self._versions)
            if not scope.entries:
                del self._scopes[scope_id]

    async def generation(self) -> int:
        return self._generation

    async def semantic_version(self, scope_id: str) -> int:
        scope = self._scopes.get(scope_id)
        return scope.version if scope else 0

    async def semantic_entries(self, scope_id: str) -> list[IndexedQuestion]:
        scope = self._scopes.get(scope_id)
        return list(scope.entries.values()) if scope else []

    async def scope_ids(self) -> list[str]:
        """Scopes with an entry still alive (expired ones are dropped here: only a lookup or a put drops them
        otherwise). Called on a document change, not per request."""
        now = self._clock()
        for key in [key for key, (_value, until) in self._values.items() if until <= now]:
            self._drop(key)
        return list(self._scopes)

    async def forget(self, key: str, *, unless: bytes | Forget | None = ANYWAY) -> None:
        if unless is not ANYWAY:
            found = self._values.get(key)
            now = None if found is None or found[1] <= self._clock() else found[0]
            if now is not None and now != unless:
                return  # written again since the caller read it
        self._drop(key)

    async def invalidate(
        self,
        tags: Sequence[str],
        current: Mapping[str, str] | None = None,
        mark_ttl_s: float = 0,
        revision: int | None = None,
    ) -> list[str]:
        current = {tag: version for tag, version in (current or {}).items() if version}  # "": the whole tag
        now = self._clock()
        self._invalidations += 1
        if any(tag not in current for tag in tags):
            self._generation += 1
        removed = []
        for tag in tags:
            keep = current.get(tag)
            mark, until = self._current.get(tag, ("", 0.0))
            # Unless the copy invalidating was read at or after the mark's revision (see the Redis backend).
            if keep is not None and until > now and (revision is None or version_revision(mark) > revision):
                keep = newest(keep, mark)
            for key in await self.tag_members(tag, keep):
                if key in self._values:
                    removed.append(key)
                self._drop(key)
            if keep is not None:
                self._current[tag] = (keep, now + mark_ttl_s)
        self._current = {tag: mark for tag, mark in self._current.items() if mark[1] > now}
        if revision is not None and (revision >= self._knowledge[0] or self._knowledge[1] <= now):
            self._knowledge = (revision, now + mark_ttl_s)
        return removed

    async def knowledge_mark(self) -> int | None:
        revision, until = self._knowledge
        return revision if until > self._clock() and revision >= 0 else None

    async def reset(self) -> int:
        self._generation += 1
        removed = len(self._values)
        for held in (self._values, self._scopes, self._tags, self._current, self._key_tags, self._popularity):
            held.clear()
        self._knowledge = (-1, 0.0)
        return removed

    async def tag_members(self, tag: str, keep: str | None = None) -> list[str]:
        return sorted(key for key, version in self._tags.get(tag, {}).items() if keep is None or version != keep)

    async def bump_popularity(self, counts: Mapping[str, int]) -> None:
        for key, hits in counts.items():
            self._popularity[key] = self._popularity.get(key, 0) + hits

    async def popularity(self, keys: Sequence[str]) -> dict[str, int]:
        return {key: self._popularity.get(key, 0) for key in keys}

    async def lock(self, key: str, ttl_s: float, token: str) -> bool:
        now = self._clock()
        if self._locks.get(key, (0.0, ""))[0] > now:
            return False
        if len(self._locks) >= LOCK_SWEEP_AT:  # locks of requests that never unlocked (cancelled): drop the expired
            self._locks = {name: held for name, held in self._locks.items() if held[0] > now}
        self._locks[key] = (now + ttl_s, token)
        return True

    async def unlock(self, key: str, token: str) -> None:
        held = self._locks.get(key)
        if held is not None and held[1] == token:
            del self._locks[key]

    async def extend(self, key: str, ttl_s: float, token: str) -> bool:
        now = self._clock()
        held = self._locks.get(key)
        if held is None or held[1] != token or held[0] <= now:
            return False
        self._locks[key] = (now + ttl_s, token)
        return True

    async def peek(self, key: str, lock: str) -> tuple[bytes | None, bytes | None]:
        until, holder = self._locks.get(lock, (0.0, ""))
        return await self.get(key), holder.encode() if until > self._clock() else None

    async def marks(self) -> tuple[int, int, int]:
        mark = await self.knowledge_mark()
        return self._generation, self._invalidations, -1 if mark is None else mark

    async def relay_append(self, key: str, entries: Sequence[tuple[bytes, bytes]], ttl_s: float) -> bool:
        now = self._clock()
        if self._readers.get(key, 0.0) <= now:
            return False
        if key not in self._relays and len(self._relays) >= LOCK_SWEEP_AT:  # streams nobody added to lately
            self._relays = {name: held for name, held in self._relays.items() if held[1] > now}
            self._readers = {name: until for name, until in self._readers.items() if until > now}
        held, until = self._relays.get(key, ([], 0.0))
        if until <= now:
            held = []
        held.extend(entries)
        self._relays[key] = (held, now + ttl_s)
        return True

    async def relay_poll(self, key: str, lock: str, stream: str | None, after: bytes, reader_ttl_s: float) -> RelayPoll:
        value, holder = await self.peek(key, lock)
        entries: list[tuple[bytes, bytes, bytes]] = []
        if stream is not None:
            entries = await self.relay_read(stream, after)
            self._readers[stream] = self._clock() + reader_ttl_s
        return RelayPoll(value, holder, await self.marks(), entries)

    async def relay_read(self, key: str, after: bytes) -> list[tuple[bytes, bytes, bytes]]:
        held, until = self._relays.get(key, ([], 0.0))
        if until <= self._clock():
            return []
        first = int(after.split(b"-", 1)[0])  # ids are "<position>-0", from 1
        return [
            (b"%d-0" % position, kind, payload)
            for position, (kind, payload) in enumerate(held[first : first + RELAY_READ_COUNT], start=first + 1)
        ]

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
