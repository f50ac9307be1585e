"""The server process freezes its start-up heap (p99 of cached answers, see app.freeze_startup_heap); tests do not."""

from __future__ import annotations

import gc

from helpline.app import create_app
from helpline.knowledge.embeddings import Embedder
from tests.conftest import make_settings


async def test_the_start_up_heap_is_frozen_only_when_asked(sqlite_url: str, embedder: Embedder) -> None:
    gc.unfreeze()
    try:
        plain = create_app(make_settings(sqlite_url), embedder=embedder)
        async with plain.router.lifespan_context(plain):
            assert gc.get_freeze_count() == 0  # an app in a test process leaves the collector alone
        served = create_app(make_settings(sqlite_url), embedder=embedder, freeze_heap=True)
        async with served.router.lifespan_context(served):
            # The services built at start are among the frozen objects: a full collection no longer walks them.
            assert gc.get_freeze_count() > 0
            frozen = gc.get_freeze_count()
            gc.collect()
            assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
