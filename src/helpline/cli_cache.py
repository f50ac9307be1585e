"""`helpline cache ...` and `helpline eval cache`: warming, invalidating and evaluating the answer cache."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from helpline.app import create_app
from helpline.cache.evaluate import Report, evaluate, load_labelled
from helpline.cache.guards import SemanticGuard
from helpline.cache.service import CacheUnavailable
from helpline.config import Settings
from helpline.knowledge.embeddings import Embedder

cache_cli = typer.Typer(help="The answer cache (shared through Redis).", no_args_is_help=True)
eval_cli = typer.Typer(help="Measure quality.", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _needs_redis(settings: Settings, what: str) -> None:
    if not settings.redis_url:
        err.print(
            f"[red]{what} needs HELPLINE_REDIS_URL:[/red] the embedded cache lives inside the server process; "
            "the server refreshes changed knowledge by itself within HELPLINE_KB_REFRESH_S."
        )
        raise typer.Exit(2)


def _progress(disable: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err,
        disable=disable,
    )  # fmt: skip


def _confirmed(work: Callable[[], Coroutine[Any, Any, int]], unconfirmed: str) -> int:
    """Run a change to the store; exit 1 with the store's message when the store could not confirm it."""
    try:
        return asyncio.run(work())
    except CacheUnavailable as error:
        err.print(f"[red]{error.message}[/red] ({unconfirmed}; run the command again)")
        raise typer.Exit(1) from error


@cache_cli.command("warm")
def cache_warm(
    as_json: JsonFlag = False,
    locale: Annotated[str | None, typer.Option(help="Locale the answers are for.")] = None,
) -> None:
    """Pre-fill the cache with answers to every FAQ question of the knowledge base."""
    from helpline.cli import emit, load_settings  # noqa: PLC0415 - cli imports this module

    settings = load_settings()
    _needs_redis(settings, "cache warm")

    async def run() -> tuple[int, int]:
        app = create_app(settings, bootstrap=False)
        warmed = 0
        async with app.router.lifespan_context(app):
            services = app.state.services
            # A generic-form document of kind faq ({"kind": "faq", "title", "text"}) asks its title.
            questions = [
                str(p.metadata.get("question", p.title)) for p in services.knowledge.passages() if p.kind == "faq"
            ]
            with _progress(as_json) as progress:
                task = progress.add_task("warming", total=len(questions))
                for question in questions:
                    warmed += await services.chat.warm(question, locale)
                    progress.advance(task)
        return warmed, len(questions)

    warmed, total = asyncio.run(run())
    emit({"warmed": warmed, "questions": total}, as_json, f"{warmed} of {total} FAQ answers cached")


@cache_cli.command("invalidate")
def cache_invalidate(
    tags: Annotated[list[str], typer.Option("--tag", help="A document id or ingest tag (repeatable).")],
    as_json: JsonFlag = False,
) -> None:
    """Remove every cached answer that drew on one of these documents or tags."""
    from helpline.cli import emit, load_settings  # noqa: PLC0415 - cli imports this module

    settings = load_settings()
    _needs_redis(settings, "cache invalidate")

    async def run() -> int:
        app = create_app(settings, bootstrap=False)
        async with app.router.lifespan_context(app):
            removed: int = await app.state.services.invalidator.invalidate(tags, rewarm=False)
        return removed

    removed = _confirmed(run, "nothing was confirmed removed")
    emit({"removed": removed}, as_json, f"{removed} cached answers removed")


@cache_cli.command("reset")
def cache_reset(as_json: JsonFlag = False) -> None:
    """Remove everything the cache holds for this store (answers, indexes, version marks): after restoring the
    database from a backup, whose knowledge is older than what the cache was told."""
    from helpline.cli import emit, load_settings  # noqa: PLC0415 - cli imports this module

    settings = load_settings()
    _needs_redis(settings, "cache reset")

    async def run() -> int:
        app = create_app(settings, bootstrap=False)
        async with app.router.lifespan_context(app):
            cache = app.state.services.cache
            removed: int = 0 if cache is None else await cache.reset("helpline cache reset")
        return removed

    removed = _confirmed(run, "the reset was not confirmed")
    emit({"removed": removed}, as_json, f"{removed} cache keys removed")


@eval_cli.command("cache")
def eval_cache(
    *,
    dataset: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Labelled questions (CSV).")],
    text_col: Annotated[str, typer.Option(help="Column with the question.")] = "text",
    label_col: Annotated[str, typer.Option(help="Column with the label (the 'answer').")] = "category",
    per_label: Annotated[int, typer.Option(min=1, help="Questions per label that fill the cache.")] = 10,
    target: Annotated[float, typer.Option(min=0.5, max=1.0, help="Precision to calibrate for.")] = 0.99,
    gptcache: Annotated[bool, typer.Option(help="Also run GPTCache on the same protocol.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Hit rate and precision of the exact, semantic and combined tiers (and GPTCache) on a labelled set."""
    from helpline.cli import emit  # noqa: PLC0415 - cli imports this module

    try:
        rows = load_labelled(dataset, text_col, label_col)
    except ValueError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    embedder = Embedder(threads=2)
    with _progress(as_json) as progress, tempfile.TemporaryDirectory() as tmp:
        task = progress.add_task("evaluating", total=None)
        report = evaluate(
            rows, embedder.embed, SemanticGuard(), per_label=per_label, target=target,
            gptcache=_gptcache_runner(embedder.embed, Path(tmp)) if gptcache else None,
            progress=lambda step: progress.update(task, description=step),
        )  # fmt: skip
    if as_json:
        emit(_as_dict(report), True, "")
    else:
        _print(report)


def _gptcache_runner(
    embed: Callable[[list[str]], npt.NDArray[np.float32]], workdir: Path
) -> Callable[[list[tuple[str, str]], list[str], float], list[tuple[str | None, float]]]:
    from helpline.cache.gptcache_baseline import run_gptcache  # noqa: PLC0415 - optional, logs on import

    return lambda fill, questions, threshold: run_gptcache(fill, questions, embed, threshold, workdir)


def _as_dict(report: Report) -> dict[str, Any]:
    return {
        "fill": report.fill, "replay": report.replay, "threshold": report.threshold, "margin": report.margin,
        "target_precision": report.target_precision, "at_threshold": report.at_threshold,
        "held_out_combined": report.held_out, "sweep": report.sweep, "gptcache": report.gptcache,
    }  # fmt: skip


def _print(report: Report) -> None:
    console = Console()
    console.print(f"{report.fill} questions fill the cache, {report.replay} are replayed")
    console.print(
        f"calibrated threshold {report.threshold:.2f}, margin {report.margin:.2f} "
        f"(precision >= {report.target_precision:.0%} on the even "
        f"half); held-out odd half, combined: {report.held_out}"
    )
    table = Table("threshold", "margin", "exact hit/prec", "semantic hit/prec", "combined hit/prec")
    rows = [{"threshold": report.threshold, "margin": report.margin, **report.at_threshold}, *report.sweep]
    for row in rows:
        cells = [f"{row[t]['hit_rate']:.3f} / {row[t]['precision']:.4f}" for t in ("exact", "semantic", "combined")]
        table.add_row(str(row["threshold"]), str(row["margin"]), *cells)
    console.print(table)
    if report.gptcache:
        gpt = Table("GPTCache threshold", "cosine", "hit rate", "precision")
        for row in report.gptcache["sweep"]:
            label = f"{row['threshold']}{' (default)' if row['default'] else ''}"
            gpt.add_row(label, str(row["cosine"]), f"{row['hit_rate']:.3f}", f"{row['precision']:.4f}")
        console.print(gpt)
        console.print(f"GPTCache best hit rate at our precision: {report.gptcache['best_at_our_precision']}")
