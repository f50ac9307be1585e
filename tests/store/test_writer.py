"""The write-behind writer: batches, keeps order, retries a failing database, never drops a record."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from helpline.store.writer import ConversationWriter, PendingSession


async def test_failed_batches_are_retried_in_order_and_nothing_is_lost() -> None:
    written: list[object] = []
    failures: list[BaseException] = []
    attempts = 0

    async def write(batch: Sequence[object]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            raise ConnectionError("database down")
        written.extend(batch)

    writer = ConversationWriter(write, on_failure=failures.append, linger_s=0.01)
    writer.start()
    session = PendingSession("s_1", None, None)
    writer.add_session(session)
    for index in range(5):
        writer.add(f"record-{index}")
    assert writer.pending_session("s_1") == session  # visible to ownership checks before it is written
    await writer.flush()
    assert written == [session, *(f"record-{index}" for index in range(5))]
    assert len(failures) == 2
    assert writer.pending_session("s_1") is None
    assert writer.backlog == 0
    await writer.close()


async def test_close_drains_the_queue() -> None:
    written: list[object] = []

    async def write(batch: Sequence[object]) -> None:
        written.extend(batch)

    writer = ConversationWriter(write)
    writer.start()
    for index in range(300):
        writer.add(index)
    await writer.close()
    assert written == list(range(300))


async def test_close_releases_what_the_write_holds_after_the_last_batch() -> None:
    events: list[str] = []

    async def write(batch: Sequence[object]) -> None:
        events.append(f"batch of {len(batch)}")

    async def release() -> None:
        events.append("released")

    writer = ConversationWriter(write, release=release)
    writer.start()
    for index in range(3):
        writer.add(index)
    await writer.close()
    await writer.close()  # a second close (a retried shutdown) releases nothing twice
    assert events == ["batch of 3", "released"]


async def test_the_backlog_is_reported_while_a_write_hangs() -> None:
    """A database that neither answers nor fails (a lock, no statement timeout): the backlog still moves in what is
    reported (by its own task, not at the end of a batch), the batch under way included; then it falls to zero."""
    answering = asyncio.Event()
    writing = asyncio.Event()
    reported: list[int] = []
    all_reported = asyncio.Event()

    def report(records: int) -> None:
        reported.append(records)
        if records == 25:
            all_reported.set()

    async def write(batch: Sequence[object]) -> None:
        writing.set()
        await answering.wait()

    writer = ConversationWriter(write, linger_s=0.001, batch_size=10, on_backlog=report, report_s=0.005)
    writer.start()
    for index in range(5):
        writer.add(index)
    await asyncio.wait_for(writing.wait(), 5)
    for index in range(5, 25):  # arrive while the first batch hangs
        writer.add(index)
    await asyncio.wait_for(all_reported.wait(), 5)
    answering.set()
    await writer.flush()
    await writer.close()
    assert reported[-1] == 0
    assert max(reported) == 25


async def test_a_batch_takes_everything_waiting_up_to_its_size() -> None:
    """What piled up while the writer waited goes in one batch (a busy server pays per batch, not per record)."""
    sizes: list[int] = []

    async def write(batch: Sequence[object]) -> None:
        sizes.append(len(batch))

    writer = ConversationWriter(write)
    for index in range(1200):
        writer.add(index)
    writer.start()
    await writer.flush()
    await writer.close()
    assert sizes == [1200]
    small = ConversationWriter(write, batch_size=500)
    sizes.clear()
    for index in range(1200):
        small.add(index)
    small.start()
    await small.close()
    assert sizes == [500, 500, 200]
