"""The app factory: ``create_app(settings)``; the lifespan builds every client once and tears them down."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from helpline.api.admin import router as admin_router
from helpline.api.deps import Services
from helpline.api.errors import install_error_handlers
from helpline.api.feedback import router as feedback_router
from helpline.api.limits import RateLimitMiddleware
from helpline.api.metrics_route import router as metrics_router
from helpline.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from helpline.api.openai_compat import router as openai_router
from helpline.api.routes import direct_router, document_models, router
from helpline.api.security import install_security
from helpline.cache.factory import build_cache
from helpline.cache.guards import SemanticGuard, language
from helpline.cache.invalidation import Invalidator
from helpline.chat.service import ChatService
from helpline.config import Settings
from helpline.knowledge.base import KnowledgeBase
from helpline.knowledge.documents import parse_files
from helpline.knowledge.embeddings import Embedder
from helpline.observability.access import AccessLogMiddleware
from helpline.observability.logging import configure_logging
from helpline.observability.metrics import record_conversation_write_failure, set_conversation_backlog
from helpline.providers.base import Provider
from helpline.providers.extractive import ExtractiveProvider
from helpline.providers.gemini import GeminiProvider
from helpline.providers.local import LocalProvider
from helpline.providers.ollama import OllamaProvider
from helpline.providers.router import FallbackRouter, RouterTimings
from helpline.ratelimit.service import RateLimiter
from helpline.store import db, sqlite_writer
from helpline.store.repositories import (
    ApiKeyRepository,
    ConversationRepository,
    KnowledgeRepository,
    StateRepository,
)
from helpline.store.writer import ConversationWriter
from helpline.web.routes import router as web_router

log = structlog.get_logger(__name__)
ADMIN_BOOTSTRAPPED = "admin_token_bootstrapped"


def router_timings(settings: Settings) -> RouterTimings:
    return RouterTimings(
        first_token_s=settings.first_token_timeout_s,
        reply_s=settings.provider_timeout_s,
        stall_s=settings.stall_timeout_s,
        health_interval_s=settings.health_interval_s,
        breaker_failures=settings.breaker_failures,
        breaker_window_s=settings.breaker_window_s,
    )


def build_providers(settings: Settings) -> list[Provider]:
    """The configured chain, in order; the extractive answerer is always the last resort."""
    chain: list[Provider] = []
    for name in settings.provider_names:
        provider = _build_provider(name, settings)
        if provider is not None:
            chain.append(provider)
    if not chain or chain[-1].name != "extractive":
        chain.append(ExtractiveProvider(settings.answer_min_score))
    return chain


def _build_provider(name: str, settings: Settings) -> Provider | None:
    if name == "gemini":
        if settings.gemini_api_key is None:
            log.info("provider_disabled", provider="gemini", reason="HELPLINE_GEMINI_API_KEY is not set")
            return None
        return GeminiProvider(
            settings.gemini_api_key.get_secret_value(), settings.gemini_model, settings.gemini_base_url,
            settings.provider_timeout_s, settings.gemini_max_output_tokens,
        )  # fmt: skip
    if name == "ollama":
        return OllamaProvider(
            settings.ollama_host,
            settings.ollama_model,
            settings.provider_timeout_s,
            settings.provider_connect_timeout_s,
        )
    if name == "local":
        return LocalProvider(settings.local_model_path, threads=settings.local_threads)
    return ExtractiveProvider(settings.answer_min_score)


async def load_sample_if_empty(settings: Settings, knowledge: KnowledgeBase) -> None:
    if len(knowledge) or not settings.kb_load_sample_when_empty:
        return
    if not settings.kb_sample_path.exists():
        log.warning("sample_kb_missing", path=str(settings.kb_sample_path))
        return
    report = await knowledge.ingest(parse_files([settings.kb_sample_path]))
    log.info("sample_kb_loaded", documents=len(report.changed), path=str(settings.kb_sample_path))


async def bootstrap_admin(settings: Settings, api_keys: ApiKeyRepository, state: StateRepository) -> None:
    """Embedded only: with no ADMIN_TOKEN, make an admin key once and print it once (it is stored hashed)."""
    if settings.admin_token is not None or settings.env == "production":
        return
    if await state.get(ADMIN_BOOTSTRAPPED) is not None:
        return
    plain, _row = await api_keys.create("bootstrap-admin", is_admin=True)
    await state.put(ADMIN_BOOTSTRAPPED, "1")
    # Deliberately not through the logger: the token must not land in log storage.
    print(f"\n  Helpline admin token (shown once, keep it safe): {plain}\n", file=sys.stderr, flush=True)


def conversation_writer(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> ConversationWriter:
    """The write-behind writer, started; on an SQLite file its batches are written by a process of their own (see
    ``store.sqlite_writer``), which its ``close`` lets go of."""
    writes = sqlite_writer.for_database(settings.database_url)
    writer = ConversationWriter(
        ConversationRepository(sessions, writing_process=writes).write_batch,
        on_failure=lambda _error: record_conversation_write_failure(),
        release=writes.close if writes is not None else None,
        on_backlog=set_conversation_backlog,
    )
    writer.start()
    return writer


def freeze_startup_heap() -> None:
    """Move everything built at start (the knowledge base, the embedder, the SDK clients, the app) out of the
    cyclic garbage collector's reach, once, in a server process.

    Each full collection otherwise walks that whole heap while requests wait: measured with bench.cache, it put a
    cached answer's p99 at 118-125 ms against 48-56 ms with the heap frozen (same throughput). Garbage made later is
    collected as before. The price: a start-up object that later dies inside a reference cycle (a recycled pool
    connection, say) is never collected; a bounded, one-off amount. Not for tests, which build many apps in one
    process and would pin each one's garbage."""
    gc.collect()
    gc.freeze()


def create_app(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    providers: Sequence[Provider] | None = None,
    freeze_heap: bool = False,
    bootstrap: bool = True,
) -> FastAPI:
    """Build the ASGI app. Tests pass a shared ``embedder`` and scripted ``providers``; the server process passes
    ``freeze_heap`` (see :func:`freeze_startup_heap`). A CLI command that starts the service for a moment (`kb
    ingest`, `cache warm`) passes ``bootstrap=False``: the one-time admin token is printed by `helpline serve`,
    not into the output of a batch job, where nobody looks for it and its logs may keep it."""
    settings.check_can_start()
    configure_logging(
        settings.log_level,
        settings.log_json if settings.log_json is not None else (True if settings.env == "production" else None),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = db.create_engine(settings.database_url)
        if settings.auto_migrate:
            await db.upgrade(engine)
        sessions = db.session_factory(engine)
        knowledge = KnowledgeBase(KnowledgeRepository(sessions), embedder or Embedder(settings.embed_threads))
        await knowledge.load()
        await load_sample_if_empty(settings, knowledge)
        api_keys = ApiKeyRepository(sessions)
        if bootstrap:
            await bootstrap_admin(settings, api_keys, StateRepository(sessions))
        router_provider = FallbackRouter(
            list(providers) if providers is not None else build_providers(settings), router_timings(settings)
        )
        health_task = asyncio.create_task(router_provider.run_health_checks(), name="provider-health")
        writer = conversation_writer(settings, sessions)
        conversations = ConversationRepository(sessions, writer)
        limiter = RateLimiter.from_settings(settings)
        await limiter.warm_up()
        guard = SemanticGuard(knowledge.product_vocabulary())
        cache = build_cache(settings, guard, await knowledge.database_id())
        await cache.connect()
        # The language guard's model (half a second, once per process): read now, not in the first request that
        # meets a semantic candidate.
        await asyncio.to_thread(language, "")
        chat = ChatService(settings, conversations, knowledge, router_provider, cache)
        invalidator = Invalidator(cache, chat, knowledge)
        chat.catch_up = invalidator.catch_up
        await invalidator.start()
        watch_task = asyncio.create_task(invalidator.watch(settings.kb_refresh_s), name="knowledge-watch")
        app.state.services = Services(
            settings=settings,
            engine=engine,
            sessions=sessions,
            api_keys=api_keys,
            knowledge=knowledge,
            provider=router_provider,
            chat=chat,
            limiter=limiter,
            cache=cache,
            invalidator=invalidator,
            conversations=conversations,
        )
        if freeze_heap:
            freeze_startup_heap()
        log.info("started", documents=len(knowledge), providers=[p.name for p in router_provider.providers])
        try:
            yield
        finally:
            for task in (health_task, watch_task):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await invalidator.aclose()
            await chat.aclose()
            await writer.close()  # graceful shutdown: every accepted conversation is written
            await cache.close()  # sends the last popularity counts, then closes the store
            await limiter.aclose()
            await engine.dispose()

    app = FastAPI(
        title="Helpline",
        version="0.1.0",
        lifespan=lifespan,
        description="AI customer support for online stores.",
        # FastAPI's native OpenTelemetry is off: operators get Prometheus metrics and JSON logs (observability/),
        # and when on it looks up the global providers (environment reads) on every request, about 7 % of a cached
        # answer's time on the Redis setup (py-spy, bench.cache); its logs would also carry validation messages,
        # which may quote what a shopper typed.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    include_routes(app)
    install_middleware(app, settings)
    return app


def include_routes(app: FastAPI) -> None:
    app.include_router(direct_router)
    document_models(app)
    app.include_router(router)
    app.include_router(metrics_router)
    app.include_router(admin_router)
    app.include_router(feedback_router)
    app.include_router(openai_router)
    app.include_router(web_router)


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """Outermost last: RequestId → AccessLog → security (CSRF, CORS, headers) → body limit → rate limits."""
    app.add_middleware(RateLimitMiddleware)  # innermost: holds the concurrency lease until the last body byte
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    install_security(app, settings)  # CSRF, CORS, security headers
    app.add_middleware(AccessLogMiddleware)  # inside RequestId (knows the id), outside the rest (counts 413/429)
    app.add_middleware(RequestIdMiddleware)
