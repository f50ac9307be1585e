"""RateLimiter: the configured policies plus a limiter backend, built once in the app's lifespan.

Embedded default (no ``REDIS_URL``): the in-process limiter. With Redis: the Lua limiter, falling back to the
in-process one per replica while Redis does not answer (ratelimit/fallback.py).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import structlog

from helpline.observability.metrics import record_redis_fallback
from helpline.ratelimit.base import Decision, Limiter
from helpline.ratelimit.fallback import FallbackLimiter
from helpline.ratelimit.memory import MemoryLimiter
from helpline.ratelimit.policies import Policies
from helpline.ratelimit.redis import RedisLimiter
from helpline.redisconn import create_redis, describe

if TYPE_CHECKING:
    from helpline.config import Settings

log = structlog.get_logger(__name__)


def session_hash(session_id: str) -> str:
    """Session ids are bearer secrets for anonymous shoppers; keys in Redis carry a digest, never the id."""
    return hashlib.blake2b(session_id.encode("utf-8"), digest_size=12).hexdigest()


def key_prefix(settings: Settings) -> str:
    """``hl:rl:{default:rl}:``: one hash tag per tenant, so every key of one evaluation shares a cluster slot, and
    tenants (stores, staging and production on one Redis) are apart and may land on different shards."""
    return "hl:rl:{" + settings.tenant + ":rl}:"


OVERLOAD_TIMEOUT_S = 3.0


def build_backend(settings: Settings) -> Limiter:
    if not settings.redis_url:
        return MemoryLimiter(settings.max_concurrent)
    # The client's own read timeout is the overload budget: the fallback wrapper decides sooner when Redis, not our
    # event loop, is what is slow (see FallbackLimiter).
    client = create_redis(settings.redis_url, timeout_s=OVERLOAD_TIMEOUT_S)
    primary = RedisLimiter(client, settings.max_concurrent, prefix=key_prefix(settings))
    fallback = MemoryLimiter(settings.max_concurrent, backend="memory-fallback")
    return FallbackLimiter(
        primary, fallback, overload_timeout_s=OVERLOAD_TIMEOUT_S, on_fallback=lambda: record_redis_fallback("ratelimit")
    )


class RateLimiter:
    """What the HTTP layer asks before doing expensive work: may this caller run one more request now?"""

    def __init__(self, limiter: Limiter, policies: Policies) -> None:
        self.limiter = limiter
        self.policies = policies

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        policies = Policies.from_strings(
            settings.rate_limit_ip, settings.rate_limit_user, settings.rate_limit_session, settings.max_concurrent
        )
        limiter = cls(build_backend(settings), policies)
        log.info(
            "ratelimit_ready",
            backend=limiter.limiter.backend,
            redis=describe(settings.redis_url) if settings.redis_url else None,
            max_concurrent=settings.max_concurrent,
        )
        for tier in policies.disabled():
            log.warning("ratelimit_tier_disabled", tier=tier, reason="configured as off")
        return limiter

    async def admit(self, *, client: str, user_id: int | None, session_id: str | None) -> Decision:
        """Checks and charges the caller's tiers and takes a concurrency lease, all or nothing."""
        tiers = self.policies.tiers_for(
            client=client, user_id=user_id, session_hash=session_hash(session_id) if session_id else None
        )
        return await self.limiter.acquire(tiers)

    async def warm_up(self) -> None:
        """Called once in the lifespan, before the first request (see RedisLimiter.warm_up)."""
        await self.limiter.warm_up()

    async def aclose(self) -> None:
        await self.limiter.aclose()

    def stats(self) -> dict[str, int | str | bool]:
        return self.limiter.stats()
