"""The limiter contract, run on memory, single-node Redis and a Redis Cluster: same semantics everywhere."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.crc import key_slot

from helpline.ratelimit import redis as redis_limiter
from helpline.ratelimit.base import CONCURRENCY
from helpline.ratelimit.policies import Rate, Tier
from helpline.ratelimit.redis import RedisLimiter, _Admission
from helpline.redisconn import create_redis
from tests.ratelimit.conftest import REDIS_URL, MakeLimiter, delete_prefix, unique_prefix

PER_MINUTE_5 = Rate(5, 60)


def ip(address: str = "198.51.100.1", rate: Rate = PER_MINUTE_5) -> Tier:
    return Tier("ip", f"ip:{address}", rate)


def session(name: str, rate: Rate) -> Tier:
    return Tier("session", f"session:{name}", rate)


async def test_exactly_the_limit_is_admitted_under_concurrency(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    decisions = await asyncio.gather(*(limiter.acquire([ip()], lease=False) for _ in range(60)))
    assert sum(decision.allowed for decision in decisions) == 5
    refused = [decision for decision in decisions if not decision.allowed]
    assert all(decision.refused_by == "ip" for decision in refused)
    assert all(0 < decision.retry_after_s <= 60 for decision in refused)


async def test_headline_counts_down_and_reports_the_reset(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    remaining = []
    for _ in range(6):
        decision = await limiter.acquire([ip()], lease=False)
        assert decision.headline is not None
        assert decision.headline.limit == 5
        assert 0 < decision.headline.reset_s <= 60
        remaining.append(decision.headline.remaining)
    assert remaining == [4, 3, 2, 1, 0, 0]
    assert decision.retry_after_header in {59, 60}


async def test_nothing_is_charged_when_one_tier_refuses(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    busy_session = session("busy", Rate(1, 60))
    assert (await limiter.acquire([ip(), busy_session], lease=False)).allowed
    for _ in range(10):
        refused = await limiter.acquire([ip(), busy_session], lease=False)
        assert not refused.allowed
        assert refused.refused_by == "session"
    # The IP was charged once (the admitted request), not for the ten refusals: four more fit.
    admitted = [await limiter.acquire([ip(), session(f"other-{n}", Rate(5, 60))], lease=False) for n in range(5)]
    assert [decision.allowed for decision in admitted] == [True, True, True, True, False]
    assert admitted[-1].refused_by == "ip"


async def test_a_refused_request_takes_no_lease(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(max_concurrent=3)
    tier = ip(rate=Rate(1, 60))
    first = await limiter.acquire([tier])
    second = await limiter.acquire([tier])
    assert first.allowed
    assert first.lease is not None
    assert not second.allowed
    assert second.lease is None
    assert first.in_flight == 1
    other = await limiter.acquire([ip("198.51.100.2")])
    assert other.in_flight == 2  # the refused request did not hold a slot


async def test_a_full_cap_charges_no_tier(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(max_concurrent=1)
    held = await limiter.acquire([ip("198.51.100.9")])
    assert held.allowed
    for _ in range(3):
        refused = await limiter.acquire([ip()])
        assert not refused.allowed
        assert refused.refused_by == CONCURRENCY
        assert refused.retry_after_header >= 1
    assert held.lease is not None
    await held.lease.release()
    admitted = [await limiter.acquire([ip()], lease=False) for _ in range(6)]
    assert sum(decision.allowed for decision in admitted) == 5  # the three refusals cost the IP nothing


async def test_the_1001st_concurrent_request_is_refused_while_1000_are_held(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(max_concurrent=1000)
    held = await asyncio.gather(*(limiter.acquire([]) for _ in range(1000)))
    assert all(decision.allowed for decision in held)
    refused = await limiter.acquire([])
    assert not refused.allowed
    assert refused.refused_by == CONCURRENCY
    assert refused.in_flight == 1000
    first = held[0].lease
    assert first is not None
    await first.release()
    await first.release()  # idempotent: a second release does not free a second slot
    assert (await limiter.acquire([])).allowed
    assert not (await limiter.acquire([])).allowed
    for decision in held[1:]:
        assert decision.lease is not None
        await decision.lease.release()


async def test_the_window_slides(make_limiter: MakeLimiter) -> None:
    """One slot comes back when the oldest admission leaves the window, not the whole quota."""
    limiter = await make_limiter()
    tier = ip(rate=Rate(2, 2))
    assert (await limiter.acquire([tier], lease=False)).allowed
    await asyncio.sleep(1.0)
    assert (await limiter.acquire([tier], lease=False)).allowed
    blocked = await limiter.acquire([tier], lease=False)
    assert not blocked.allowed
    assert 0 < blocked.retry_after_s <= 1.05  # until the first admission is 2 s old
    await asyncio.sleep(blocked.retry_after_s + 0.1)
    assert (await limiter.acquire([tier], lease=False)).allowed
    assert not (await limiter.acquire([tier], lease=False)).allowed  # the second admission is still counted


async def test_the_whole_quota_is_back_after_a_quiet_window(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    tier = ip(rate=Rate(2, 1))
    assert [(await limiter.acquire([tier], lease=False)).allowed for _ in range(3)] == [True, True, False]
    await asyncio.sleep(1.1)
    assert [(await limiter.acquire([tier], lease=False)).allowed for _ in range(3)] == [True, True, False]


async def test_an_unrenewed_lease_expires(make_limiter: MakeLimiter) -> None:
    """A crashed worker: it holds the only slot, then stops renewing without releasing; the slot comes back."""
    crashed = await make_limiter(max_concurrent=1, lease_ttl_s=0.6)
    held = await crashed.acquire([])
    assert held.allowed
    await crashed.keeper.stop()
    assert not (await crashed.acquire([])).allowed
    await asyncio.sleep(0.75)
    assert (await crashed.acquire([])).allowed


async def test_held_leases_are_renewed_past_their_ttl(make_limiter: MakeLimiter) -> None:
    """A long stream keeps its slot: the keeper renews every ttl/3."""
    limiter = await make_limiter(max_concurrent=1, lease_ttl_s=0.9)
    held = await limiter.acquire([])
    assert held.allowed
    await asyncio.sleep(2.0)  # more than twice the TTL; renewals every 0.3 s keep it
    assert not (await limiter.acquire([])).allowed
    assert held.lease is not None
    await held.lease.release()
    assert (await limiter.acquire([])).allowed


@pytest.mark.parametrize("backend", ["redis", "cluster"])  # slots are a Redis matter
async def test_redis_keys_of_one_evaluation_share_a_slot(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    assert isinstance(limiter, RedisLimiter)
    tiers = [ip("2001:db8:1:2::/64"), Tier("user", "user:7", PER_MINUTE_5), session("{abc}", PER_MINUTE_5)]
    assert (await limiter.acquire(tiers)).allowed  # on the cluster, a CROSSSLOT error would raise here
    keys = [limiter.lease_key, *map(limiter.key, tiers)]
    assert len({key_slot(key.encode()) for key in keys}) == 1


async def test_one_batch_counts_down_as_it_charges(make_limiter: MakeLimiter) -> None:
    """Requests decided together (one script call on Redis, which reads each log once and follows it as it
    charges) see what they would see one after another."""
    limiter = await make_limiter(max_concurrent=6)
    await limiter.acquire([], lease=False)  # connected (a cluster is discovered) before the burst
    decisions = await asyncio.gather(*(limiter.acquire([ip()]) for _ in range(7)))
    assert [decision.allowed for decision in decisions] == [True] * 5 + [False] * 2
    assert [decision.headline.remaining for decision in decisions if decision.headline] == [4, 3, 2, 1, 0, 0, 0]
    assert all(0 < decision.headline.reset_s <= 60 for decision in decisions if decision.headline)
    assert [decision.in_flight for decision in decisions[:5]] == [1, 2, 3, 4, 5]
    assert [decision.refused_by for decision in decisions[5:]] == ["ip", "ip"]
    assert all(0 < decision.retry_after_s <= 60 for decision in decisions[5:])
    again = await limiter.acquire([ip("198.51.100.2")])  # the next call reads the lease set afresh
    assert again.allowed
    assert again.in_flight == 6


async def test_requests_decided_in_one_batch_are_each_all_or_nothing_in_arrival_order(
    make_limiter: MakeLimiter,
) -> None:
    limiter = await make_limiter()
    await limiter.acquire([], lease=False)  # connected (a cluster is discovered) before the burst
    tight = session("tight", Rate(1, 60))
    calls = [limiter.acquire([ip(), tight], lease=False) for _ in range(2)]
    calls += [limiter.acquire([ip(), session(f"other-{n}", PER_MINUTE_5)], lease=False) for n in range(5)]
    decisions = await asyncio.gather(*calls)
    assert [decision.allowed for decision in decisions] == [True, False, True, True, True, True, False]
    assert [decision.refused_by for decision in decisions] == [None, "session", None, None, None, None, "ip"]
    # The refusal by the session tier charged the IP nothing: 1 + 4 admitted of its 5.
    assert [state.remaining for state in decisions[5].tiers] == [0, 4]


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_a_burst_of_admissions_costs_one_script_call(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    assert isinstance(limiter, RedisLimiter)
    await limiter.acquire([], lease=False)
    script = limiter._acquire_script
    calls = 0

    async def counted(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await script(**kwargs)

    limiter._acquire_script = counted  # type: ignore[assignment]
    leased = [limiter.acquire([ip()]) for _ in range(60)]
    bare = [limiter.acquire([], lease=False) for _ in range(10)]  # no tier, no lease
    other = [limiter.acquire([ip("198.51.100.7"), session("x", Rate(3, 60))], lease=False) for _ in range(10)]
    decisions = await asyncio.gather(*leased, *bare, *other)
    assert calls == 1
    assert sum(decision.allowed for decision in decisions[:60]) == 5
    assert all(decision.allowed for decision in decisions[60:70])
    assert [decision.allowed for decision in decisions[70:]] == [True] * 3 + [False] * 7
    assert {decision.refused_by for decision in decisions[73:]} == {"session"}
    assert await limiter.in_flight() == 5  # leases only for the admitted requests that asked for one


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_a_key_named_twice_by_one_request_counts_once_for_the_rest_of_its_batch(
    make_limiter: MakeLimiter,
) -> None:
    """The script follows each log's count through a batch; a request naming one key in two tiers adds one entry
    (its token), so the requests after it must see one, as they would one after another."""
    limiter = await make_limiter()
    assert isinstance(limiter, RedisLimiter)
    rate = Rate(3, 60)
    twice = (Tier("ip", "ip:203.0.113.9", rate), Tier("session", "ip:203.0.113.9", rate))
    batch = [_Admission("tok-a", 0, twice), *(_Admission(f"tok-{n}", 0, twice[:1]) for n in "bc")]
    answers = await limiter._admit(batch)
    assert [answer[0] for answer in answers] == [1, 1, 1]  # allowed: 3 entries for a limit of 3
    assert [answer[4] for answer in answers] == [0, 1, 2]  # the count each one found before its charge
    assert await limiter.client.zcard(limiter.key(twice[0])) == 3


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_a_retried_admission_call_is_answered_as_the_first_run_was(make_limiter: MakeLimiter) -> None:
    """redis-py retries a script call whose reply it lost; the script may have run. The second run must not count
    each request against itself: it would be refused, charged, and its lease left to nobody."""
    limiter = await make_limiter(max_concurrent=10)
    assert isinstance(limiter, RedisLimiter)
    tight = ip(rate=Rate(1, 60))
    batch = [
        _Admission("tok-lease", 10, (tight,)),
        _Admission("tok-nolease", 0, (session("s", Rate(1, 60)),)),
        _Admission("tok-bare", 10, ()),
    ]
    first = await limiter._admit(batch)
    again = await limiter._admit(batch)
    assert [answer[0] for answer in first] == [1, 1, 1]  # allowed
    assert [answer[0] for answer in again] == [1, 1, 1]  # still: not refused by its own first charge
    assert [answer[4:5] for answer in again] == [answer[4:5] for answer in first]  # the tier counted as before
    assert await limiter.in_flight() == 2  # one lease each for the two that asked, taken once
    assert await limiter.client.zcard(limiter.key(tight)) == 1
    other = await limiter.acquire([tight])
    assert not other.allowed  # a new token still meets the limit the first run used up


@pytest.mark.parametrize("backend", ["redis"])
async def test_the_lease_of_a_caller_given_up_on_is_given_back_after_its_batch_ran(
    make_limiter: MakeLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller gives up while its batch still waits to be sent: the batch is sent anyway (the others in it need
    their answers) and takes the lease. The give-back must come after that, not race ahead of it."""
    limiter = await make_limiter(max_concurrent=10)
    assert isinstance(limiter, RedisLimiter)
    await limiter.acquire([], lease=False)
    monkeypatch.setattr(redis_limiter, "ORPHAN_RELEASE_DELAY_S", 0.1)
    script = limiter._acquire_script

    async def late(**kwargs: Any) -> Any:
        await asyncio.sleep(0.6)  # e.g. waiting for a free connection
        return await script(**kwargs)

    limiter._acquire_script = late  # type: ignore[assignment]
    caller = asyncio.create_task(limiter.acquire([]))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(1.2)  # the batch ran at ~0.6 s; a give-back racing ahead would have run at ~0.15 s
    assert await limiter.in_flight() == 0


async def test_two_replicas_leases_never_share_a_token() -> None:
    """Lease tokens come from a per-limiter random prefix and a counter (no getrandom call per request): two
    replicas on one Redis, each counting from zero, must still hold distinct leases, or one's release would free
    the other's slot and the cap would admit more than it should."""
    prefix = unique_prefix()
    replicas = [RedisLimiter(create_redis(REDIS_URL), 1000, prefix=prefix) for _ in range(2)]
    try:
        held = await asyncio.gather(*(replica.acquire([]) for replica in replicas for _ in range(50)))
        assert all(decision.allowed for decision in held)
        assert await replicas[0].in_flight() == 100
        tokens = {decision.lease.token for decision in held if decision.lease is not None}
        assert len(tokens) == 100
        assert not any(" " in token for token in tokens)
        for decision in held[:50]:  # the first replica's
            assert decision.lease is not None
            await decision.lease.release()
        assert await replicas[1].in_flight() == 50
    finally:
        await delete_prefix(replicas[0].client, prefix)
        for replica in replicas:
            await replica.aclose()
