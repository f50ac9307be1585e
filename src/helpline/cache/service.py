"""AnswerCache: the exact tier, then the guarded semantic tier, in front of retrieval and the providers.

- Lookups and writes are bounded by a short timeout; when the store is slow or down the cache is bypassed for a
  moment (a log line and a metric), so a request never waits on it and never fails because of it.
- Values are orjson, zstd-compressed. Every entry carries the ids of the documents it drew on (its tags).
- Semantic search runs on a per-scope in-process mirror of the store's index, refreshed when its version moves.
- Stampede protection: concurrent identical misses in one process share one computation (single flight), and
  across replicas a lock in the store, renewed by its holder, makes the others wait for the first one's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import orjson
import structlog
import zstandard

from helpline.cache.backend import RELAY_READ_COUNT, RELAY_START, CacheBackend, RelayPoll
from helpline.cache.guards import SemanticGuard
from helpline.cache.keys import CacheScope, KeySpace, digest, normalize
from helpline.cache.near import NearCache
from helpline.cache.policy import lacks_echoes
from helpline.cache.relay import (
    CUT,
    END,
    RELAY_POLL_S,
    RELAY_READER_S,
    RELAY_TTL_S,
    Entries,
    Polled,
    RelayCodec,
    RelayWriter,
    current,
    follow,
)
from helpline.errors import ServiceUnavailable
from helpline.knowledge.embeddings import from_bytes, to_bytes
from helpline.overload import LoopLag, patiently

log = structlog.get_logger(__name__)
T = TypeVar("T")
# More time for a store call whose deadline passed while our own event loop ran late (helpline/overload.py): the store
# was not what was slow, and bypassing it would send cached questions to a provider when time is shortest. Short: a
# burst against a silent store may wait it once, every request of the burst (a late loop cannot be told from one made
# late by the burst), before the store is bypassed. With the deadline, the Redis client's own read timeout.
OVERLOAD_TIMEOUT_S = 0.35
POPULARITY_FLUSH_S = 1.0
POPULARITY_BATCH = 1000  # distinct keys: sent sooner rather than held in memory
POPULARITY_READS = 8  # store reads at once while ranking answers to re-warm (a slice of the 64-connection pool)
RESET_TIMEOUT_S = 120.0  # a reset scans the store's keyspace (about 1.3 s per million keys on a shared Redis)
# Questions retrieved again between two yields to the event loop (a retrieval is 0.1 ms on the sample store, about
# 1 ms on a catalogue of thousands of documents).
SCAN_YIELD_EVERY = 8
SCAN_TIMEOUT_FACTOR = 5  # listing the scopes checks each scope's index: longer than one invalidation may take
DECODED_MEMO = 1024  # decoded answers kept, by their stored bytes (a few MB at most)
PEER_POLL_S = 0.02  # a replica waiting for another's answer looks for it after this, then 1.5 times later each time
PEER_POLL_MAX_S = 0.25
# A holder waits this many store timeouts for its relay's outcome to be written before it lets go of the lock, and a
# follower that sees the lock gone this long for the outcome (a write given up on may still land: see cache.relay).
RELAY_SETTLE_TIMEOUTS = 2
CLEANUP_TIMEOUTS = 4  # a closing cache waits this many store timeouts for its background lock and relay work
Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A cached answer as stored. One decoded object serves every hit on the same stored value (see
    ``AnswerCache._decode``): read it, never change it, nor its lists (citations, tags), which requests share."""

    question: str
    reply: str
    citations: list[dict[str, str]]
    provider: str
    model: str
    tags: list[str]
    cost_usd: float = 0.0
    locale: str = ""
    created_at: float = field(default_factory=time.time)
    # Words of the question the reply repeats that the store does not know (cache.policy.echoes): a semantic hit
    # must have them all.
    echoes: list[str] = field(default_factory=list)

    def answer_key(self) -> str:
        """Answers citing the same documents are the same answer, whatever their wording."""
        cited = sorted(citation["id"] for citation in self.citations)
        return digest(*cited, size=16) if cited else digest(self.reply, size=16)


@dataclass(frozen=True, slots=True)
class CacheHit:
    answer: CachedAnswer
    tier: str  # "exact" | "semantic"
    similarity: float = 1.0
    matched_question: str = ""


class Flight:
    """One computation in flight for an answer key: the result it lands (a future) and, while it streams, the text
    it has shown so far, for identical streamed requests that follow it instead of waiting in silence."""

    def __init__(self, epoch: int = 0) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.epoch = epoch  # the cache's count of invalidations in this process when the flight began
        self.parts: list[str] = []
        self.followers = 0  # streamed requests reading it as it streams
        self.waiting = 0  # requests waiting for its result (plain ones, and streamed ones that do not follow)
        self.cut: str | None = None  # why its stream stopped short, when it did (its followers record it too)
        self.mirror: RelayWriter | None = None  # copies it for other replicas (cache.relay), when it leads there
        self.relayed = False  # fed from another replica's call (cache.relay), which its own request follows too
        self.origin: tuple[int, int, int] | None = None  # the store's marks and its knowledge revision (relay)
        self._moved = asyncio.Event()

    @property
    def wanted(self) -> bool:
        """Whether requests other than its own wait for it or follow it (it goes on if its own shopper leaves)."""
        here = self.followers > (1 if self.relayed else 0) or self.waiting > 0
        return here or (self.mirror is not None and self.mirror.read)  # (or on another replica: cache.relay)

    def publish(self, text: str) -> None:
        self.parts.append(text)
        if self.mirror is not None:
            self.mirror.text(text)
        self._wake()

    def land(self, result: Any) -> None:
        """The first result stays (None: the computation ended without one)."""
        if not self.future.done():
            self.future.set_result(result)
            if self.mirror is not None:
                self.mirror.end(result, self.cut)
        self._wake()

    def _wake(self) -> None:
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def follow(self) -> AsyncGenerator[str, None]:
        """The text published so far, then each piece as it comes, until the result lands."""
        sent = 0
        self.followers += 1
        try:
            while True:
                moved = self._moved  # taken before looking: a wake-up after the look sets this very event
                if sent < len(self.parts):
                    sent += 1
                    yield self.parts[sent - 1]
                elif self.future.done():
                    return
                else:
                    await moved.wait()
        finally:
            self.followers -= 1


@dataclass(frozen=True, slots=True)
class Relay:
    """A flight across replicas (cache.relay), for :meth:`AnswerCache.peer_lock`: copied to the store while its
    request holds the lock; with ``follow``, fed from the holder's copy when another replica holds it (the caller
    then follows ``flight``), until ``deadline`` (``time.monotonic``) at the latest; ``seen``: streams this request
    has followed already (one that gave it nothing is not followed again)."""

    flight: Flight
    codec: RelayCodec
    follow: bool
    deadline: float
    seen: set[str] = field(default_factory=set)


class CacheUnavailable(ServiceUnavailable):
    """An invalidation the cache store did not confirm (the answers it should remove may still be served later)."""

    code = "cache_unavailable"


@dataclass(slots=True)
class _Mirror:
    version: int
    keys: list[str]
    questions: list[str]
    answers: list[str]
    matrix: Vector


@dataclass(frozen=True, slots=True)
class CacheSettings:
    ttl_s: int = 3600
    threshold: float = 0.9
    margin: float = 0.1  # the best match must beat every cached question with a different answer by this much
    timeout_s: float = 0.15
    overload_timeout_s: float = OVERLOAD_TIMEOUT_S
    bypass_s: float = 2.0
    candidates: int = 20
    # The answer lock across replicas (see AnswerCache.peer_lock): its holder renews it every third of lock_ttl_s;
    # a waiter gives up after lock_wait_s (the factory sets it from the provider deadlines).
    lock_ttl_s: float = 3.0
    lock_wait_s: float = 35.0
    # An invalidation is not skipped like a lookup when the store is slow: it gets longer, and fails loudly.
    invalidate_timeout_s: float = 2.0
    # Copies of semantic indexes kept in process, most recently used first out last. Every conversation context and
    # every personal owner is a scope of its own, so unbounded this grew with the traffic, on every replica.
    max_mirrors: int = 1024
    # How long a replica reuses an answer it read from a shared store (cache/near.py); every removal waits as long
    # before it reports success. 0: off (the in-process store needs no copy).
    near_s: float = 0.0


class AnswerCache:
    def __init__(
        self,
        backend: CacheBackend,
        keys: KeySpace,
        settings: CacheSettings,
        guard: SemanticGuard | None = None,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.keys = keys
        self.settings = settings
        self.guard = guard or SemanticGuard()
        self._mirrors: OrderedDict[str, _Mirror] = OrderedDict()
        self._loading: dict[str, asyncio.Task[_Mirror | None]] = {}  # index reads on their way, one per scope
        self._near = NearCache(settings.near_s) if settings.near_s > 0 else None
        self._compressor = zstandard.ZstdCompressor(level=3)
        self._decompressor = zstandard.ZstdDecompressor()
        self._decoded: dict[bytes, CachedAnswer] = {}  # see _decode
        self._bypass_until = 0.0
        self._lag = LoopLag()
        self._bypassed: asyncio.Future[None] | None = None  # see _bypass_signal
        self.overload_waits = 0  # store calls given more time because our loop, not the store, ran late
        self._flights: dict[str, Flight] = {}
        self.invalidations = 0  # invalidations this process has made (a flight begun before one may be stale)
        self.reads_held = False  # see hold_reads
        self._cleanups: set[asyncio.Task[None]] = set()
        self._on_event = on_event or (lambda _kind, _detail: None)
        self._hits: Counter[str] = Counter()  # popularity not yet sent to the store
        self._hits_sent_at = time.monotonic()
        self._hits_sending: asyncio.Task[None] | None = None

    # -- resilience ------------------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._bypass_until

    async def _guarded(
        self, operation: str, call: Callable[[], Awaitable[T]], default: T, *, even_bypassed: bool = False
    ) -> T:
        """Run a store call within the timeout; on any failure, bypass the store for a moment. ``even_bypassed``:
        tried during a bypass too (letting go of a lock that peers would otherwise wait out)."""
        if not (even_bypassed or self.available):
            return default
        try:
            if self.backend.kind == "memory":  # in-process: cannot hang, and a timer per call costs on every hit
                return await call()
            return await self._timed(call)
        except Exception as error:  # noqa: BLE001 - the cache must never fail a request
            self._bypass_until = time.monotonic() + self.settings.bypass_s
            if self._bypassed is not None and not self._bypassed.done():
                self._bypassed.set_result(None)
            log.warning(
                "cache_store_unavailable", operation=operation, error=type(error).__name__, backend=self.backend.kind
            )
            self._on_event("store_error", operation)
            return default

    async def _timed(self, call: Callable[[], Awaitable[T]]) -> T:
        """A store call within the store timeout, given more time while this process's loop runs late."""
        settings = self.settings
        return await patiently(
            call(), self._lag, timeout_s=settings.timeout_s, overload_timeout_s=settings.overload_timeout_s,
            on_overload=self._overloaded, given_up=self._bypass_signal(),
        )  # fmt: skip

    def _overloaded(self) -> None:
        self.overload_waits += 1

    def _bypass_signal(self) -> asyncio.Future[None]:
        """Done once the store is bypassed after a call failed: calls given more time for a late loop stop waiting
        for a store this process has stopped using (see helpline.overload.patiently)."""
        signal, loop = self._bypassed, asyncio.get_running_loop()
        if signal is None or (signal.done() and self.available) or signal.get_loop() is not loop:
            signal = self._bypassed = loop.create_future()  # (a future of a loop that has gone says nothing here)
        return signal

    async def connect(self, timeout_s: float = 2.0) -> bool:
        """At start-up: open the connection (and learn a cluster's slots) outside any request's tight timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self.backend.ping()
        except Exception as error:  # noqa: BLE001 - the service starts without its cache; requests bypass it
            log.warning("cache_store_unavailable", operation="connect", error=type(error).__name__)
            return False

    def hold_reads(self, held: bool) -> None:
        """Serve no cached answer while ``held`` (lookups miss; writes go on): the Invalidator holds them while a
        removal it knows of is not confirmed by the store (cache/invalidation.py)."""
        if held == self.reads_held:
            return
        self.reads_held = held
        if held:
            log.warning("cache_reads_held", reason="a knowledge change's cached answers are not removed yet")
        else:
            log.info("cache_reads_released")
        self._on_event("reads_held", "held" if held else "released")

    # -- lookups ---------------------------------------------------------------------------------------------

    def entry_key(self, question: str, scope: CacheScope) -> str:
        return self.keys.entry(scope, normalize(question))

    async def lookup(self, question: str, vector: Vector, scope: CacheScope) -> CacheHit | None:
        return await self.lookup_exact(question, scope) or await self.lookup_semantic(question, vector, scope)

    async def lookup_exact(self, question: str, scope: CacheScope) -> CacheHit | None:
        """The cheap tier: needs no embedding, so a repeated question costs one store round trip at most (none while
        this process holds a near copy of its answer)."""
        if self.reads_held:
            return None
        key = self.entry_key(question, scope)
        found = await self._readable(key, await self._shared_read(key))
        return None if found is None else self._exact_hit(key, question, scope, found)

    async def lookup_semantic(self, question: str, vector: Vector, scope: CacheScope) -> CacheHit | None:
        return await self._semantic(question, vector, scope)

    async def _semantic(self, question: str, vector: Vector, scope: CacheScope) -> CacheHit | None:
        if self.reads_held:
            return None
        mirror = await self._mirror(scope.id)
        if mirror is None or not mirror.keys:
            return None
        scores = mirror.matrix @ vector
        ranked = [int(i) for i in np.argsort(-scores)[: self.settings.candidates]]
        best = choose(
            Candidates(ranked, scores, mirror.questions, mirror.answers), question,
            threshold=self.settings.threshold, margin=self.settings.margin, guard=self.guard,
        )  # fmt: skip
        if best is None:
            return None
        if isinstance(best, str):
            self._on_event("guard", best)
            return None
        return await self._fetch(mirror.keys[best], float(scores[best]), mirror.questions[best], scope, question)

    async def _fetch(
        self, key: str, similarity: float, matched: str, scope: CacheScope, question: str
    ) -> CacheHit | None:
        raw = await self._shared_read(key)
        if raw is None:  # expired: drop it from the index (unless a request or replica has just written it again)
            await self._guarded("forget", lambda: self.backend.forget(key, unless=None), None)
            return None
        found = await self._readable(key, raw)
        if found is None:
            return None
        if lacks_echoes(question, found.echoes):  # the reply repeats words of another shopper's that this lacks
            log.info("cache_semantic_refused", reason="the reply repeats words this question lacks")
            self._on_event("guard", "echo")
            return None
        self._count_hit(key, scope)
        return CacheHit(found, "semantic", similarity, matched)

    async def _shared_read(self, key: str) -> bytes | None:
        """The stored value of a lookup: this process's near copy while it is fresh, else the store's."""
        near = self._near
        if near is None:
            return await self._guarded("get", lambda: self.backend.get(key), None)
        raw = near.get(key)
        if raw is not None:
            return raw
        read = near.read_under_way(key)
        if read is None:
            sent_at = near.clock()  # before the read goes out: see cache/near.py
            # In a context of its own: its log lines (a store error) belong to no one request of those sharing it.
            read = asyncio.get_running_loop().create_task(
                self._read_for_near(near, key, sent_at), context=contextvars.Context()
            )
            near.reading(key, read, sent_at)
        # Shielded: a caller that goes away (a client disconnect) does not take the read from those sharing it.
        return await asyncio.shield(read)

    async def _read_for_near(self, near: NearCache, key: str, sent_at: float) -> bytes | None:
        raw = await self._guarded("get", lambda: self.backend.get(key), None)
        if raw is not None:
            near.put(key, raw, sent_at)
        return raw

    async def _mirror(self, scope_id: str) -> _Mirror | None:
        version = await self._guarded("version", lambda: self.backend.semantic_version(scope_id), None)
        if version is None:
            return None
        if version == 0:  # nothing was ever stored in this scope (or all of it expired): no index to read
            self._mirrors.pop(scope_id, None)
            return None
        mirror = self._mirrors.get(scope_id)
        if mirror is not None and mirror.version == version:
            self._mirrors.move_to_end(scope_id)
            return mirror
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeout_s
        while True:
            load = self._loading.get(scope_id)
            if load is None or load.done():
                # In a context of its own (its log lines belong to no one request) and shared by concurrent lookups.
                # One read per scope at a time: in a busy scope every write moves the version, and a read per
                # version piled up full reads of one index.
                load = loop.create_task(
                    self._load_mirror(scope_id, version), name="cache-index", context=contextvars.Context()
                )
                self._loading[scope_id] = load
                load.add_done_callback(functools.partial(self._loaded, scope_id))
            try:
                found = await asyncio.wait_for(asyncio.shield(load), deadline - loop.time())
            except TimeoutError:
                # A big index, not a store that is down (its version was just read): no semantic hit this time, and
                # the read goes on for the next lookup. Not a bypass: that switched the exact tier off too, for
                # seconds.
                self._on_event("index_slow", scope_id)
                return None
            # A read begun at an older version may lack a closer question written since, whose different answer the
            # margin would have weighed (a review, session 19): the lookups that saw a newer version share one
            # read after it, within their time. (A lower version than the read's own is a store whose counter
            # started again: its copy is the newest there is.)
            if found is None or found.version >= version:
                return found

    def _loaded(self, scope_id: str, load: asyncio.Task[_Mirror | None]) -> None:
        if self._loading.get(scope_id) is load:
            del self._loading[scope_id]

    async def _load_mirror(self, scope_id: str, version: int) -> _Mirror | None:
        """Read a scope's index into this process's copy, within the store's longer (invalidation) timeout."""
        try:
            async with asyncio.timeout(self.settings.invalidate_timeout_s):
                entries = await self.backend.semantic_entries(scope_id)
        except Exception as error:  # noqa: BLE001 - no semantic hit in this scope until a later lookup reads it
            log.warning("cache_store_unavailable", operation="index", error=type(error).__name__)
            self._on_event("store_error", "index")
            return None
        matrix = np.vstack([from_bytes(e.vector) for e in entries]) if entries else np.zeros((0, 384), np.float32)
        mirror = _Mirror(
            version,
            [e.key for e in entries],
            [e.question for e in entries],
            [e.answer_key for e in entries],
            matrix.astype(np.float32),
        )
        # The newest read of this scope (reads of one scope do not overlap): kept even if its version is lower than
        # the copy's, which happens when the store's counter started again (a restarted or flushed Redis).
        self._mirrors[scope_id] = mirror
        self._mirrors.move_to_end(scope_id)
        while len(self._mirrors) > self.settings.max_mirrors:
            self._mirrors.popitem(last=False)
        return mirror

    # -- writes ----------------------------------------------------------------------------------------------

    async def generation(self) -> int | None:
        """The store's invalidation generation, read before an answer is computed and handed to :meth:`store`;
        None when the store cannot say (the answer is then not cached: it could not be checked)."""
        return await self._guarded("generation", self.backend.generation, None)

    async def store(
        self,
        question: str,
        vector: Vector,
        scope: CacheScope,
        answer: CachedAnswer,
        *,
        generation: int | None = None,
        versions: Mapping[str, str] | None = None,
        revision: int | None = None,
    ) -> bool:
        """Cache ``answer``. With ``generation`` (from :meth:`generation` before the answer was computed), only if
        no invalidation of a whole tag happened since; with ``versions`` (document id → the version the answer
        drew on), only if none of those documents has changed to another version since (as far as an
        invalidation told the store): this replica's copy of the knowledge may be behind another's; with
        ``revision`` (the knowledge revision of that copy), only if no replica invalidated from a newer copy (one
        may hold a document added since, which the answer could not draw on)."""
        key = self.entry_key(question, scope)
        value = self._encode(answer)

        async def put() -> bool:
            return await self.backend.put(
                key, value, ttl_s=self.settings.ttl_s, tags=answer.tags, scope_id=scope.id,
                question=question, vector=to_bytes(vector), answer_key=answer.answer_key(), generation=generation,
                versions=versions, revision=revision,
            )  # fmt: skip

        stored = await self._guarded("put", put, False)
        if not stored and self.available:
            log.info("cache_write_skipped", reason="invalidated while answering", tags=answer.tags[:20])
            self._on_event("stale_write", "put")
        return stored

    async def invalidate(
        self,
        tags: Sequence[str],
        min_hits: int = 2,
        *,
        current: Mapping[str, str] | None = None,
        revision: int | None = None,
    ) -> tuple[int, list[tuple[str, str]]]:
        """Remove every answer that drew on one of ``tags`` (atomically in the store); for a tag in ``current`` (a
        document and its version now), every answer that drew on another version of it (see the backend's
        ``invalidate``: a repeat of the same change keeps what was cached since).

        Returns (how many were removed, the (question, locale) of the popular ones — read first, to re-warm
        them). Unlike a lookup, this is never skipped while the store is being bypassed after an error: a skipped
        invalidation would leave stale answers for the whole TTL once the store answers again. It is tried within
        ``invalidate_timeout_s`` and raises :class:`CacheUnavailable` if the store does not confirm it. ``revision``:
        the knowledge revision the caller's copy was read at; writes from older copies are refused from then on."""
        current = {tag: version for tag, version in (current or {}).items() if version}
        candidates = await self._popular(tags, min_hits, current)
        # Versions stay current (writes of older ones refused) for longer than any answer computed from an older
        # copy of the knowledge could still be arriving: a replica's poll interval and a provider's deadline.
        mark_ttl_s = 2 * self.settings.ttl_s
        async with self._removing(tags=list(tags)[:20]), asyncio.timeout(self.settings.invalidate_timeout_s):
            removed = await self.backend.invalidate(list(tags), current, mark_ttl_s, revision)
        # Those the store removed: it keeps the answers of a newer version than the one named (see the backend).
        gone = set(removed)
        popular = list(dict.fromkeys(asked for key, asked in candidates.items() if key in gone))
        log.info("cache_invalidated", tags=list(tags)[:20], removed=len(removed), popular=len(popular))
        return len(removed), popular

    @contextlib.asynccontextmanager
    async def _removing(self, **what: object) -> AsyncIterator[None]:
        """Around a removal from the store: any failure is :class:`CacheUnavailable` (logged and counted), and the
        index and near copies are dropped and the invalidation counted whatever happened. Once the store confirmed
        it, waits out other replicas' near copies (cache/near.py) before the caller hears it is done."""
        try:
            yield
        except Exception as error:
            log.warning("cache_invalidation_failed", **what, error=type(error).__name__)
            self._on_event("store_error", "invalidate")
            raise CacheUnavailable("cached answers could not be removed: the cache store did not answer") from error
        finally:
            self._mirrors.clear()
            if self._near is not None:
                self._near.clear()
            self.invalidations += 1
        if self._near is not None:
            await asyncio.sleep(self._near.ttl_s)

    async def knowledge_mark(self) -> int | None:
        """The newest knowledge revision an invalidation declared to the store (None: none, or not answering)."""
        return await self._guarded("knowledge", self.backend.knowledge_mark, None)

    async def reset(self, reason: str) -> int:
        """Remove everything the store holds for this tenant (see the backend's ``reset``); raises
        :class:`CacheUnavailable` if the store does not confirm it."""
        async with self._removing(reset=reason), asyncio.timeout(RESET_TIMEOUT_S):
            removed = await self.backend.reset()
        log.warning("cache_reset", reason=reason, keys=removed)
        return removed

    async def invalidate_reached(
        self,
        documents: Sequence[str],
        retrieves: Callable[[str, Vector], Collection[str]],
        min_hits: int = 2,
        *,
        budget_s: float | None = None,
    ) -> tuple[int, list[tuple[str, str]]]:
        """Remove the answers that did not draw on ``documents`` but whose question now retrieves one of them: a
        document added ("we now sell kombucha") or rewritten to cover something new leaves the answers given
        without it ("we don't sell kombucha") cited nowhere, so no tag reaches them. ``retrieves(question,
        vector)``: the ids of the documents retrieval gives that question now.

        Every scope's index is read and each question retrieved again (yielding to the event loop as it goes).
        Which answers drew on ``documents`` is read after the scan, just before the removal, so an answer written
        meanwhile from the new knowledge (a re-warm, a shopper's) is kept; one computed from the knowledge as it
        was is not written at all (``KnowledgeBase.epoch``). Returns (how many were removed, the (question,
        locale) of the popular ones). Raises :class:`CacheUnavailable` when the store does not answer, or when the
        whole of it takes longer than ``budget_s`` (None: each store call is bounded, not their sum)."""
        wanted = set(documents)
        found: list[str] = []
        async with self._removing(documents=sorted(wanted)[:20]), asyncio.timeout(budget_s):
            async with asyncio.timeout(SCAN_TIMEOUT_FACTOR * self.settings.invalidate_timeout_s):
                scope_ids = await self.backend.scope_ids()
            for scope_id in scope_ids:
                async with asyncio.timeout(self.settings.invalidate_timeout_s):
                    entries = await self.backend.semantic_entries(scope_id)
                for done, entry in enumerate(entries, 1):
                    if wanted & set(retrieves(entry.question, from_bytes(entry.vector))):
                        found.append(entry.key)
                    if done % SCAN_YIELD_EVERY == 0:
                        await asyncio.sleep(0)
            popular: list[CachedAnswer] = []
            slots = asyncio.Semaphore(POPULARITY_READS)

            async def drop(key: str, hits: int) -> None:
                async with slots:
                    value = await self.backend.get(key) if hits >= min_hits else None
                    await self.backend.forget(key)
                answer = await self._readable(key, value)
                if answer is not None:
                    popular.append(answer)

            async with asyncio.timeout(self.settings.invalidate_timeout_s):
                drew: set[str] = set()
                for document in wanted:
                    drew.update(await self.backend.tag_members(document))
                stale = [key for key in found if key not in drew]
                await self.flush_popularity()
                counts = await self.backend.popularity(stale) if stale else {}
                await asyncio.gather(*(drop(key, counts.get(key, 0)) for key in stale))
        log.info("cache_invalidated_by_retrieval", documents=sorted(wanted)[:20], removed=len(stale))
        return len(stale), list(dict.fromkeys((answer.question, answer.locale) for answer in popular))

    # -- popularity (which answers to re-warm after an invalidation) ---------------------------------------------

    def _count_hit(self, key: str, scope: CacheScope) -> None:
        """Hits are counted here and sent in one round trip at most every POPULARITY_FLUSH_S (in the background),
        not one per hit: on Redis that round trip was a quarter of a cached answer's store traffic, and popularity
        only ranks answers for re-warming. Another replica sees these counts up to a second late. Only answers
        re-warming can recreate are counted (:attr:`CacheScope.rewarmable`): a popular follow-up was re-warmed as a
        first message, an answer nobody had asked for in that form."""
        if not scope.rewarmable:
            return
        self._hits[key] += 1
        due = time.monotonic() - self._hits_sent_at >= POPULARITY_FLUSH_S or len(self._hits) >= POPULARITY_BATCH
        if due and (self._hits_sending is None or self._hits_sending.done()):
            # In a context of its own: its log lines (a store error) belong to no one request.
            self._hits_sending = asyncio.get_running_loop().create_task(
                self.flush_popularity(), name="cache-popularity", context=contextvars.Context()
            )

    async def flush_popularity(self) -> None:
        """Send the hits counted so far (lost, with a log line, if the store is down: they only rank re-warming)."""
        counts, self._hits = self._hits, Counter()
        self._hits_sent_at = time.monotonic()
        if counts:
            await self._guarded("popularity", lambda: self.backend.bump_popularity(counts), None)

    async def close(self) -> None:
        """Send the last counts and let reads on their way finish, then close the store's connections."""
        try:
            if self._hits_sending is not None:
                await self._hits_sending
            await self.flush_popularity()
            if self._near is not None:
                await self._near.settled()
            await asyncio.gather(*self._loading.values(), return_exceptions=True)
            if self._cleanups:  # locks let go of and relay writes finishing in the background
                await asyncio.wait(set(self._cleanups), timeout=CLEANUP_TIMEOUTS * self.settings.timeout_s)
        finally:
            self._lag.stop()
            await self.backend.close()

    async def _popular(
        self, tags: Sequence[str], min_hits: int, current: Mapping[str, str]
    ) -> dict[str, tuple[str, str]]:
        """The (question, locale) of the popular answers under ``tags`` by key, read before they go. Best effort, as it
        only ranks re-warming: the reads run a few at a time, under one deadline of half the invalidation's time,
        and what was found by then is kept. One at a time, a store slow but within each call's timeout held the
        invalidation (and the admin request) for seconds per tag: 6.2 s for 60 tags at 0.1 s a round trip."""
        popular: dict[str, tuple[str, str]] = {}
        slots = asyncio.Semaphore(POPULARITY_READS)
        no_members: list[str] = []
        no_counts: dict[str, int] = {}

        async def read(key: str) -> None:
            async with slots:
                found = await self._read(key)
            if found is not None:
                popular[key] = (found.question, found.locale)

        async def under(tag: str) -> None:
            keep = current.get(tag)
            async with slots:
                members = await self._guarded("tags", lambda: self.backend.tag_members(tag, keep), no_members)
                counts = await self._guarded("popularity", lambda: self.backend.popularity(members), no_counts)
            await asyncio.gather(*(read(key) for key, hits in counts.items() if hits >= min_hits))

        try:
            async with asyncio.timeout(self.settings.invalidate_timeout_s / 2):
                await self.flush_popularity()  # this process's latest hits count too
                await asyncio.gather(*(under(tag) for tag in dict.fromkeys(tags)))
        except TimeoutError:
            log.warning("cache_rewarm_ranking_cut", tags=list(tags)[:20], found=len(popular))
        return popular

    # -- single flight ---------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def single_flight(self, key: str) -> AsyncIterator[tuple[Flight, bool]]:
        """Yields (the flight, True) to the first caller for ``key``: it computes, may publish its text as it
        streams, and lands its result through :meth:`Flight.land` (None if it never does); (the flight in progress,
        False) to everyone else, who await or follow it."""
        existing = self._flights.get(key)
        if existing is not None and not existing.future.done():
            yield existing, False
            return
        # (A flight that has landed but whose caller has not left yet is over: a caller it sent round again, whose
        # reply it could not use, starts the next one.)
        flight = Flight(self.invalidations)
        self._flights[key] = flight
        try:
            yield flight, True
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.land(None)

    @contextlib.asynccontextmanager
    async def peer_lock(
        self, question: str, scope: CacheScope, *, wait_s: float | None = None, relay: Relay | None = None
    ) -> AsyncIterator[CacheHit | Flight | None]:
        """Across replicas, one provider call per identical miss. The first replica to miss takes this answer's
        lock and computes it (yields None), renewing the lock while it works; the others wait for its answer to
        land (yields the hit), or until its lock is released or lapses without one (yields None: compute too).

        The lock is short-lived and renewed, not held for a provider's whole deadline: a holder that dies frees it
        within ``lock_ttl_s``, and one that answers slowly keeps it however long its providers take. Waiting ends
        at once when the holder gives up without a cacheable answer, and after ``wait_s`` (default
        ``lock_wait_s``) at the latest. With the store down this yields None at once: nobody to wait for; so too
        while reads are held (:meth:`hold_reads`: what a peer stores meanwhile may be drawn on a removed version).

        With a ``relay`` and a store other replicas share: the holder copies the relay's flight to the store as it
        streams (cache.relay); a waiter whose relay says ``follow`` yields that flight instead once the holder's
        copy has begun, fed from it (the caller follows the flight as it would a local call)."""
        if self.reads_held:
            yield None
            return
        key = self.entry_key(question, scope)
        lock_key = self.keys.lock(key)
        token = secrets.token_hex(8)
        ttl = self.settings.lock_ttl_s
        taken = await self._guarded("lock", lambda: self.backend.lock(lock_key, ttl, token), None)
        if taken is None:  # the store is not answering: nobody to wait for, no lock to keep
            yield None
            return
        if not taken:
            wait_s = self.settings.lock_wait_s if wait_s is None else wait_s
            async with self._waiting(key, lock_key, question, scope, wait_s=wait_s, relay=relay) as landed:
                yield landed
            return
        writer = self._relay_writer(key, token, relay)
        renewing = asyncio.create_task(self._renew(lock_key, token), name="cache-lock-renew")
        try:
            # The previous holder may have stored its answer and let go between this request's lookup and now.
            found = await self._read(key)
            yield None if found is None else self._exact_hit(key, question, scope, found)
        finally:
            renewing.cancel()

            # The outcome is copied before the lock goes: a follower takes a lock gone without one for a holder
            # gone. Then compare and delete: a lock that lapsed and was taken by another replica stays that one's.
            async def unlock() -> None:
                if writer is not None:
                    writing = await writer.close(RELAY_SETTLE_TIMEOUTS * self.settings.timeout_s)
                    if writing is not None:  # finishes in the background
                        self._in_background(writing)
                await self._guarded("unlock", lambda: self.backend.unlock(lock_key, token), None, even_bypassed=True)

            try:
                await unlock()
            except asyncio.CancelledError:
                # Cancelled again while letting go (sse-starlette cancels a disconnected stream's task at every
                # await): let go in the background rather than hold the lock until it lapses.
                self._in_background(asyncio.create_task(unlock()))
                raise

    def _in_background(self, task: asyncio.Task[None]) -> None:
        """Lock and relay work left to finish after its request let go: the cache's close waits for it."""
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    @contextlib.asynccontextmanager
    async def _waiting(
        self, key: str, lock_key: str, question: str, scope: CacheScope, *, wait_s: float, relay: Relay | None
    ) -> AsyncIterator[CacheHit | Flight | None]:
        """Another replica holds the lock (see :meth:`peer_lock`)."""
        if relay is None or not relay.follow or not self.backend.shared:
            yield await self._await_peer(key, lock_key, question, scope, wait_s)
            return
        found = await self._await_relay(key, lock_key, question, scope, wait_s=wait_s, relay=relay)
        if not isinstance(found, tuple):
            yield found
            return
        stream, holder, entries = found

        async def poll(after: bytes) -> Polled | None:
            polled = await self._relay_poll(key, lock_key, stream, after)
            if polled is None:
                return None
            cached = await self._readable(key, polled.value)
            landed = None if cached is None else self._exact_hit(key, question, scope, cached)
            return Polled(polled.entries, landed, polled.holder == holder)

        relay.flight.relayed = True
        reader = asyncio.create_task(
            follow(
                poll, entries, relay.flight, relay.codec, deadline=relay.deadline, lost_s=self.settings.lock_ttl_s,
                settle_s=RELAY_SETTLE_TIMEOUTS * self.settings.timeout_s,
            ),
            name="cache-relay-follow",
        )  # fmt: skip
        try:
            yield relay.flight
        finally:
            reader.cancel()

    def _exact_hit(self, key: str, question: str, scope: CacheScope, answer: CachedAnswer) -> CacheHit:
        """``answer``, stored under ``question``'s own key, as a counted hit."""
        self._count_hit(key, scope)
        return CacheHit(answer, "exact", 1.0, question)

    def _relay_writer(self, key: str, token: str, relay: Relay | None) -> RelayWriter | None:
        """The holder's copy of its flight for other replicas (cache.relay), when they share this store."""
        if relay is None or not self.backend.shared:
            return None
        stream = self.keys.relay(key, token.encode())

        async def append(entries: Sequence[tuple[bytes, bytes]]) -> bool | None:
            return await self._relay_call(functools.partial(self.backend.relay_append, stream, entries, RELAY_TTL_S))

        writer = relay.flight.mirror = RelayWriter(append, relay.codec, relay.flight)
        return writer

    async def _relay_call(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """A relay's store call (cache.relay), None when it fails or the store is bypassed. Unlike
        :meth:`_guarded`, a failure does not bypass the store for every request: the relay is a convenience of
        the requests that follow a call (they fall back on the cache entry and the lock)."""
        if not self.available:
            return None
        try:
            return await self._timed(call)
        except Exception as error:  # noqa: BLE001 - a relay must never fail a request
            log.info("cache_relay_failed", error=type(error).__name__)
            return None

    async def _relay_poll(self, key: str, lock_key: str, stream: str | None, after: bytes) -> RelayPoll | None:
        return await self._relay_call(
            functools.partial(self.backend.relay_poll, key, lock_key, stream, after, RELAY_READER_S)
        )

    async def marks(self) -> tuple[int, int, int] | None:
        """The store's (generation, invalidation count, knowledge mark) as a call reads the knowledge; None when it
        cannot say."""
        return await self._guarded("generation", self.backend.marks, None)

    async def _renew(self, lock_key: str, token: str) -> None:
        """Extend the lock every third of its TTL; a failed try is repeated soon after. Not through
        :meth:`_guarded`: one slow renewal must neither switch the cache off for every request (a bypass) nor be
        skipped as if it had worked; the lock lapses only if the store stays away for most of its TTL."""
        ttl = self.settings.lock_ttl_s
        pause, logged = ttl / 3, False
        while True:
            await asyncio.sleep(pause)
            try:
                async with asyncio.timeout(ttl / 4):
                    if not await self.backend.extend(lock_key, ttl, token):
                        return  # it lapsed: other replicas may be computing too
                pause = ttl / 3
            except Exception as error:  # noqa: BLE001 - a slow or failing store: try again soon, before it lapses
                if not logged:  # once per lock: a store that is down fails every try
                    log.info("cache_lock_renewal_failed", error=type(error).__name__)
                    logged = True
                pause = ttl / 12

    async def _await_peer(
        self, key: str, lock_key: str, question: str, scope: CacheScope, wait_s: float
    ) -> CacheHit | None:
        deadline = time.monotonic() + wait_s
        pause = PEER_POLL_S
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 1.5, PEER_POLL_MAX_S)  # a fast answer is seen soon; a slow one costs few polls
            gone: tuple[bytes | None, bytes | None] = (None, None)
            raw, held = await self._guarded("get", lambda: self.backend.peek(key, lock_key), gone)
            found = await self._readable(key, raw)
            if found is not None:
                return self._exact_hit(key, question, scope, found)
            if held is None:
                return None  # the holder is done without a cacheable answer (or is gone): compute
        return None

    async def _await_relay(
        self, key: str, lock_key: str, question: str, scope: CacheScope, *, wait_s: float, relay: Relay
    ) -> CacheHit | tuple[str, bytes, Entries] | None:
        """As :meth:`_await_peer`, but done as soon as the holder's relay stream has begun: (the stream, its holder,
        what it holds so far: the header at least, written once this request reads it). None (compute) when the
        holder lets go with nothing relayed, when the stream already ended without an answer (cut, or stopped
        with its shopper: a request arriving then makes its own call rather than replay the partial text), when
        the store saw an invalidation after the call read the knowledge (its answer may be drawn on a version that
        is gone), or when the store does not answer. Polling also counts this request as the stream's reader, for
        the holder."""
        deadline = time.monotonic() + wait_s
        pause = PEER_POLL_S
        holder: bytes | None = None
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 1.5, RELAY_POLL_S)
            stream = None if holder is None else self.keys.relay(key, holder)
            polled = await self._relay_poll(key, lock_key, stream, RELAY_START)
            if polled is None:
                return None
            found = await self._readable(key, polled.value)
            if found is not None:
                return self._exact_hit(key, question, scope, found)
            if holder is not None and stream is not None and polled.entries and stream not in relay.seen:
                entries = await self._rest_of(stream, polled.entries)
                relay.seen.add(stream)
                kinds = {kind for _, kind, _ in entries}
                # (one that let go since is followed for the outcome it wrote before)
                followed = CUT not in kinds and (polled.holder == holder or END in kinds)
                return (stream, holder, entries) if followed and current(entries, polled.marks) else None
            if polled.holder is None:
                return None  # let go with nothing relayed (or lapsed): compute
            holder = polled.holder
        return None

    async def _rest_of(self, stream: str, entries: Entries) -> Entries:
        """``entries`` (a first read of ``stream``) and what follows them, to the stream's end as of now."""
        read = list(entries)
        batch = entries
        while len(batch) >= RELAY_READ_COUNT:
            batch = await self._relay_call(functools.partial(self.backend.relay_read, stream, batch[-1][0])) or []
            read += batch
        return read

    # -- encoding --------------------------------------------------------------------------------------------

    def _encode(self, answer: CachedAnswer) -> bytes:
        return self._compressor.compress(orjson.dumps(asdict(answer)))

    def _decode(self, raw: bytes) -> CachedAnswer:
        """The answer in a stored value; the same value (a popular answer, read again) is decoded once.

        Keyed by the stored bytes themselves, so the memo can never answer for a value the store no longer holds: a
        removed or replaced entry's bytes simply stop coming back. Decoding (zstd, JSON, the dataclass) was a tenth
        of what an exact hit adds to a request (callgrind). Answers are frozen: one object serves many requests."""
        answer = self._decoded.get(raw)
        if answer is None:
            answer = CachedAnswer(**orjson.loads(self._decompressor.decompress(raw)))
            if len(self._decoded) >= DECODED_MEMO:
                del self._decoded[next(iter(self._decoded))]  # the oldest decoded
            self._decoded[raw] = answer
        return answer

    async def _read(self, key: str) -> CachedAnswer | None:
        """The answer stored under ``key``: None when absent, unreadable, or the store is not answering."""
        return await self._readable(key, await self._guarded("get", lambda: self.backend.get(key), None))

    async def _readable(self, key: str, raw: bytes | None) -> CachedAnswer | None:
        """The stored answer, or None. A value that does not decode (corrupted, or written by another version of
        the service during a rolling deploy) is a miss, not a 500, and is removed so it costs nothing again."""
        if raw is None:
            return None
        try:
            return self._decode(raw)
        except Exception as error:  # noqa: BLE001 - zstd, JSON or field errors alike: the entry is unusable
            log.warning("cache_entry_unreadable", error=type(error).__name__)
            if self._near is not None:
                self._near.drop(key)
            self._on_event("unreadable", "get")
            await self._guarded("forget", lambda: self.backend.forget(key, unless=raw), None)
            return None


@dataclass(frozen=True, slots=True)
class Candidates:
    """Cached questions ranked by similarity to a new one (indices into the parallel lists)."""

    ranked: Sequence[int]
    scores: Sequence[float] | Vector
    questions: Sequence[str]
    answers: Sequence[str]


def choose(
    candidates: Candidates, question: str, *, threshold: float, margin: float, guard: SemanticGuard
) -> int | str | None:
    """The semantic tier's decision over candidates ranked by similarity.

    The first candidate at or above the threshold that the guards accept is the match, but only when it beats
    every candidate with a *different* answer (guard-rejected ones included) by ``margin``: an ambiguous
    neighbourhood is a miss. Returns the index, a guard's reason when a guard vetoed the only match, or None.
    (``helpline eval cache`` evaluates this very function.)
    """
    vetoed: str | None = None
    scores, answers = candidates.scores, candidates.answers
    for index in candidates.ranked:
        similarity = float(scores[index])
        if similarity < threshold:
            return vetoed
        reason = guard.conflict(question, candidates.questions[index])
        if reason is not None:
            vetoed = vetoed or reason
            continue
        rival = max(
            (float(scores[other]) for other in candidates.ranked if answers[other] != answers[index]), default=-1.0
        )
        return index if similarity - rival >= margin else None
    return vetoed
