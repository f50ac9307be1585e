"""Calls of concurrent requests go out together (group commit): lease releases, each returning only once its slot
is free, and the generic GroupCommit the admissions use."""

from __future__ import annotations

import asyncio
import traceback

import pytest
from structlog.testing import capture_logs

from helpline.ratelimit.base import GroupCommit, ReleaseBatcher
from helpline.ratelimit.redis import RedisLimiter
from tests.ratelimit.conftest import MakeLimiter


class Store:
    """Records what each send carried; ``gate`` holds a send until the test lets it go."""

    def __init__(self, error: Exception | None = None) -> None:
        self.sends: list[list[str]] = []
        self.freed: set[str] = set()
        self.gate = asyncio.Event()
        self.gate.set()
        self.sending = asyncio.Event()  # set once a send has started
        self.error = error

    async def send(self, tokens: list[str]) -> None:
        self.sends.append(list(tokens))
        self.sending.set()
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        self.freed.update(tokens)


async def test_concurrent_releases_share_one_send_and_each_waits_for_its_own() -> None:
    store = Store()
    batcher = ReleaseBatcher(store.send)
    await asyncio.gather(*(batcher.release(f"t{n}") for n in range(40)))
    assert store.sends == [[f"t{n}" for n in range(40)]]
    assert store.freed == {f"t{n}" for n in range(40)}


async def test_releases_that_arrive_while_a_batch_is_on_its_way_form_the_next_one() -> None:
    store = Store()
    store.gate.clear()
    batcher = ReleaseBatcher(store.send)
    first = asyncio.create_task(batcher.release("a"))
    await store.sending.wait()  # the first batch is on its way (held at the gate)
    later = [asyncio.create_task(batcher.release(token)) for token in ("b", "c", "d")]
    await asyncio.sleep(0.01)
    assert not first.done()  # not released until the store confirmed it
    assert store.sends == [["a"]]
    store.gate.set()
    await asyncio.gather(first, *later)
    assert store.sends == [["a"], ["b", "c", "d"]]
    assert store.freed == {"a", "b", "c", "d"}


async def test_a_failed_send_reaches_every_caller_of_its_batch_and_the_next_batch_is_tried_afresh() -> None:
    store = Store(error=ConnectionError("redis is down"))
    batcher = ReleaseBatcher(store.send)
    results = await asyncio.gather(*(batcher.release(token) for token in ("a", "b")), return_exceptions=True)
    assert [type(result) for result in results] == [ConnectionError, ConnectionError]
    store.error = None
    await batcher.release("c")
    assert store.sends == [["a", "b"], ["c"]]
    assert store.freed == {"c"}


async def test_a_cancelled_caller_does_not_cancel_the_release_of_the_others() -> None:
    store = Store()
    store.gate.clear()
    batcher = ReleaseBatcher(store.send)
    impatient = asyncio.create_task(batcher.release("a"))
    patient = asyncio.create_task(batcher.release("b"))
    await store.sending.wait()
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    store.gate.set()
    await patient
    assert store.freed == {"a", "b"}  # the token of the cancelled caller was released too
    await batcher.aclose()


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_a_burst_of_releases_frees_every_slot_on_redis(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(max_concurrent=200)
    assert isinstance(limiter, RedisLimiter)
    held = await asyncio.gather(*(limiter.acquire([]) for _ in range(200)))
    assert all(decision.allowed for decision in held)
    assert not (await limiter.acquire([])).allowed
    await asyncio.gather(*(decision.lease.release() for decision in held if decision.lease is not None))
    assert await limiter.in_flight() == 0
    again = await asyncio.gather(*(limiter.acquire([]) for _ in range(200)))
    assert all(decision.allowed for decision in again)


async def test_callers_hear_of_a_send_cancelled_by_shutdown_instead_of_waiting_forever() -> None:
    store = Store()
    store.gate.clear()
    batcher = ReleaseBatcher(store.send)
    waiting = asyncio.create_task(batcher.release("a"))
    await store.sending.wait()
    for task in asyncio.all_tasks():
        if task.get_name() == "ratelimit-release":
            task.cancel()
    with pytest.raises(RuntimeError, match="interrupted"):
        await asyncio.wait_for(waiting, timeout=2)


async def test_callers_of_a_batch_still_waiting_for_its_turn_hear_of_a_shutdown() -> None:
    store = Store()
    store.gate.clear()
    batcher = ReleaseBatcher(store.send)
    first = asyncio.create_task(batcher.release("a"))
    await store.sending.wait()  # batch 1 is on its way; batch 2 waits for its turn
    second = asyncio.create_task(batcher.release("b"))
    await asyncio.sleep(0.01)
    for task in asyncio.all_tasks():
        if task.get_name() == "ratelimit-release":
            task.cancel()
    for caller in (first, second):
        with pytest.raises(RuntimeError, match="interrupted"):
            await asyncio.wait_for(caller, timeout=2)


class Doubler:
    """A store that answers each item of a batch with twice its value; ``gate`` holds a send until let go."""

    def __init__(self) -> None:
        self.sends: list[list[int]] = []
        self.gates: list[asyncio.Event] = []
        self.hold = False
        self.sent = asyncio.Condition()

    async def send(self, items: list[int]) -> list[int]:
        self.sends.append(list(items))
        gate = asyncio.Event()
        self.gates.append(gate)
        async with self.sent:
            self.sent.notify_all()
        if not self.hold:
            gate.set()
        await gate.wait()
        return [item * 2 for item in items]


async def test_each_caller_gets_its_own_items_result_from_the_shared_call() -> None:
    store = Doubler()
    commit: GroupCommit[int, int] = GroupCommit(store.send)
    results = await asyncio.gather(*(commit.submit(n) for n in range(30)))
    assert results == [n * 2 for n in range(30)]
    assert store.sends == [list(range(30))]
    await commit.aclose()


async def test_a_full_batch_starts_the_next_one() -> None:
    store = Doubler()
    commit: GroupCommit[int, int] = GroupCommit(store.send, max_items=4)
    results = await asyncio.gather(*(commit.submit(n) for n in range(10)))
    assert results == [n * 2 for n in range(10)]
    assert store.sends == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_a_stalled_batch_holds_the_next_one_back_only_for_stall_s() -> None:
    store = Doubler()
    store.hold = True
    commit: GroupCommit[int, int] = GroupCommit(store.send, stall_s=0.05)
    stuck = asyncio.create_task(commit.submit(1))
    await asyncio.sleep(0.01)
    assert store.sends == [[1]]
    started = asyncio.get_running_loop().time()
    later = asyncio.create_task(commit.submit(2))
    async with store.sent:
        await store.sent.wait_for(lambda: len(store.sends) == 2)
    waited = asyncio.get_running_loop().time() - started
    assert 0.04 <= waited < 1.0  # it waited for the stuck batch, then went beside it
    store.gates[1].set()
    assert await later == 4
    assert not stuck.done()
    store.gates[0].set()
    assert await stuck == 2


async def test_without_stall_s_the_next_batch_waits_for_the_one_before() -> None:
    store = Doubler()
    store.hold = True
    commit: GroupCommit[int, int] = GroupCommit(store.send)
    first = asyncio.create_task(commit.submit(1))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(commit.submit(2))
    await asyncio.sleep(0.1)
    assert store.sends == [[1]]
    store.gates[0].set()
    assert await first == 2
    async with store.sent:
        await store.sent.wait_for(lambda: len(store.gates) == 2)
    store.gates[1].set()
    assert await second == 4


async def test_a_store_answering_the_wrong_number_of_results_fails_every_caller() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    commit: GroupCommit[int, int] = GroupCommit(short)
    results = await asyncio.gather(*(commit.submit(n) for n in range(3)), return_exceptions=True)
    assert all(isinstance(result, RuntimeError) and "2 results for 3 calls" in str(result) for result in results)


async def test_a_flush_cancelled_before_its_first_step_fails_its_callers_and_later_calls_start_afresh() -> None:
    store = Doubler()
    commit: GroupCommit[int, int] = GroupCommit(store.send, name="flush-under-test")
    caller = asyncio.create_task(commit.submit(1))
    await asyncio.sleep(0)  # the caller has opened a batch; its flush has not run yet
    flushes = [task for task in asyncio.all_tasks() if task.get_name() == "flush-under-test"]
    assert len(flushes) == 1
    flushes[0].cancel()
    with pytest.raises(RuntimeError, match="interrupted"):
        await asyncio.wait_for(caller, timeout=2)
    assert await asyncio.wait_for(commit.submit(2), timeout=2) == 4  # not stuck behind the dead batch
    assert store.sends == [[2]]


async def test_releases_arriving_behind_a_slow_batch_all_go_in_the_next_send() -> None:
    store = Store()
    store.gate.clear()
    batcher = ReleaseBatcher(store.send)
    first = asyncio.create_task(batcher.release("first"))
    await store.sending.wait()
    tokens = [f"t{n}" for n in range(1000)]
    later = [asyncio.create_task(batcher.release(token)) for token in tokens]
    await asyncio.sleep(0.01)
    store.gate.set()
    await asyncio.gather(first, *later)
    assert store.sends == [["first"], tokens]  # one round trip for the thousand, not a chain of capped batches


async def test_every_caller_of_a_failed_batch_gets_a_short_traceback() -> None:
    store = Store(error=ConnectionError("redis is down"))
    batcher = ReleaseBatcher(store.send)  # a GroupCommit underneath
    results = await asyncio.gather(*(batcher.release(f"t{n}") for n in range(100)), return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)
    last = results[-1]
    assert isinstance(last, ConnectionError)
    assert len(traceback.extract_tb(last.__traceback__)) < 10  # not the frames of the 99 callers before it


async def test_settled_returns_once_the_batches_open_or_on_their_way_are_answered() -> None:
    store = Doubler()
    store.hold = True
    commit: GroupCommit[int, int] = GroupCommit(store.send, stall_s=0.01)
    first = asyncio.create_task(commit.submit(1))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(commit.submit(2))  # goes beside the held first batch after 10 ms
    settled = asyncio.create_task(commit.settled())
    await asyncio.sleep(0.05)
    assert not settled.done()
    store.gates[0].set()
    await first
    await asyncio.sleep(0.01)
    assert not settled.done()  # the second batch is still on its way
    store.gates[1].set()
    await asyncio.wait_for(settled, timeout=2)
    assert await second == 4
    await asyncio.wait_for(commit.settled(), timeout=2)  # nothing pending: returns at once


async def test_a_release_handed_in_without_waiting_goes_out_with_the_next_batch() -> None:
    store = Store()
    store.gate.clear()
    batcher = ReleaseBatcher(store.send)
    first = asyncio.create_task(batcher.release("a"))
    await store.sending.wait()  # batch 1 is on its way
    batcher.release_soon("b")  # returns at once: nothing to await
    batcher.release_soon("c")
    waited = asyncio.create_task(batcher.release("d"))
    assert store.sends == [["a"]]
    store.gate.set()
    await asyncio.gather(first, waited)
    assert store.sends == [["a"], ["b", "c", "d"]]
    assert store.freed == {"a", "b", "c", "d"}
    await batcher.aclose()


async def test_a_failed_batch_of_unawaited_releases_is_logged_since_nobody_else_hears_it() -> None:
    store = Store(error=ConnectionError("redis is down"))
    batcher = ReleaseBatcher(store.send)
    with capture_logs() as logs:
        batcher.release_soon("a")
        batcher.release_soon("b")
        await batcher.aclose()
    failures = [entry for entry in logs if entry["event"] == "group_commit_failed"]
    assert failures == [
        {
            "event": "group_commit_failed", "name": "ratelimit-release", "unheard": 2,
            "error_type": "ConnectionError", "log_level": "warning",
        }
    ]  # fmt: skip
    assert store.sends == [["a", "b"]]


async def test_a_batch_with_only_awaited_callers_logs_nothing_itself() -> None:
    store = Store(error=ConnectionError("redis is down"))
    batcher = ReleaseBatcher(store.send)
    with capture_logs() as logs, pytest.raises(ConnectionError):
        await batcher.release("a")
    assert not [entry for entry in logs if entry["event"] == "group_commit_failed"]  # the caller heard it


@pytest.mark.parametrize("backend", ["memory", "redis", "cluster"])
async def test_let_go_frees_the_slot_without_the_caller_waiting(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(max_concurrent=3)

    async def in_flight() -> int:
        return await limiter.in_flight() if isinstance(limiter, RedisLimiter) else int(limiter.stats()["leases"])

    held = await asyncio.gather(*(limiter.acquire([]) for _ in range(3)))
    assert not (await limiter.acquire([])).allowed
    for decision in held:
        assert decision.lease is not None
        decision.lease.let_go()  # not a coroutine: the caller goes on at once
        decision.lease.let_go()  # idempotent: one token, one removal
        await decision.lease.release()  # and a release after it is a no-op
    assert limiter.keeper.held == set()  # no longer renewed
    for _ in range(100):
        if await in_flight() == 0:
            break
        await asyncio.sleep(0.01)
    assert await in_flight() == 0
    assert all(decision.allowed for decision in await asyncio.gather(*(limiter.acquire([]) for _ in range(3))))


def count_lone_releases(limiter: RedisLimiter, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The tokens of each release sent on its own (a ZREM), not riding on an admission call."""
    sent: list[list[str]] = []
    remove = limiter._remove_leases

    async def counting(tokens: list[str]) -> None:
        sent.append(list(tokens))
        await remove(tokens)

    monkeypatch.setattr(limiter, "_remove_leases", counting)
    limiter._releases = ReleaseBatcher(limiter._remove_leases)
    return sent


async def counting_limiter(
    make_limiter: MakeLimiter, monkeypatch: pytest.MonkeyPatch, max_concurrent: int
) -> tuple[RedisLimiter, list[list[str]]]:
    """A Redis limiter, and the releases it sends on their own (count_lone_releases)."""
    limiter = await make_limiter(max_concurrent=max_concurrent)
    assert isinstance(limiter, RedisLimiter)
    return limiter, count_lone_releases(limiter, monkeypatch)


async def sent_alone(lone: list[list[str]]) -> None:
    """Until a release has gone on its own (up to a second): nothing else is under way to wait for."""
    for _ in range(100):
        if lone:
            return
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_a_lease_let_go_rides_on_the_admission_call_collecting_and_frees_its_slot_for_it(
    make_limiter: MakeLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One Redis command for both: the script removes the given-back lease before it counts the cap."""
    limiter, lone = await counting_limiter(make_limiter, monkeypatch, max_concurrent=2)
    held = [await limiter.acquire([]) for _ in range(2)]
    waiting = asyncio.create_task(limiter.acquire([]))
    await asyncio.sleep(0)  # its batch is open, not sent yet
    assert limiter._admissions.collecting
    assert held[0].lease is not None
    held[0].lease.let_go()
    decision = await waiting
    assert decision.allowed  # the slot let go of counted for the batch that carried it
    assert lone == []
    assert await limiter.in_flight() == 2


@pytest.mark.parametrize("backend", ["redis"])
async def test_a_lease_let_go_between_admissions_rides_on_one_opened_in_the_same_turn_or_goes_alone(
    make_limiter: MakeLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter, lone = await counting_limiter(make_limiter, monkeypatch, max_concurrent=1)
    first = await limiter.acquire([])
    assert first.lease is not None
    assert not limiter._admissions.collecting
    first.lease.let_go()  # nothing collecting: waits for this turn of the loop
    again = await limiter.acquire([])  # opened in the same turn: it carries the release
    assert again.allowed
    assert lone == []
    assert again.lease is not None
    again.lease.let_go()  # no admission follows: it goes alone
    await sent_alone(lone)
    assert lone == [[again.lease.token]]
    assert await limiter.in_flight() == 0


@pytest.mark.parametrize("backend", ["redis"])
async def test_leases_carried_by_a_failed_admission_call_are_sent_again_on_their_own(
    make_limiter: MakeLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter, lone = await counting_limiter(make_limiter, monkeypatch, max_concurrent=5)
    held = await limiter.acquire([])
    assert held.lease is not None
    run = limiter._run_admission

    async def failing(keys: list[str], args: list[int | str]) -> bytes:
        monkeypatch.setattr(limiter, "_run_admission", run)
        raise ConnectionError("redis went away")

    monkeypatch.setattr(limiter, "_run_admission", failing)
    doomed = asyncio.create_task(limiter.acquire([]))
    await asyncio.sleep(0)
    held.lease.let_go()  # rides on the call that fails
    with pytest.raises(ConnectionError):
        await doomed
    await sent_alone(lone)
    assert lone == [[held.lease.token]]
    for _ in range(100):  # the failed caller's own lease is given back later (ORPHAN_RELEASE_DELAY_S)
        if await limiter.in_flight() == 0:
            break
        await asyncio.sleep(0.05)
    assert await limiter.in_flight() == 0
