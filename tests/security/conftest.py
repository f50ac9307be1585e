"""An in-process app on a throw-away SQLite database, without the sample knowledge (fast to start)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from helpline.knowledge.embeddings import Embedder
from helpline.providers.fake import FakeProvider
from tests.conftest import Api, make_settings, running_api


@asynccontextmanager
async def small_api(tmp_path: Path, embedder: Embedder, **overrides: object) -> AsyncIterator[Api]:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / f'helpline-{time.monotonic_ns()}.db'}",
        kb_load_sample_when_empty=False,
        rate_limit_ip="1000/minute",
        **overrides,
    )
    async with running_api(settings, embedder, [FakeProvider()]) as api:
        yield api
