"""The shared limiter: one Lua script checks the concurrency cap and every tier, and charges all or nothing.

Why one script: a check followed by a separate charge lets N replicas all see "4 of 5 used" and all admit (the
overshoot that hit LiteLLM across instances). Inside a script Redis runs nothing else, so admission is exact for
any number of replicas, and a refusal by any tier leaves every counter untouched. Time comes from Redis (``TIME``),
so replicas with skewed clocks still share one window.

Why a sliding-window log (a sorted set of admission times per key) rather than GCRA or counters: "5/minute" then
means at most 5 in *any* 60 s, which is what an operator reads into it. GCRA with a burst of 5 admits 5 at once and
then one every 12 s (9 within one minute); fixed windows admit 2x at a boundary; the two-window estimate is
approximate. The price is memory proportional to the limit per active key, small for limits like 5/min or 20/h.

Cluster: every key of one evaluation must live in one hash slot, and the tiers of a request name different
identities (an IP with a session, a session seen from several IPs), so all limiter keys share the hash tag in the
prefix (``hl:rl:{<tenant>:rl}:``). The limiter therefore uses one shard of a cluster. That is the price of exact,
all-or-nothing admission; one shard serves tens of thousands of evaluations a second, far above what an LLM front
end admits, and the cluster still gives failover. Tenants (``HELPLINE_TENANT``) have one tag each, so several
stores spread over shards.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster

from helpline.ratelimit.base import (
    CONCURRENCY,
    Decision,
    GroupCommit,
    Lease,
    LeaseKeeper,
    ReleaseBatcher,
    TierState,
)
from helpline.ratelimit.policies import Tier
from helpline.redisconn import AnyRedis, connect, pool_size, prewarm

DEFAULT_PREFIX = "hl:rl:{default:rl}:"
_HASH_TAG = re.compile(r"\{[^{}]+\}")

ACQUIRE_LUA = """
-- Admits a batch of requests, one after another, each all or nothing (see GroupCommit: concurrent requests share
-- one call). KEYS[1]: lease set (token -> expiry ms). KEYS[2..]: the sliding-window logs (token -> admitted at, ms)
-- the batch's requests use, each once. ARGV[1]: lease ttl ms. ARGV[2]: tokens of leases given back meanwhile,
-- separated by spaces (may be empty): removed first, so the slots they free count for this batch. ARGV[3]: the
-- requests, one after another, their fields separated by spaces: cap (0 = take no lease), token, tier count n, then
-- for each of its n tiers the index of its log in KEYS, its limit and its window ms.
-- Returns one string, numbers separated by spaces, per request {allowed, refused (0 none, -1 concurrency, i = i-th
-- tier), retry ms, in flight, count_i, reset ms_i...}, one request after another. (Three arguments and one reply
-- for a whole batch: the client's cost is per argument and per reply element, several times the script's.)
-- A token already logged was admitted by an earlier run of this same call (the client retried it after losing
-- the reply): it is answered as admitted again, without a second charge; otherwise a retry would count each
-- request against itself, refuse it, and leave its first lease to nobody.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[1])
local given_back = {}
for token in string.gmatch(ARGV[2], '%S+') do
  given_back[#given_back + 1] = token
  if #given_back == 500 then  -- well inside Lua's stack for unpack
    redis.call('ZREM', KEYS[1], unpack(given_back))
    given_back = {}
  end
end
if #given_back > 0 then redis.call('ZREM', KEYS[1], unpack(given_back)) end
local f = {}
for field in string.gmatch(ARGV[3], '%S+') do f[#f + 1] = field end
-- Each log is pruned and read once per call, then followed here as the batch charges it: {count, oldest entry}.
-- (A key names one tier of one identity, so it always comes with the same window.)
local logs = {}
local windows = {}  -- logs charged in this call: their expiry is set once, at the end
local function log_of(key, window)
  local log = logs[key]
  if log == nil then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local count = redis.call('ZCARD', key)
    local oldest = false
    if count > 0 then oldest = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]) end
    log = {count, oldest}
    logs[key] = log
  end
  return log
end
local held = false  -- leases in the set, once read
local leased = false
local p = 1
local out = {}
while p <= #f do
  local cap, token, n = tonumber(f[p]), f[p + 1], tonumber(f[p + 2])
  local tiers = p + 3  -- this request's n tiers: (key index, limit, window) from here
  p = tiers + 3 * n
  local allowed, refused, retry = 1, 0, 0
  local seen = false
  if cap > 0 then
    seen = redis.call('ZSCORE', KEYS[1], token) ~= false
  elseif n > 0 then
    seen = redis.call('ZSCORE', KEYS[tonumber(f[tiers])], token) ~= false
  end
  local states = {}
  for i = 0, n - 1 do
    local at = tiers + 3 * i
    local limit, window = tonumber(f[at + 1]), tonumber(f[at + 2])
    local log = log_of(KEYS[tonumber(f[at])], window)
    local count = log[1]
    local reset = 0
    if count > 0 then reset = log[2] + window - now end
    if seen then
      count = count - 1  -- as the first run reported it, before its own charge
    elseif count >= limit then
      allowed = 0
      if refused == 0 then refused = i + 1 end
      if reset > retry then retry = reset end
    end
    states[#states + 1] = count
    states[#states + 1] = reset
  end
  local in_flight = 0
  if cap > 0 then
    if held == false then
      redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
      held = redis.call('ZCARD', KEYS[1])
    end
    in_flight = held
    if seen then
      in_flight = in_flight - 1
    elseif in_flight >= cap then
      allowed = 0
      if refused == 0 then refused = -1 end
      if retry < 1000 then retry = 1000 end
    end
  end
  if allowed == 1 and not seen then
    for i = 0, n - 1 do
      local at = tiers + 3 * i
      local key = KEYS[tonumber(f[at])]
      if redis.call('ZADD', key, now, token) == 1 then  -- a key named twice by one request holds it once
        local log = logs[key]
        if log[1] == 0 then log[2] = now end
        log[1] = log[1] + 1
      end
      windows[key] = f[at + 2]
    end
    if cap > 0 then
      redis.call('ZADD', KEYS[1], now + ttl, token)
      held = held + 1
      leased = true
    end
  end
  if allowed == 1 and cap > 0 then in_flight = in_flight + 1 end
  out[#out + 1] = string.format('%d %d %d %d', allowed, refused, retry, in_flight)
  for i = 1, #states do out[#out + 1] = string.format('%d', states[i]) end
end
for key, window in pairs(windows) do redis.call('PEXPIRE', key, window) end
if leased and redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return table.concat(out, ' ')
"""

RENEW_LUA = """
-- KEYS[1]: lease set. ARGV[1]: ttl ms; ARGV[2..]: tokens still held. Only existing leases are extended (XX).
local clock = redis.call('TIME')
local ttl = tonumber(ARGV[1])
local expiry = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) + ttl
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[i])
end
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return renewed
"""

ORPHAN_RELEASE_DELAY_S = 1.0  # a lease a given-up call may have taken is removed this long after (see below)
RENEW_BATCH = 500  # tokens per renew call: keeps Lua's argument stack far from its limit
ADMISSION_BATCH = 128  # requests per admission call (one key per distinct tier key, one argument for them all)
ADMISSION_STALL_S = 0.02  # a batch goes beside the one before it once that one has taken this long (GroupCommit)


AdmissionBound = Callable[[Coroutine[Any, Any, bytes]], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class _Admission:
    token: str
    cap: int  # 0: take no lease
    tiers: tuple[Tier, ...]


class RedisLimiter:
    """Exact across replicas; raises redis errors to the caller (the fallback wrapper decides what to do)."""

    backend = "redis"

    def __init__(
        self,
        client: AnyRedis,
        max_concurrent: int,
        *,
        prefix: str = DEFAULT_PREFIX,
        lease_ttl_s: float = 30.0,
        max_in_flight: int = 64,
    ) -> None:
        if not _HASH_TAG.search(prefix):
            raise ValueError(f"prefix {prefix!r} needs a {{hash tag}} so all limiter keys share one cluster slot")
        self.client = client
        self._max_concurrent = max_concurrent
        self._prefix = prefix
        self.lease_key = prefix + "leases"
        self._lease_ttl_ms = round(lease_ttl_s * 1000)
        self._acquire_script = client.register_script(ACQUIRE_LUA)
        self._renew_script = client.register_script(RENEW_LUA)
        self.keeper = LeaseKeeper(self._renew, lease_ttl_s)
        self._releases = ReleaseBatcher(self._remove_leases)
        self._given_back: list[str] = []  # let go of while an admission call was collecting: it removes them
        self._loose: list[str] = []  # let go of while none was: handed over on the next turn of the loop
        self._hand_over_due = False
        self._admissions: GroupCommit[_Admission, list[int]] = GroupCommit(
            self._admit, stall_s=ADMISSION_STALL_S, max_items=ADMISSION_BATCH, name="ratelimit-admit"
        )
        self._orphans: set[asyncio.Task[None]] = set()
        self._calls: set[asyncio.Task[Any]] = set()  # admission calls under way, given up on or not
        # The cluster client fails at once (MaxConnectionsError) when its per-node pool is exhausted instead of
        # waiting; a burst of a thousand requests must queue briefly here instead of falling back.
        self._gate = asyncio.Semaphore(max_in_flight)
        self._ready = not isinstance(client, RedisCluster)
        self._ready_lock = asyncio.Lock()
        self._bound: AdmissionBound | None = None
        # Lease tokens: unique across replicas (a random prefix per limiter) without a getrandom call per request.
        self._token_prefix = secrets.token_hex(8)
        self._serials = itertools.count()

    def bound_admissions(self, bound: AdmissionBound) -> None:
        """Run each admission call (a batch: its connection, its script) under ``bound``, which may give up on it
        by raising (FallbackLimiter's deadline). One deadline per batch, not one per request: a request's own
        timer, task and shield cost more than its share of the script."""
        self._bound = bound

    def key(self, tier: Tier) -> str:
        return self._prefix + tier.key

    async def _ensure_ready(self) -> None:
        """Discover the cluster once, before any concurrent command: redis-py's lazy discovery, raced by a burst of
        first commands, closes connections under commands in flight (seen as ConnectionError/AttributeError)."""
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                await connect(self.client)
                self._ready = True

    async def acquire(self, tiers: Sequence[Tier], *, lease: bool = True) -> Decision:
        token = f"{self._token_prefix}{next(self._serials):x}"
        request = _Admission(token, self._max_concurrent if lease else 0, tuple(tiers))
        try:
            raw = await self._admissions.submit(request)
        except BaseException:
            if lease:
                self._give_back_later(token)
            raise
        return self._decision(raw, tiers, token, lease=lease)

    async def _admit(self, requests: list[_Admission]) -> list[list[int]]:
        """One script call for the requests of a batch, and for the leases given back since the last one; each
        request's answer, in order."""
        keys = [self.lease_key]
        positions: dict[str, int] = {}  # a key shared by requests of the batch (one shopper's IP) is sent once
        fields: list[str] = []
        for request in requests:
            fields.append(f"{request.cap} {request.token} {len(request.tiers)}")
            for tier in request.tiers:
                key = self.key(tier)
                position = positions.get(key)
                if position is None:
                    keys.append(key)
                    position = positions[key] = len(keys)  # Lua's KEYS count from 1
                fields.append(f"{position} {tier.rate.limit} {tier.rate.window_ms}")
        given_back, self._given_back = self._given_back, []
        work = self._run_admission(keys, [self._lease_ttl_ms, " ".join(given_back), " ".join(fields)])
        try:
            reply = await (self._bound(work) if self._bound else work)
        except BaseException:
            for token in given_back:  # on their own (a no-op for those the call removed if it did run)
                self._releases.release_soon(token)
            raise
        raw = [int(value) for value in reply.split()]
        answers: list[list[int]] = []
        at = 0
        for request in requests:
            size = 4 + 2 * len(request.tiers)
            answers.append(raw[at : at + size])
            at += size
        if at != len(raw):
            raise RuntimeError(f"the admission script answered {len(raw)} values, expected {at}")
        return answers

    async def _run_admission(self, keys: list[str], args: list[int | str]) -> bytes:
        task = asyncio.current_task()
        if task is not None:
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        await self._ensure_ready()
        async with self._gate:
            reply: bytes = await self._acquire_script(keys=keys, args=args)
        return reply

    def _give_back_later(self, token: str) -> None:
        """A call given up on (timed out, cancelled, failed) may still have run in Redis, slow rather than silent,
        and taken a lease under the global cap that nobody holds: it counted against every replica until its TTL
        (30 s), so once a burst had been given up on, the cap refused everyone after Redis recovered. Its token is
        removed a moment later (after the script it may race on another connection; a no-op if it never ran)."""

        async def give_back() -> None:
            await asyncio.sleep(ORPHAN_RELEASE_DELAY_S)
            # Its admission may share a batch still waiting for a connection: removing the token before that
            # batch's script runs would leave the lease it then takes to the TTL.
            await self._admissions.settled()
            # ... and after a call its caller gave up on (FallbackLimiter lets it run on to its read timeout).
            calls = list(self._calls)
            if calls:
                await asyncio.wait(calls)
            # Never raises: a failure is logged, the TTL reclaims it.
            await Lease(token, self._release, self._let_go).release()

        task = asyncio.get_running_loop().create_task(give_back(), name="ratelimit-orphan-lease")
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    def _decision(self, raw: list[int], tiers: Sequence[Tier], token: str, *, lease: bool) -> Decision:
        allowed, refused, retry_ms, in_flight = raw[:4]
        states = tuple(
            _state(tier, count=raw[4 + 2 * index], reset_ms=raw[5 + 2 * index], charged=bool(allowed))
            for index, tier in enumerate(tiers)
        )
        refused_by = None if refused == 0 else CONCURRENCY if refused < 0 else tiers[refused - 1].name
        held = None
        if allowed and lease:
            self.keeper.hold(token)
            held = Lease(token, self._release, self._let_go)
        return Decision(bool(allowed), states, refused_by, retry_ms / 1000, held, self.backend, in_flight)

    async def _release(self, token: str) -> None:
        self.keeper.drop(token)
        await self._releases.release(token)

    def _let_go(self, token: str) -> None:
        """Rides on the next admission call if one is collecting requests now or by the next turn of the event
        loop (a busy server: one Redis command for both, where each costs the client ~0.15 ms of CPU); else goes on
        its own then."""
        self.keeper.drop(token)
        if self._admissions.collecting:
            self._given_back.append(token)
            return
        self._loose.append(token)
        if not self._hand_over_due:
            asyncio.get_running_loop().call_soon(self._hand_over)
            self._hand_over_due = True  # only once it is: a failed call_soon leaves the next let-go to schedule it

    def _hand_over(self) -> None:
        self._hand_over_due = False
        loose, self._loose = self._loose, []
        if self._admissions.collecting:
            self._given_back += loose
        else:
            for token in loose:
                self._releases.release_soon(token)

    async def _remove_leases(self, tokens: list[str]) -> None:
        async with self._gate:
            await self.client.zrem(self.lease_key, *tokens)

    async def _renew(self, tokens: list[str]) -> None:
        for start in range(0, len(tokens), RENEW_BATCH):
            batch = tokens[start : start + RENEW_BATCH]
            async with self._gate:
                await self._renew_script(keys=[self.lease_key], args=[self._lease_ttl_ms, *batch])

    async def in_flight(self) -> int:
        return int(await self.client.zcard(self.lease_key))

    async def warm_up(self) -> None:
        """At start, not inside the first burst of requests: discover the cluster, open a connection, load the
        scripts. Under load those round trips could otherwise outlast the fallback's budget and make a healthy
        Redis look down."""
        await connect(self.client)
        self._ready = True
        await self.client.script_load(ACQUIRE_LUA)
        await self.client.script_load(RENEW_LUA)
        await prewarm(self.client, pool_size(self.client), self._prefix)  # a burst then opens none

    async def aclose(self) -> None:
        await self._admissions.aclose()  # first: a caller given up on meanwhile leaves an orphan to cancel below
        self._hand_over()
        given_back, self._given_back = self._given_back, []
        for token in given_back:  # left by a batch cancelled before it was sent: on their own, before closing
            self._releases.release_soon(token)
        for call in self._calls:
            call.cancel()  # calls given up on, still waiting for a slow Redis: their leases expire by TTL
        for task in self._orphans:
            task.cancel()  # shutting down: the lease TTL reclaims what they would have given back
        await self.keeper.stop()
        await self._releases.aclose()
        await self.client.aclose()

    def stats(self) -> dict[str, int | str | bool]:
        return {"backend": self.backend, "leases_held_here": len(self.keeper.held)}


def _state(tier: Tier, *, count: int, reset_ms: int, charged: bool) -> TierState:
    if charged:
        reset_ms = reset_ms if count else tier.rate.window_ms
        count += 1
    return TierState(tier.name, tier.rate.limit, max(0, tier.rate.limit - count), reset_ms / 1000)
