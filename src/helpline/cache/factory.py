"""Build the answer cache the settings ask for: Redis (single node or Cluster) or in-process memory."""

from __future__ import annotations

from helpline.cache.backend import CacheBackend, MemoryBackend
from helpline.cache.guards import SemanticGuard
from helpline.cache.keys import KeySpace
from helpline.cache.redis_backend import RedisBackend
from helpline.cache.service import OVERLOAD_TIMEOUT_S, AnswerCache, CacheSettings
from helpline.config import Settings
from helpline.observability.metrics import record_cache_reads_held, record_redis_fallback
from helpline.redisconn import create_redis

NAMESPACE = "hl:c4"  # bump when the stored format changes (c3: tag hashes carry the document version; c4: a scope set)


def build_cache(settings: Settings, guard: SemanticGuard | None = None, database_id: str = "") -> AnswerCache:
    """``database_id``: the identity of the database the knowledge comes from (its answers' keys carry it)."""
    keys = KeySpace(NAMESPACE, settings.tenant, database_id)
    backend: CacheBackend = MemoryBackend()
    if settings.redis_url:
        client = create_redis(settings.redis_url, timeout_s=settings.cache_timeout_s + OVERLOAD_TIMEOUT_S)
        backend = RedisBackend(client, keys.prefix)
    cache_settings = CacheSettings(
        ttl_s=settings.cache_ttl_s,
        threshold=settings.cache_semantic_threshold,
        margin=settings.cache_semantic_margin,
        timeout_s=settings.cache_timeout_s,
        # How long a replica waits for another's answer at most, when the caller gives no bound of its own (every
        # request and re-warm gives one from its deadline: ChatService._one_call). The holder's lock is renewed
        # while it works and lapses within 3 s if it dies; its call ends by its deadline.
        lock_wait_s=settings.first_token_timeout_s + settings.provider_timeout_s,
        near_s=settings.cache_near_ms / 1000 if settings.redis_url else 0.0,
    )
    return AnswerCache(backend, keys, cache_settings, guard, on_event=_on_event)


def _on_event(kind: str, detail: str) -> None:
    if kind == "store_error":
        record_redis_fallback("cache")
    elif kind == "reads_held":
        record_cache_reads_held(detail == "held")
