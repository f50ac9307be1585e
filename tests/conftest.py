"""Shared fixtures: real databases (fresh per run, migrated from zero), one embedder, the app over ASGI."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from helpline.api.deps import Services
from helpline.app import create_app
from helpline.config import Settings
from helpline.knowledge.embeddings import Embedder
from helpline.providers.base import Provider
from helpline.store import db
from helpline.store.repositories import ConversationRepository

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_KB = ROOT / "data" / "sample-store"
MARIADB_ADMIN_URL = os.environ.get("HELPLINE_TEST_MARIADB", "mysql+asyncmy://root@127.0.0.1:3306/test")
POSTGRES_ADMIN_URL = os.environ.get("HELPLINE_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
BACKENDS = ("sqlite", "mariadb", "postgresql")


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder()


async def _create_server_database(admin_url: str, name: str) -> str:
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(sa.text(f"CREATE DATABASE {name}"))
    finally:
        await engine.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def _drop_server_database(admin_url: str, name: str) -> None:
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
async def database_urls(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, str]]:
    """A brand-new empty database per backend for this run (so migrations always start from zero)."""
    name = f"helpline_t_{secrets.token_hex(4)}"
    sqlite_path = tmp_path_factory.mktemp("sqlite") / "helpline.db"
    urls = {
        "sqlite": f"sqlite+aiosqlite:///{sqlite_path}",
        "mariadb": await _create_server_database(MARIADB_ADMIN_URL, name),
        "postgresql": await _create_server_database(POSTGRES_ADMIN_URL, name),
    }
    yield urls
    await _drop_server_database(MARIADB_ADMIN_URL, name)
    await _drop_server_database(POSTGRES_ADMIN_URL, name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def database_url(database_urls: dict[str, str], backend: str) -> str:
    return database_urls[backend]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(database_url)
    await db.upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return db.session_factory(engine)


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "test",
        "database_url": database_url,
        "kb_sample_path": SAMPLE_KB,
        "admin_token": "test-admin-token-0123456789abcdef",
        "log_json": True,
        "providers": "extractive",
        # Every in-process test talks from one address; limits are tested on purpose in tests/ratelimit.
        "rate_limit_ip": "10000/minute",
        "rate_limit_user": "10000/minute",
        "rate_limit_session": "10000/minute",
    }
    values.update(overrides)
    return Settings.model_validate(values)


@dataclass
class Api:
    """The real app with its lifespan running, and an httpx client speaking to it in-process."""

    app: FastAPI
    client: httpx.AsyncClient

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    @property
    def conversations(self) -> ConversationRepository:
        """The app's own repository: reads through it see this process's pending (write-behind) records."""
        assert self.services.conversations is not None
        return self.services.conversations

    async def count_rows(self) -> tuple[int, int]:
        """(conversations, chat sessions) stored so far."""
        return await self.conversations.count(), await self.conversations.count_sessions()


@asynccontextmanager
async def running_api(
    settings: Settings, embedder: Embedder, providers: list[Provider] | None = None
) -> AsyncIterator[Api]:
    app = create_app(settings, embedder=embedder, providers=providers)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://helpline.test") as client:
            yield Api(app, client)


@pytest.fixture
async def api(database_url: str, embedder: Embedder) -> AsyncIterator[Api]:
    """The real app on the parametrised database with the sample knowledge base loaded."""
    async with running_api(make_settings(database_url), embedder) as running:
        yield running


@pytest.fixture(scope="session")
async def sqlite_template(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    """A migrated SQLite database with the sample store ingested once; tests get copies (ingest takes seconds)."""
    path = tmp_path_factory.mktemp("template") / "helpline.db"
    async with running_api(make_settings(f"sqlite+aiosqlite:///{path}"), embedder):
        pass
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A fresh SQLite database of this test's own, already migrated, with the sample knowledge base."""
    target = tmp_path / "helpline.db"
    shutil.copyfile(sqlite_template, target)
    return f"sqlite+aiosqlite:///{target}"
