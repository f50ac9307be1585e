"""Invalidation by tag, re-warming of popular answers, and keeping every replica's knowledge index current."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

import structlog

from helpline.cache.service import AnswerCache, CacheUnavailable
from helpline.chat.service import ChatService
from helpline.knowledge import versions
from helpline.knowledge.base import KnowledgeBase
from helpline.knowledge.documents import SourceDocument
from helpline.store import repositories

log = structlog.get_logger(__name__)
OWED_RETRY_S = 1.0  # the watcher's interval while a removal is owed
REQUEST_SCAN_FACTOR = 5  # an admin request's budget for invalidation by retrieval, in store timeouts
SETTLE_ROUNDS = 3  # reads of the knowledge per poll while documents keep changing under it (the next poll goes on)
CATCH_UP_QUIET_S = 5.0  # after a request's wait for this copy to catch up ran out: how long requests do not wait
Question = tuple[str, str]  # a popular question to re-warm, and the locale it was asked in


class Invalidator:
    """Changes to knowledge reach the cache: exactly the answers that drew on a changed document disappear."""

    def __init__(self, cache: AnswerCache | None, chat: ChatService, knowledge: KnowledgeBase) -> None:
        self._cache = cache
        self._chat = chat
        self._knowledge = knowledge
        self._tasks: set[asyncio.Task[None]] = set()
        # Tags whose invalidation the store did not confirm, retried by :meth:`watch` until it does: with the
        # document version to keep, or None for a whole tag.
        self.pending: dict[str, str | None] = {}
        # Documents whose invalidation by retrieval (:meth:`reach`) the store did not confirm, retried likewise.
        self.unreached: set[str] = set()
        # Knowledge changes read from the database's outbox and not yet drained: change id -> document id.
        self.changes: dict[int, str] = {}
        # This process wrote a change that no read of the outbox has seen yet (its request could not wait for one).
        self.unread = False
        # Why the last round could not read or settle the outbox (the database, not the cache store, failed).
        self._database_error: str | None = None
        # The knowledge went back (see :meth:`_went_back`) and the store has not confirmed a reset since.
        self.went_back = False
        self._polling = asyncio.Lock()
        self._wake = asyncio.Event()  # a request found this copy behind: the watcher polls now (see catch_up)
        self._quiet_until = 0.0

    @property
    def owed(self) -> bool:
        """A removal this process knows of has not been confirmed by the store yet."""
        return bool(self.pending or self.unreached or self.changes or self.unread or self.went_back)

    def _hold_reads(self) -> None:
        """No cached answer is served while a removal is owed: which ones it will remove is not known until it runs
        (an added document reaches answers that cite nothing of it)."""
        if self._cache is not None:
            self._cache.hold_reads(self.owed)

    async def invalidate(
        self, tags: Sequence[str], *, rewarm: bool = True, current: Mapping[str, str] | None = None
    ) -> int:
        """Drop the answers tagged ``tags``; for a document in ``current``, those that drew on a version of it
        other than the one given (a document changed to that version). Raises CacheUnavailable when the store
        does not confirm it (the caller learns, and :meth:`watch` retries the tags every interval until it goes
        through)."""
        removed, popular = await self._drop_tagged(tags, current or {})
        if rewarm:
            self._start_rewarm(popular)
        return removed

    async def _drop_tagged(
        self, tags: Sequence[str], current: Mapping[str, str], revision: int | None = None
    ) -> tuple[int, list[Question]]:
        if self._cache is None or not tags:
            return 0, []
        try:
            return await self._cache.invalidate(list(dict.fromkeys(tags)), current=current, revision=revision)
        except CacheUnavailable:
            for tag in tags:  # a whole-tag invalidation still pending stays whole
                whole = tag in self.pending and self.pending[tag] is None
                self.pending[tag] = None if whole else current.get(tag)
            self._hold_reads()
            raise

    async def reach(self, documents: Sequence[str]) -> int:
        """Drop the answers given without these added or changed documents whose question retrieval now gives
        them to (see :meth:`AnswerCache.invalidate_reached`: no tag reaches them), and re-warm the popular ones.
        Raises CacheUnavailable when the store does not confirm it; :meth:`watch` retries until it does."""
        removed, popular = await self._reach(documents)
        self._start_rewarm(popular)
        return removed

    async def _reach(self, documents: Sequence[str], budget_s: float | None = None) -> tuple[int, list[Question]]:
        """Also retries the documents earlier attempts left in :attr:`unreached`."""
        if self._cache is None:  # no cached answer to reach
            self.unreached.clear()
            return 0, []
        candidates = list(dict.fromkeys([*self.unreached, *documents]))
        self.unreached.difference_update(candidates)
        present = [doc for doc in candidates if self._knowledge.get(doc)]  # one deleted since: nothing to reach
        if not present:
            return 0, []
        try:
            return await self._cache.invalidate_reached(present, self._chat.retrieves, budget_s=budget_s)
        except BaseException:  # unconfirmed, or cancelled: retried on the next poll
            self.unreached.update(present)
            self._hold_reads()
            raise

    async def _drop_and_reach(
        self, tags: Sequence[str], current: Mapping[str, str], documents: Sequence[str], budget_s: float | None
    ) -> int:
        """Drop ``tags`` (see :meth:`invalidate`), then reach ``documents`` and those left from before; the popular
        answers of both are re-warmed once both are done. The drop declares the knowledge revision this copy was
        read at: from then on no replica caches an answer drawn from an older copy, which may lack a document
        added since (one that has not polled it yet), so none is written behind the search by retrieval."""
        self.unreached.update(documents)  # reached below, or on a later poll if anything fails before
        removed, popular = await self._drop_tagged(tags, current, self._knowledge.revision)
        reached, more = await self._reach((), budget_s)
        self._start_rewarm([*popular, *more])
        return removed + reached

    def _start_rewarm(self, popular: list[Question]) -> None:
        if not popular:
            return
        task = asyncio.create_task(self._rewarm(popular), name="cache-rewarm")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def upsert_document(self, document: SourceDocument) -> int:
        """Store the new version (a changed text leaves a change in the database's outbox, in the same transaction),
        then drain the outbox: the answers that used the old version (and its ingest tags) go, then those given
        without it that retrieval now gives it to. Raises CacheUnavailable when the store does not confirm it: the
        change stays in the outbox, and every replica serves no cached answer until one of them has drained it."""
        await self._knowledge.upsert(document)
        self._learn_products()
        return await self.sync(self._request_budget(), wrote=True)

    async def delete_document(self, document_id: str) -> int | None:
        """Remove the document, then the answers that drew on it (None: there was no such document). Writes of
        answers drawn on it are refused for a while, as after a change (its version is now a deletion), so a
        replica that has not polled the deletion yet cannot cache a new one."""
        if not await self._knowledge.delete(document_id):
            return None
        self._learn_products()
        return await self.sync(self._request_budget(), wrote=True)

    def _request_budget(self) -> float | None:
        """How long an admin request waits for the search of answers retrieval now gives a changed document (it
        reads every scope's index): past it the request hears 503 and the watcher finishes the job, reads held."""
        return None if self._cache is None else self._cache.settings.invalidate_timeout_s * REQUEST_SCAN_FACTOR

    def _current(self, documents: Sequence[str]) -> dict[str, str]:
        """The version of each document as this process now has it (called after a read of the knowledge); for one
        that is gone, its deletion at the revision that read found it gone at: newer than any version it had
        (another replica's among them), older than any written after. (The last revision this copy had of it was
        older than another replica's newer version, whose answers then stayed; found by a review, session 20.)"""
        return {
            doc_id: self._knowledge.version(doc_id) or versions.deleted(self._knowledge.revision)
            for doc_id in documents
        }

    def _learn_products(self) -> None:
        """The cache's product guard names what the store sells now: a product added after start-up (or renamed)
        must keep two questions about two different products from sharing an answer like any other."""
        if self._cache is not None:
            self._cache.guard.set_vocabulary(self._knowledge.product_vocabulary())

    async def _rewarm(self, questions: list[tuple[str, str]]) -> None:
        """Each in the locale it was asked in (a French answer is re-warmed in French, not as a locale-less one).

        Once the round that removed them has finished, and with it the reads it held: a re-warm under held reads
        took no answer lock, so shoppers asking the question meanwhile, on other replicas, made calls of their own
        (found by a review, session 22)."""
        async with self._polling:
            pass
        warmed = 0
        unique = list(dict.fromkeys(questions))
        for done, (question, locale) in enumerate(unique):
            if self._cache is not None and not self._cache.available:
                # The store stopped answering: each answer would cost a provider call and then not be written.
                # The questions left are answered (and cached) by the next shoppers who ask them.
                log.warning("cache_rewarm_stopped", reason="cache store unavailable", left=len(unique) - done)
                break
            try:
                warmed += await self._chat.warm(question, locale or None)
            except Exception as error:  # noqa: BLE001 - re-warming is best effort; the next shopper refills it
                log.warning("cache_rewarm_failed", error=type(error).__name__)
        log.info("cache_rewarmed", questions=len(questions), warmed=warmed)

    async def watch(self, interval_s: float) -> None:
        """Poll the database for knowledge changed by another process (another replica, `helpline kb ingest`), and
        retry invalidations the cache store did not confirm."""
        while True:
            self._wake.clear()
            await self.poll()
            # While a removal is owed no cached answer is served: retried sooner than the usual interval.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(interval_s, OWED_RETRY_S) if self.owed else interval_s):
                    await self._wake.wait()

    async def catch_up(self, revision: int, wait_s: float) -> bool:
        """For a request about to read the knowledge, which found the cache store's knowledge mark (the newest
        revision an invalidation declared: another replica changed a document) ahead of this copy: wakes the
        watcher and waits for its read of the database, up to ``wait_s``. Whether the copy caught up. Without
        this a replica answered from the old text (a price, a delivery time) until its next poll, up to
        KB_REFRESH_S after the change's PUT had returned on another (found by a review, session 26); those answers
        were not cached (the store refuses them), but they were shown. When a wait runs out (the database is slow
        or down) requests do not wait again for a while, and answer from the copy they have."""
        if self._knowledge.revision >= revision:
            return True
        clock = asyncio.get_running_loop().time
        if clock() < self._quiet_until:
            return False
        self._wake.set()
        try:
            async with asyncio.timeout(wait_s):
                await self._knowledge.reached(revision)
        except TimeoutError:
            self._quiet_until = clock() + CATCH_UP_QUIET_S
            log.warning("knowledge_behind", declared=revision, copy=self._knowledge.revision)
            return False
        return True

    async def start(self) -> None:
        """At start-up, before the first request: drain the outbox if it is not empty (left by a process that
        stopped before the store answered, an ingest, the sample knowledge's first load). Reads stay held if the
        store does not confirm it in time; the watcher then goes on."""
        self.changes = await self._knowledge.pending_changes()
        self._hold_reads()
        if self.changes or self._cache is not None:  # also: did the knowledge go back while it was stopped?
            with contextlib.suppress(CacheUnavailable):
                await self.sync(self._request_budget())

    async def poll(self) -> None:
        """One round of :meth:`watch`; never raises (the watcher must outlive any failure)."""
        with contextlib.suppress(CacheUnavailable):
            await self.sync()

    async def sync(self, budget_s: float | None = None, *, wrote: bool = False) -> int:
        """Bring the cache in line with the knowledge in the database; how many answers it removed. Raises
        CacheUnavailable when a removal is still owed at the end (kept for the next round, reads held meanwhile).
        ``budget_s`` bounds the whole call, the wait for a round already running included (an admin request's);
        ``wrote``: the caller has just written a change to the outbox, so reads are held until a read of it.

        What it removes: documents another process changed (this process's copy of the knowledge is reloaded
        for them), the database's outbox of changes not yet drained (left by any process, also one that stopped
        before the store answered, or one started after the change, which sees no change in its copy), and what
        earlier rounds left pending. The knowledge is read again after each invalidation it makes, and what
        changed meanwhile is invalidated too. Versions are ordered (knowledge/versions.py): a replica that read
        version 2 and invalidated after another had saved and invalidated version 3 removes what did not draw on
        3 and leaves the store's mark at 3, so what it answers from its copy of 2 until its next read (which may
        fail: the database is down) is refused by the store, not served by the other replicas."""
        clock = asyncio.get_running_loop().time
        deadline = None if budget_s is None else clock() + budget_s
        if wrote:
            self.unread = True
            self._hold_reads()
        removed = rounds = 0
        try:
            async with asyncio.timeout_at(deadline):  # a watcher's round may be running (it has no budget)
                await self._polling.acquire()
        except TimeoutError:
            raise CacheUnavailable(
                "the knowledge is being synchronised with the cache store by another task that has not finished: "
                "no cached answer is served until this change is drained too (within seconds)"
            ) from None
        try:  # one at a time: two overlapping reads of the knowledge could set it back
            self._database_error = None  # a failure of an earlier call is not this one's
            while deadline is None or clock() < deadline:
                left = None if deadline is None else deadline - clock()
                changed, drained, count = await self._poll_once(left)
                removed += count
                rounds += changed
                # Read again while documents changed under it (a few rounds; the next poll goes on) and while the
                # outbox was being drained (a whole catalogue's ingest takes several reads of it).
                if not (changed or drained) or rounds >= SETTLE_ROUNDS:
                    break
        finally:
            self._polling.release()
            self._hold_reads()  # also when cancelled: what it left owed is kept
        if budget_s is not None and self.owed:
            # A request's round left a removal owed: the watcher retries it now, then every OWED_RETRY_S, not once
            # its usual interval is over (reads are held until then; review helper-53).
            self._wake.set()
        if self._database_error is not None and self.owed:
            raise CacheUnavailable(
                f"the database failed ({self._database_error}) while the knowledge changes were drained: no cached "
                "answer is served until they are (retried every few seconds)"
            )
        if self.owed:
            raise CacheUnavailable(
                "the cache store did not confirm removing the answers drawn on the knowledge as it was: none is "
                "served until it does (retried every few seconds)"
            )
        return removed

    async def _read_knowledge(self) -> list[str] | None:
        """Read the outbox into :attr:`changes`, then this process's copy of the knowledge: the documents changed
        under it, or None when the database failed.

        The outbox first: a change committed after this read is seen as changed by the refresh (and its entry
        drained next round), and a refresh that fails after it loses nothing. A change written by this process is
        known to be among those read only once a read reached the end of the outbox (one read takes the oldest
        CHANGES_READ)."""
        unread, self.unread = self.unread, False
        try:
            self.changes = await self._knowledge.pending_changes()
            if len(self.changes) >= repositories.CHANGES_READ:
                self.unread = self.unread or unread
            return await self._knowledge.refresh()
        except Exception as error:  # noqa: BLE001 - a failed poll is retried next interval
            self.unread = self.unread or unread
            self._database_error = type(error).__name__
            log.warning("knowledge_refresh_failed", error=type(error).__name__)
            return None
        except BaseException:  # cancelled: the change may not have been read
            self.unread = self.unread or unread
            raise

    async def _poll_once(self, budget_s: float | None) -> tuple[bool, bool, int]:
        """(whether documents changed under this process's copy, whether outbox changes were drained, how many
        answers it removed)."""
        changed = await self._read_knowledge()
        if changed is None or not await self._went_back(budget_s):
            return False, False, 0
        self._database_error = None
        if changed:
            log.info("knowledge_refreshed", documents=len(changed))
            self._learn_products()
        # Every replica sees the same change and invalidates it too: harmless, since an invalidation keeps what
        # drew on the version it names (this replica may also have cached answers from its older copy meanwhile:
        # those go). Pending tags keep a whole-tag invalidation whole.
        draining = dict(self.changes)
        documents = list(dict.fromkeys([*changed, *draining.values()]))
        retry, self.pending = self.pending, {}
        whole = [tag for tag, version in retry.items() if version is None]
        versioned = [tag for tag in dict.fromkeys([*retry, *documents]) if tag not in whole]
        tags: dict[str, str | None] = {**self._current(versioned), **dict.fromkeys(whole)}
        if not tags and not self.unreached:
            return False, False, 0
        current = {tag: version for tag, version in tags.items() if version is not None}
        try:  # a document added or rewritten: also the answers given without it
            removed = await self._drop_and_reach(list(tags), current, documents, budget_s)
        except CacheUnavailable:
            log.warning("cache_invalidation_pending", tags=len(self.pending), documents=len(self.unreached))
            return False, False, 0
        except Exception:  # keep the tags for the next round, keep watching (logged with its traceback)
            self.pending = {**tags, **self.pending}
            log.exception("cache_invalidation_error")
            return False, False, 0
        except BaseException:  # cancelled (a request gone, shutdown): the tags stay owed
            self.pending = {**tags, **self.pending}
            raise
        if draining:
            try:
                await self._knowledge.settle_changes(draining)
            except Exception as error:  # noqa: BLE001 - drained again next round (invalidating twice is harmless)
                self._database_error = type(error).__name__
                log.warning("knowledge_changes_not_settled", error=type(error).__name__)
                return False, False, removed
            for change_id in draining:
                self.changes.pop(change_id, None)
        return bool(changed), bool(draining), removed

    async def _went_back(self, budget_s: float | None) -> bool:
        """Whether the round may go on: False when the knowledge went back and the store did not forget it all.

        A database restored from a backup (or a migration run down and up again) numbers its changes from an
        older revision than the store's marks, which came from the newer knowledge: they would keep the answers of
        versions that are gone (an older version's invalidation keeps the newer mark's answers) and refuse every
        new answer until they expire (found by a review, session 20). Seen as a knowledge mark above the database's
        revision now (a mark is only ever declared from a read of it); then everything the store holds for the
        tenant goes, and this round's invalidation declares the database's revision afresh. Reads stay held until
        a reset went through; only the watcher runs one (a scan of the store's keyspace: a request's round has a
        budget). Not seen: a restore followed by as many changes as it went back before any replica polled; the
        marks of the documents a replica sees changed are replaced all the same (see the backend's invalidate), and
        `helpline cache reset` clears the rest (README: restoring a database)."""
        if self._cache is None:
            return True
        try:
            self.went_back = self.went_back or await self._knowledge_went_back(self._cache)
        except Exception as error:  # noqa: BLE001 - the database: retried next round
            self._database_error = type(error).__name__
            return False
        if not self.went_back:
            return True
        if budget_s is not None:
            return False
        try:
            await self._cache.reset("the knowledge went back")
        except CacheUnavailable:
            return False  # reads stay held; the next round tries again
        self.went_back = False
        return True

    async def _knowledge_went_back(self, cache: AnswerCache) -> bool:
        mark = await cache.knowledge_mark()
        if mark is None or mark <= self._knowledge.revision:
            return False
        now = await self._knowledge.database_revision()  # this copy may only be behind: is the database too?
        if now >= mark:
            return False
        log.error("knowledge_went_back", declared=mark, database=now)
        return True

    async def settled(self) -> None:
        """Return once the re-warming started so far has finished (tests; a drain before shutdown)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
