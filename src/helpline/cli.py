"""The ``helpline`` command line (typer): serve, migrate, ingest knowledge, create API keys."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import uvicorn
from fastapi import FastAPI
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from helpline.app import bootstrap_admin, create_app, load_sample_if_empty
from helpline.cache.service import CacheUnavailable
from helpline.cli_cache import cache_cli, eval_cli
from helpline.config import ConfigError, Settings
from helpline.knowledge.base import IngestReport, KnowledgeBase
from helpline.knowledge.documents import DocumentFormatError, parse_files
from helpline.knowledge.embeddings import Embedder
from helpline.observability.logging import configure_logging, json_logs_for, uvicorn_log_config
from helpline.observability.metrics import prepare_multiprocess
from helpline.store import db
from helpline.store.repositories import ApiKeyRepository, KnowledgeRepository, StateRepository

cli = typer.Typer(help="Helpline: AI customer support for online stores.", no_args_is_help=True)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
kb_cli = typer.Typer(help="The store's knowledge base.", no_args_is_help=True)
keys_cli = typer.Typer(help="User and admin API keys.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(kb_cli, name="kb")
cli.add_typer(keys_cli, name="keys")
cli.add_typer(cache_cli, name="cache")
cli.add_typer(eval_cli, name="eval")
err = Console(stderr=True, soft_wrap=True)

# On SIGTERM uvicorn stops accepting, lets in-flight requests finish for this long, then cancels the rest.
# Below Docker's stop grace period in deploy/docker-compose.yml (30 s), so nothing is killed mid-drain.
GRACEFUL_SHUTDOWN_S = 25
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def load_settings() -> Settings:
    try:
        settings = Settings()
        settings.check_can_start()
    except (ConfigError, ValueError) as error:
        err.print(f"[red]configuration error:[/red] {error}")
        raise typer.Exit(2) from error
    # Log lines go to stderr: stdout carries a command's --json output (a cache log line there broke its parsing).
    configure_logging(settings.log_level, json_logs_for(settings.env, settings.log_json))
    return settings


def emit(data: dict[str, Any], as_json: bool, human: str) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(data).decode() + "\n")
    else:
        Console().print(human)


def app_factory() -> FastAPI:
    """Used by uvicorn (``factory=True``) in every worker process."""
    return create_app(Settings(), freeze_heap=True)


async def _prepare(settings: Settings) -> None:
    """Once, before workers start: migrate, load the sample knowledge on first start, bootstrap the admin."""
    engine = db.create_engine(settings.database_url)
    try:
        await db.upgrade(engine)
        sessions = db.session_factory(engine)
        knowledge = KnowledgeBase(KnowledgeRepository(sessions), Embedder(settings.embed_threads))
        await knowledge.load()
        await load_sample_if_empty(settings, knowledge)
        await bootstrap_admin(settings, ApiKeyRepository(sessions), StateRepository(sessions))
    finally:
        await engine.dispose()


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the HTTP API (migrates and loads the sample knowledge base on first start)."""
    settings = load_settings()  # logging configured: _prepare logs too
    if workers > 1 and not settings.redis_url:
        # Without Redis each worker keeps its own cache and its own limits: an admin purge or a document change
        # reaches the worker that took the request and the others go on serving the old answers, and every limit
        # (per IP, per user, the global cap) is multiplied by the number of workers.
        err.print(
            f"[red]--workers {workers} needs HELPLINE_REDIS_URL:[/red] without it every worker keeps its own "
            "answer cache and rate limits (a purge would reach one worker, limits would multiply). Set "
            "HELPLINE_REDIS_URL, or serve with one worker."
        )
        raise typer.Exit(2)
    asyncio.run(_prepare(settings))
    prepare_multiprocess(workers)  # several workers: a fresh PROMETHEUS_MULTIPROC_DIR they all write to
    uvicorn.run(
        "helpline.cli:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        proxy_headers=False,  # client addresses are resolved by our own trusted-proxy rules
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        access_log=False,  # observability.access writes one structured line per request
        log_config=uvicorn_log_config(settings.log_level, json_logs_for(settings.env, settings.log_json)),
    )


@db_cli.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply the schema migrations."""
    settings = load_settings()

    async def run() -> None:
        engine = db.create_engine(settings.database_url)
        try:
            await db.upgrade(engine, revision)
        finally:
            await engine.dispose()

    asyncio.run(run())
    err.print(f"database at revision {revision}")


@kb_cli.command("ingest")
def kb_ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories (.jsonl, .md, .csv).")],
    as_json: JsonFlag = False,
) -> None:
    """Load or update knowledge documents; unchanged documents are skipped."""
    settings = load_settings()
    try:
        documents = parse_files(paths)
    except DocumentFormatError as error:
        err.print(f"[red]cannot ingest:[/red] {error}")
        raise typer.Exit(1) from error
    report = asyncio.run(_ingest(settings, documents, show_progress=not as_json))
    if settings.redis_url and (report.updated or report.added):
        try:
            asyncio.run(_invalidate_changed(settings))
        except Exception as error:  # the documents are stored: say what is left to do, without a traceback
            reason = error.message if isinstance(error, CacheUnavailable) else f"{type(error).__name__}: {error}"
            changed = ", ".join(sorted([*report.updated, *report.added]))
            err.print(
                f"[red]{reason}[/red]: the documents are stored ({changed}); the service serves no cached answer "
                "until the answers given from the knowledge as it was are removed, which it retries on its own"
            )
            raise typer.Exit(1) from error
    emit(
        {"added": report.added, "updated": report.updated, "unchanged": report.unchanged},
        as_json,
        f"{len(report.added)} added, {len(report.updated)} updated, {report.unchanged} unchanged",
    )


async def _ingest(settings: Settings, documents: list[Any], *, show_progress: bool) -> IngestReport:
    engine = db.create_engine(settings.database_url)
    try:
        await db.upgrade(engine)
        knowledge = KnowledgeBase(KnowledgeRepository(db.session_factory(engine)), Embedder(settings.embed_threads))
        with Progress(
            TextColumn("embedding"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=not show_progress,
        ) as progress:
            task = progress.add_task("ingest", total=None)
            return await knowledge.ingest(
                documents, progress=lambda done, total: progress.update(task, completed=done, total=total)
            )
    finally:
        await engine.dispose()


async def _invalidate_changed(settings: Settings) -> None:
    """The cached answers drawn from another version of the changed documents go, in the shared store, now: the
    ingest left its changes in the database's outbox, which running replicas drain on their next knowledge poll
    (and one started later, at its start), but this command reports whether it went through.

    The popular ones among them are then asked again here, from the new text, as an admin PUT does: the first
    shoppers after a price change would otherwise all wait for a provider. The service is started in this process
    for it (its knowledge, read after the ingest, holds the new versions) and the command waits for the re-warm,
    which uses the providers of this command's environment: run it with the server's settings.

    Answers given without an added or changed document that retrieval now gives their question go too (no tag
    reaches them: "we don't sell kombucha" after kombucha was added)."""
    app = create_app(settings, bootstrap=False)
    async with app.router.lifespan_context(app):
        invalidator = app.state.services.invalidator
        await invalidator.sync()
        await invalidator.settled()


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who the key is for.")],
    admin: Annotated[bool, typer.Option("--admin", help="An operator key.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    settings = load_settings()
    if not name.strip() or len(name) > 100:
        err.print("[red]--name must be 1..100 characters[/red]")
        raise typer.Exit(2)

    async def run() -> tuple[str, int]:
        engine = db.create_engine(settings.database_url)
        try:
            await db.upgrade(engine)
            plain, row = await ApiKeyRepository(db.session_factory(engine)).create(name.strip(), is_admin=admin)
            return plain, row.id
        finally:
            await engine.dispose()

    plain, key_id = asyncio.run(run())
    emit(
        {"id": key_id, "name": name.strip(), "admin": admin, "key": plain},
        as_json,
        f"key for {name.strip()!r} (shown once): {plain}",
    )


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
