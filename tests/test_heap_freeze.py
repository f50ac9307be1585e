"""The server process freezes its start-up heap (p99 of cached answers, see app.freeze_startup_heap); tests do not."""

from __future__ import annotations

import gc

import pytest

from helpline.app import create_app
from helpline.cli import app_factory
from helpline.knowledge.embeddings import Embedder
from tests.conftest import SAMPLE_KB, make_settings


async def test_an_app_built_for_tests_leaves_the_collector_alone(sqlite_url: str, embedder: Embedder) -> None:
    gc.unfreeze()
    app = create_app(make_settings(sqlite_url), embedder=embedder)
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() == 0


async def test_the_served_app_freezes_what_its_start_up_built(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``app_factory`` is what uvicorn calls in each worker of ``helpline serve``."""
    monkeypatch.setenv("HELPLINE_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("HELPLINE_KB_SAMPLE_PATH", str(SAMPLE_KB))
    monkeypatch.setenv("HELPLINE_PROVIDERS", "extractive")
    gc.unfreeze()
    try:
        app = app_factory()
        assert gc.get_freeze_count() == 0  # building the app freezes nothing; its start-up does
        async with app.router.lifespan_context(app):
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
