"""Write-behind for conversations: records leave the request path, are written in batches, and are never lost.

A request enqueues its session and exchange and answers at once; a background task writes whatever is queued in
one transaction (in order: sessions before the exchanges that use them), lingering ``linger_s`` so a burst shares one
transaction. A failed batch is retried with backoff
(counted and logged), never dropped; shutdown drains the queue. Reads of a session flush first, so a shopper
always reads their own writes.

A batch takes whatever is waiting, up to ``batch_size`` (5,000) records. On a busy server each of a batch's round
trips to the database waits for a turn of the event loop, so a batch costs about the same time whatever its size;
with batches of at most 500 the writer fell behind at saturation on every database (bench server, 32 connections
of cached answers, 10 s: a backlog that took 1.6-1.7 s to drain on PostgreSQL and MariaDB; 0.11 s with 5,000).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PendingSession:
    session_id: str
    owner_key_id: int | None
    locale: str | None


WriteBatch = Callable[[Sequence[object]], Awaitable[None]]


class ConversationWriter:
    def __init__(
        self,
        write: WriteBatch,
        *,
        batch_size: int = 5000,
        linger_s: float = 0.01,
        on_failure: Callable[[BaseException], None] | None = None,
        max_backoff_s: float = 5.0,
        release: Callable[[], Awaitable[None]] | None = None,
        on_backlog: Callable[[int], None] | None = None,
        report_s: float = 1.0,
    ) -> None:
        self._write = write
        self._release = release  # what ``write`` holds (a process, a connection), let go once the last batch is in
        # Told the records not yet written every ``report_s`` (a metric), from a task of its own: not per record,
        # which would cost every request, and not per batch, which would freeze it while a write hangs.
        self._on_backlog = on_backlog
        self._report_s = report_s
        self._reporter: asyncio.Task[None] | None = None
        self._writing = 0  # records of the batch under way
        self._batch_size = batch_size
        self._linger_s = linger_s
        self._on_failure = on_failure or (lambda _error: None)
        self._max_backoff_s = max_backoff_s
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._sessions: dict[str, PendingSession] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="conversation-writer")
        if self._reporter is None and self._on_backlog is not None:
            self._reporter = asyncio.create_task(self._report(self._on_backlog), name="conversation-backlog")

    def add_session(self, session: PendingSession) -> None:
        self._sessions[session.session_id] = session
        self._queue.put_nowait(session)

    def add(self, record: object) -> None:
        self._queue.put_nowait(record)

    def pending_session(self, session_id: str) -> PendingSession | None:
        return self._sessions.get(session_id)

    @property
    def backlog(self) -> int:
        """Records accepted and not yet written (queued, and in the batch under way)."""
        return self._queue.qsize() + self._writing

    async def flush(self) -> None:
        """Return once everything queued before the call is written."""
        if self._task is None:
            return
        if self._task.done():  # the writer died (a bug, not a database error: those are retried): never hang
            log.error("conversation_writer_stopped", backlog=self._queue.qsize())
            return
        await self._queue.join()

    async def close(self) -> None:
        """Drain and stop (graceful shutdown)."""
        await self.flush()
        for task in (self._task, self._reporter):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._reporter = None
        if self._on_backlog is not None:
            self._on_backlog(self.backlog)
        if self._release is not None:
            release, self._release = self._release, None
            await release()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(self._linger_s)  # let a burst gather: one transaction for many requests
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._writing = len(batch)
            await self._write_with_retry(batch)
            self._writing = 0
            for item in batch:
                if isinstance(item, PendingSession):
                    self._sessions.pop(item.session_id, None)
                self._queue.task_done()

    async def _report(self, on_backlog: Callable[[int], None]) -> None:
        while True:
            on_backlog(self.backlog)
            await asyncio.sleep(self._report_s)

    async def _write_with_retry(self, batch: list[object]) -> None:
        backoff = 0.05
        while True:
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - a database outage must not lose a conversation
                self._on_failure(error)
                log.warning(
                    "conversation_write_failed", error=type(error).__name__, batch=len(batch), retry_in_s=backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
            else:
                return
