"""One running app for the observability tests: building it ingests the sample store, which is the slow part."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from helpline.knowledge.embeddings import Embedder
from helpline.providers.base import Provider
from helpline.providers.extractive import ExtractiveProvider
from helpline.providers.fake import FakeProvider
from tests.conftest import Api, make_settings, running_api


@pytest.fixture(scope="session")
async def gemini_api(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> AsyncIterator[Api]:
    """The real app with a scripted provider named like a paid one (so tokens and cost are non-zero)."""
    database = tmp_path_factory.mktemp("observability") / "helpline.db"
    providers: list[Provider] = [FakeProvider(name="gemini", model="gemini-test"), ExtractiveProvider(0.5)]
    async with running_api(make_settings(f"sqlite+aiosqlite:///{database}"), embedder, providers) as api:
        yield api
