"""The Redis backend (redis-py asyncio), single node or Cluster.

Every key of a tenant carries the tenant's hash tag, so a put (entry + tags + semantic index, refused if the
invalidation generation moved or a document it drew on is now at another version) and an invalidation are each one
Lua script, atomic for every replica. Hash fields
cannot expire on Redis 7.0, so the semantic index may name an expired entry: the cache forgets it when it finds it
gone.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from helpline.cache.backend import ANYWAY, RELAY_READ_COUNT, Forget, IndexedQuestion, RelayPoll
from helpline.cache.keys import KeySpace
from helpline.redisconn import pool_size

# KEYS: n tag hashes (entry key -> the tag's version it drew on), then their n current-version marks, then the
# knowledge mark. ARGV: the prefix, the marks' TTL in seconds, the knowledge revision the invalidating replica's copy
# was read at ('' = none: the mark stays), then per tag the version to keep ('' = remove every entry).
# A version is '<revision>:<hash>' ('<revision>:-': deleted after it), ordered as knowledge/versions.py orders
# them: the newer of the one given and the tag's mark is kept, so an invalidation arriving late from a replica's
# older copy of a document sets the mark nothing back (its answers stay refused, the newer version's stay) — unless
# the mark's revision is at or below the one the caller's copy was read at: such a copy holds every document as of
# that revision, so a newer mark there comes from knowledge that went back (a restored database).
INVALIDATE = """
local function revision(version)
  return tonumber(string.match(version, '^(%d+):') or '-1')
end
local function order(version)
  local number = revision(version)
  if number < 0 then return -2 end
  return 2 * number + (string.sub(version, -2) == ':-' and 1 or 0)
end
redis.call('INCR', ARGV[1] .. ':ic')  -- invalidations counted: a reset that one overlapped runs again
local declared = tonumber(ARGV[3])
local n = (#KEYS - 1) / 2
local removed = {}
local whole = false
for i = 1, n do
  local keep = ARGV[3 + i]
  if keep == '' then
    whole = true
  else
    local mark = redis.call('GET', KEYS[n + i])
    if mark and order(mark) > order(keep) and not (declared and revision(mark) <= declared) then keep = mark end
  end
  local fields = redis.call('HGETALL', KEYS[i])
  for j = 1, #fields, 2 do
    local key = fields[j]
    if keep == '' or fields[j + 1] ~= keep then
      if redis.call('DEL', key) == 1 then table.insert(removed, key) end
      for _, tag in ipairs(redis.call('SMEMBERS', key .. ':tg')) do redis.call('HDEL', tag, key) end
      redis.call('DEL', key .. ':tg')
      local scope = string.match(key, ':e:([^:]+):[^:]+$')
      if scope then
        if redis.call('HDEL', ARGV[1] .. ':s:' .. scope, key) == 1 then
          redis.call('INCR', ARGV[1] .. ':sv:' .. scope)
        end
      end
      redis.call('ZREM', ARGV[1] .. ':pop', key)
      if keep ~= '' then redis.call('HDEL', KEYS[i], key) end
    end
  end
  if keep == '' then redis.call('DEL', KEYS[i]) else redis.call('SET', KEYS[n + i], keep, 'EX', ARGV[2]) end
end
if whole then redis.call('INCR', ARGV[1] .. ':gen') end
-- The newest knowledge revision declared: a write drawn from an older copy is refused (it may lack a document
-- added since, which no tag of its answer names).
if ARGV[3] ~= '' and tonumber(ARGV[3]) >= tonumber(redis.call('GET', KEYS[#KEYS]) or '-1') then
  redis.call('SET', KEYS[#KEYS], ARGV[3], 'EX', ARGV[2])
end
return removed
"""
TAG_SAMPLE = 4  # members of each tag hash a write checks for expired entries
# KEYS: entry, semantic index, index version, invalidation generation, the tenant's scope set, the knowledge mark,
# n tag hashes, their n current-version marks. ARGV: value, TTL in seconds, packed index field, the generation the
# answer was computed under ('' = unchecked), the scope id, until when its index lives and now (Unix seconds), the
# knowledge revision of the copy it was drawn from ('' = unchecked), then per tag the version of it the answer drew
# on ('' = unversioned).
PUT = """
if ARGV[4] ~= '' and (redis.call('GET', KEYS[4]) or '0') ~= ARGV[4] then return 0 end
if ARGV[8] ~= '' and tonumber(redis.call('GET', KEYS[6]) or '-1') > tonumber(ARGV[8]) then return 0 end
local n = (#KEYS - 6) / 2
for i = 1, n do
  local version = ARGV[8 + i]
  if version ~= '' then
    local current = redis.call('GET', KEYS[6 + n + i])
    if current and current ~= version then return 0 end
  end
end
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
redis.call('HSET', KEYS[2], KEYS[1], ARGV[3])
redis.call('INCR', KEYS[3])
-- The index outlives no entry by long: it expires with the newest entry (fields cannot expire on 7.0). Never
-- sooner than it did: a write with a shorter TTL (replicas mid-way through a change of CACHE_TTL_S) would leave
-- longer-lived entries outside the index and their tags (review, session 26), which no invalidation then reaches.
if redis.call('TTL', KEYS[2]) < ttl * 2 then redis.call('EXPIRE', KEYS[2], ttl * 2) end
if redis.call('TTL', KEYS[3]) < ttl * 2 then redis.call('EXPIRE', KEYS[3], ttl * 2) end
-- The scopes of the tenant, each until its index expires: what an invalidation by retrieval walks, without a SCAN
-- of a shared Redis's whole keyspace. Scopes whose index expired leave it here (a busy tenant's set never expires,
-- and every follow-up context and personal owner is a scope of its own).
redis.call('ZADD', KEYS[5], 'GT', ARGV[6], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ARGV[7])
if redis.call('TTL', KEYS[5]) < ttl * 2 then redis.call('EXPIRE', KEYS[5], ttl * 2) end
-- The entry leaves the tags its previous answer drew on and this one does not (else a change to a document the
-- answer no longer cites would remove it): each entry lists its tag hashes beside it, and expires with it.
local listed = KEYS[1] .. ':tg'
local carries = {}
for i = 1, n do carries[KEYS[6 + i]] = true end
for _, tag in ipairs(redis.call('SMEMBERS', listed)) do
  if not carries[tag] then redis.call('HDEL', tag, KEYS[1]) end
end
redis.call('DEL', listed)
if n > 0 then
  redis.call('SADD', listed, unpack(KEYS, 7, 6 + n))
  redis.call('EXPIRE', listed, ttl)
end
for i = 1, n do
  local tag = KEYS[6 + i]
  redis.call('HSET', tag, KEYS[1], ARGV[8 + i])
  if redis.call('TTL', tag) < ttl * 2 then redis.call('EXPIRE', tag, ttl * 2) end
  -- A busy tag's hash never expires and keeps the keys of expired entries, which makes its invalidation (one
  -- script, blocking Redis while it runs) ever longer: each write checks a few random members and drops the gone.
  for _, member in ipairs(redis.call('HRANDFIELD', tag, TAG_SAMPLE)) do
    if redis.call('EXISTS', member) == 0 then redis.call('HDEL', tag, member) end
  end
end
return 1
""".replace("TAG_SAMPLE", str(TAG_SAMPLE))
# Scopes found without an index leave the set, each only if its index is still absent now (a write since the
# check recreated it: the scope stays). KEYS: the scope set; ARGV: the key prefix, then the scope ids.
DROP_SCOPES = """
local dropped = 0
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ':s:' .. ARGV[i]) == 0 then
    dropped = dropped + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return dropped
"""
SCOPE_BATCH = 1000  # scopes checked per round trip when listing (and keys unlinked per call by a reset)
RESET_PASSES = 3  # scans of a reset while invalidations keep landing during it
# Index fields whose entry expired, removed only if unchanged since they were read (a replica may have just
# rewritten one with a new expiry). KEYS: the index; ARGV: field, value seen, field, value seen, ...
PRUNE = """
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return removed
"""
# Remove an entry and its index field. KEYS: entry, its scope's index, the index version, the popularity set. ARGV:
# 'anyway', or only if the entry is still as found: 'absent', or 'value' and those bytes (the entry may be gone).
FORGET = """
if ARGV[1] == 'absent' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[1] == 'value' then
  local now = redis.call('GET', KEYS[1])
  if now and now ~= ARGV[2] then return 0 end
end
redis.call('DEL', KEYS[1])
for _, tag in ipairs(redis.call('SMEMBERS', KEYS[1] .. ':tg')) do redis.call('HDEL', tag, KEYS[1]) end
redis.call('DEL', KEYS[1] .. ':tg')
if redis.call('HDEL', KEYS[2], KEYS[1]) == 1 then redis.call('INCR', KEYS[3]) end
redis.call('ZREM', KEYS[4], KEYS[1])
return 1
"""
# A relay stream's entries, added only while somebody reads it (cache.relay). KEYS: the stream, its readers mark.
# ARGV: the stream's TTL in milliseconds, then kind, payload, kind, payload, ...
RELAY_APPEND = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
for i = 2, #ARGV, 2 do redis.call('XADD', KEYS[1], '*', ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
# Compare and delete: a holder whose lock expired (and was taken by another) must not remove the new holder's.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Renew a lock, only for the holder that took it (and still holds it).
EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
VECTOR_SEPARATOR = b"\x00\x1f\x00"
VECTOR_BYTES = 384 * 4
POPULAR_KEPT = 10_000  # the popularity set keeps this many best-counted entries (it only ranks re-warming)


P = ParamSpec("P")
R = TypeVar("R")


def _gated(
    method: Callable[Concatenate[RedisBackend, P], Awaitable[R]],
) -> Callable[Concatenate[RedisBackend, P], Coroutine[Any, Any, R]]:
    @functools.wraps(method)
    async def gated(self: RedisBackend, /, *args: P.args, **kwargs: P.kwargs) -> R:
        async with self._gate:
            return await method(self, *args, **kwargs)

    return gated


class RedisBackend:
    """Each call waits for one of the pool's connections here: redis-py's cluster client fails at once
    (MaxConnectionsError) when a node's pool is exhausted, which a burst of hits would otherwise turn into a cache
    outage (and a bypass: every request to the providers) exactly under load. The cache's own timeout still bounds
    the wait."""

    kind = "redis"
    shared = True

    def __init__(self, client: Any, prefix: str, max_in_flight: int | None = None) -> None:
        self._redis = client
        self._prefix = prefix
        self._scopes = f"{prefix}:scopes"
        self._knowledge = f"{prefix}:kr"  # the knowledge mark: the newest knowledge revision declared
        self._marks = (f"{prefix}:gen", f"{prefix}:ic", self._knowledge)  # see marks()
        self._gate = asyncio.Semaphore(max_in_flight or pool_size(client) or 64)
        self._invalidate = client.register_script(INVALIDATE)
        self._put = client.register_script(PUT)
        self._unlock = client.register_script(UNLOCK)
        self._forget = client.register_script(FORGET)
        self._extend = client.register_script(EXTEND)
        self._prune = client.register_script(PRUNE)
        self._drop_scopes = client.register_script(DROP_SCOPES)
        self._relay_append = client.register_script(RELAY_APPEND)

    @_gated
    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._redis.get(key)
        return value

    @_gated
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
        versions = versions or {}
        now = time.time()
        expires = f"{now + ttl_s:.3f}".encode()
        packed = VECTOR_SEPARATOR.join((question.encode("utf-8"), answer_key.encode(), expires, vector))
        keys = [key, f"{self._prefix}:s:{scope_id}", f"{self._prefix}:sv:{scope_id}", f"{self._prefix}:gen"]
        keys += (
            [self._scopes, self._knowledge] + [self._tag(tag) for tag in tags] + [self._current(tag) for tag in tags]
        )
        expected = "" if generation is None else str(generation)
        index_until, stamp = f"{now + 2 * ttl_s:.3f}", f"{now:.3f}"
        args = [value, ttl_s, packed, expected, scope_id, index_until, stamp, "" if revision is None else revision]
        args += [versions.get(tag, "") for tag in tags]
        return bool(await self._put(keys=keys, args=args))

    def _tag(self, tag: str) -> str:
        return f"{self._prefix}:t:{tag}"

    def _current(self, tag: str) -> str:
        return f"{self._prefix}:m:{tag}"

    @_gated
    async def generation(self) -> int:
        return int(await self._redis.get(f"{self._prefix}:gen") or 0)

    @_gated
    async def semantic_version(self, scope_id: str) -> int:
        value = await self._redis.get(f"{self._prefix}:sv:{scope_id}")
        return int(value or 0)

    @_gated
    async def semantic_entries(self, scope_id: str) -> list[IndexedQuestion]:
        """The scope's live index entries. Fields cannot expire on Redis 7.0 and the index's own expiry moves on
        with every write, so in a busy scope the fields of expired entries would pile up for ever (and each rebuild
        of a replica's copy reads them all): those found expired, or unreadable, are removed here."""
        index = f"{self._prefix}:s:{scope_id}"
        fields: dict[bytes, bytes] = await self._redis.hgetall(index)
        now = time.time()
        entries, dead = [], []
        for key, packed in fields.items():
            entry, expires = _unpack(key, packed)
            if entry is None or expires <= now:
                dead += [key, packed]
            else:
                entries.append(entry)
        if dead:
            await self._prune(keys=[index], args=dead)
        return entries

    @_gated
    async def scope_ids(self) -> list[str]:
        """The tenant's scope set (written with each entry), less the scopes whose index has expired or been
        emptied, which leave it here. Not a SCAN: on a Redis shared by many tenants that walked every key of
        all of them, on every replica, for each changed document.

        The checks are pipelined reads, a thousand at a time, not one script: a tenant with many follow-up
        contexts and personal owners would hold the shared Redis for all of them at once. Only the scopes found
        without an index are removed, each in one script that checks it again (a write in between keeps it)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(self._scopes, "-inf", f"{time.time():.3f}")
            pipe.zrange(self._scopes, 0, -1)
            _, members = await pipe.execute()
        scope_ids = sorted(member.decode() if isinstance(member, bytes) else str(member) for member in members)
        live: list[str] = []
        for start in range(0, len(scope_ids), SCOPE_BATCH):
            batch = scope_ids[start : start + SCOPE_BATCH]
            async with self._redis.pipeline(transaction=False) as pipe:
                for scope_id in batch:
                    pipe.exists(f"{self._prefix}:s:{scope_id}")
                present = await pipe.execute()
            live += [scope_id for scope_id, exists in zip(batch, present, strict=True) if exists]
            gone = [scope_id for scope_id, exists in zip(batch, present, strict=True) if not exists]
            if gone:
                await self._drop_scopes(keys=[self._scopes], args=[self._prefix, *gone])
        return live

    @_gated
    async def forget(self, key: str, *, unless: bytes | Forget | None = ANYWAY) -> None:
        scope_id = KeySpace.scope_of(key)
        keys = [key, f"{self._prefix}:s:{scope_id}", f"{self._prefix}:sv:{scope_id}", f"{self._prefix}:pop"]
        if unless is ANYWAY:
            await self._forget(keys=keys, args=["anyway", b""])
        else:
            await self._forget(keys=keys, args=["absent" if unless is None else "value", unless or b""])

    @_gated
    async def invalidate(
        self,
        tags: Sequence[str],
        current: Mapping[str, str] | None = None,
        mark_ttl_s: float = 0,
        revision: int | None = None,
    ) -> list[str]:
        if not tags:
            return []
        current = current or {}
        keys = [self._tag(tag) for tag in tags] + [self._current(tag) for tag in tags] + [self._knowledge]
        args = [self._prefix, max(1, round(mark_ttl_s)), "" if revision is None else revision]
        args += [current.get(tag, "") for tag in tags]
        removed = await self._invalidate(keys=keys, args=args)
        return [key.decode() if isinstance(key, bytes) else str(key) for key in removed]

    @_gated
    async def knowledge_mark(self) -> int | None:
        value = await self._redis.get(self._knowledge)
        return None if value is None else int(value)

    @_gated
    async def reset(self) -> int:
        """A SCAN of the keyspace for the tenant's keys (a rare event: the knowledge went back), unlinked in
        batches. Kept: the generation (moved on), the index versions (moved on: another replica's index copy must
        not match a counter started again) and the invalidation count; the knowledge mark goes last, so a reset cut
        short is seen again. An invalidation that landed meanwhile (a replica that read the knowledge before it
        went back) may have written marks behind the scan: the scan runs again (at most RESET_PASSES)."""
        kept = {f"{self._prefix}:{name}" for name in ("gen", "ic", "kr")}
        pattern = "".join("\\" + char if char in "*?[]\\" else char for char in self._prefix) + ":*"
        removed = 0
        for _ in range(RESET_PASSES):
            invalidations = await self._redis.get(f"{self._prefix}:ic")
            await self._redis.incr(f"{self._prefix}:gen")
            batch: list[Any] = []
            async for key in self._redis.scan_iter(match=pattern, count=SCOPE_BATCH):
                name = key.decode() if isinstance(key, bytes) else str(key)
                if name in kept:
                    continue
                if ":sv:" in name:
                    await self._redis.incr(key)
                    continue
                batch.append(key)
                if len(batch) >= SCOPE_BATCH:
                    removed += int(await self._redis.unlink(*batch))
                    batch = []
            if batch:
                removed += int(await self._redis.unlink(*batch))
            removed += int(await self._redis.unlink(self._knowledge))
            if await self._redis.get(f"{self._prefix}:ic") == invalidations:
                break
        return removed

    @_gated
    async def tag_members(self, tag: str, keep: str | None = None) -> list[str]:
        members: dict[bytes, bytes] = await self._redis.hgetall(self._tag(tag))
        return sorted(key.decode() for key, version in members.items() if keep is None or version.decode() != keep)

    @_gated
    async def bump_popularity(self, counts: Mapping[str, int]) -> None:
        """Many keys' hits in one round trip (one sorted set, so one slot on a cluster)."""
        if not counts:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key, hits in counts.items():
            pipe.zincrby(f"{self._prefix}:pop", hits, key)
        # Entries that expired keep their counts here; bounded to the best counted (the rest never get re-warmed).
        pipe.zremrangebyrank(f"{self._prefix}:pop", 0, -(POPULAR_KEPT + 1))
        await pipe.execute()

    @_gated
    async def popularity(self, keys: Sequence[str]) -> dict[str, int]:
        if not keys:
            return {}
        scores = await self._redis.zmscore(f"{self._prefix}:pop", list(keys))
        return {key: int(score or 0) for key, score in zip(keys, scores, strict=True)}

    @_gated
    async def lock(self, key: str, ttl_s: float, token: str) -> bool:
        return bool(await self._redis.set(key, token.encode(), nx=True, px=max(1, int(ttl_s * 1000))))

    @_gated
    async def unlock(self, key: str, token: str) -> None:
        await self._unlock(keys=[key], args=[token])

    @_gated
    async def extend(self, key: str, ttl_s: float, token: str) -> bool:
        return bool(await self._extend(keys=[key], args=[token, max(1, int(ttl_s * 1000))]))

    @_gated
    async def peek(self, key: str, lock: str) -> tuple[bytes | None, bytes | None]:
        value, holder = await self._redis.mget([key, lock])  # one slot on a cluster: both carry the tenant's tag
        return value, holder

    @_gated
    async def marks(self) -> tuple[int, int, int]:
        return _marks(*await self._redis.mget(list(self._marks)))

    @_gated
    async def relay_append(self, key: str, entries: Sequence[tuple[bytes, bytes]], ttl_s: float) -> bool:
        """Untrimmed (a follower that joins late reads the reply from its start), bounded by the reply's length and
        the TTL."""
        args: list[bytes | int] = [max(1, int(ttl_s * 1000))]
        for kind, payload in entries:
            args += [kind, payload]
        return bool(await self._relay_append(keys=[key, f"{key}:r"], args=args))

    @_gated
    async def relay_poll(self, key: str, lock: str, stream: str | None, after: bytes, reader_ttl_s: float) -> RelayPoll:
        # One node on a cluster (every key carries the tenant's tag), whose pipelines take no MGET.
        pipe = self._redis.pipeline(transaction=False)
        for name in (key, lock, *self._marks):
            pipe.get(name)
        if stream is not None:
            pipe.xrange(stream, min=b"(" + after, max=b"+", count=RELAY_READ_COUNT)
            pipe.set(f"{stream}:r", b"1", px=max(1, int(reader_ttl_s * 1000)))
        found = await pipe.execute()
        entries = _entries(found[5]) if stream is not None else []
        return RelayPoll(found[0], found[1], _marks(*found[2:5]), entries)

    @_gated
    async def relay_read(self, key: str, after: bytes) -> list[tuple[bytes, bytes, bytes]]:
        return _entries(await self._redis.xrange(key, min=b"(" + after, max=b"+", count=RELAY_READ_COUNT))

    @_gated
    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()


def _marks(generation: bytes | None, invalidations: bytes | None, knowledge: bytes | None) -> tuple[int, int, int]:
    return int(generation or 0), int(invalidations or 0), int(knowledge or -1)


def _entries(found: list[tuple[bytes, dict[bytes, bytes]]]) -> list[tuple[bytes, bytes, bytes]]:
    """XRANGE's reply as (id, kind, payload): each relay entry holds one field."""
    return [(entry_id, kind, payload) for entry_id, fields in found for kind, payload in fields.items()]


def _unpack(key: bytes, packed: bytes) -> tuple[IndexedQuestion | None, float]:
    """(the entry, when it expires) of an index field; (None, 0) for one this version cannot read."""
    parts = packed.split(VECTOR_SEPARATOR, 3)
    if len(parts) != 4 or len(parts[3]) != VECTOR_BYTES:
        return None, 0.0
    question, answer_key, expires, vector = parts
    try:
        return IndexedQuestion(key.decode(), question.decode("utf-8"), vector, answer_key.decode()), float(expires)
    except (UnicodeDecodeError, ValueError):
        return None, 0.0
