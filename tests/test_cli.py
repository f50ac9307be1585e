"""The CLI as users run it: a real subprocess against a real database."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpline.knowledge.embeddings import Embedder
from helpline.providers.extractive import ExtractiveProvider
from helpline.providers.fake import FakeProvider, FakeReply
from helpline.store import db
from helpline.store.repositories import KnowledgeRepository
from tests.cache.test_cache_api import ask
from tests.conftest import SAMPLE_KB, make_settings, running_api
from tests.fakes.ollama import FakeOllama

CITED = "policy-delivery.delivery-times"


@pytest.fixture
def empty_sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"


def run_cli(
    *args: str, database_url: str, cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELPLINE_DATABASE_URL": database_url, "HELPLINE_ENV": "development", **(extra_env or {})}
    return subprocess.run(  # noqa: S603 - our own CLI with fixed arguments
        [sys.executable, "-m", "helpline", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
        check=False,
    )  # fmt: skip


def test_ingest_is_idempotent_and_reports_changes(tmp_path: Path, empty_sqlite_url: str) -> None:
    first = run_cli("kb", "ingest", str(SAMPLE_KB / "faq.jsonl"), "--json", database_url=empty_sqlite_url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert len(report["added"]) >= 60
    assert report["updated"] == []
    assert report["unchanged"] == 0
    edited = tmp_path / "faq.jsonl"
    lines = (SAMPLE_KB / "faq.jsonl").read_text(encoding="utf-8").splitlines()
    entry = json.loads(lines[0])
    entry["answer"] += " (Updated.)"
    edited.write_text("\n".join([json.dumps(entry), *lines[1:]]) + "\n", encoding="utf-8")
    second = run_cli("kb", "ingest", str(edited), "--json", database_url=empty_sqlite_url, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == {"added": [], "updated": [entry["id"]], "unchanged": len(lines) - 1}


def test_ingest_of_a_broken_file_fails_clearly(tmp_path: Path, empty_sqlite_url: str) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "faq-x", "question": "Q", "answer": "A"}\n{oops\n', encoding="utf-8")
    result = run_cli("kb", "ingest", str(broken), database_url=empty_sqlite_url, cwd=tmp_path)
    assert result.returncode == 1
    assert "broken.jsonl:2" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("admin", [False, True])
def test_keys_create_prints_the_key_once(tmp_path: Path, empty_sqlite_url: str, admin: bool) -> None:
    args = ["keys", "create", "--name", "shop-frontend", "--json", *(["--admin"] if admin else [])]
    result = run_cli(*args, database_url=empty_sqlite_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["key"].startswith("hl_")
    assert created["admin"] is admin
    database = Path(empty_sqlite_url.split("///", 1)[1]).read_bytes()
    assert created["key"].encode() not in database


def test_production_settings_refuse_to_start(tmp_path: Path) -> None:
    env = {**os.environ, "HELPLINE_ENV": "production", "HELPLINE_DATABASE_URL": "sqlite+aiosqlite:///x.db"}
    env.pop("HELPLINE_ADMIN_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "helpline", "db", "upgrade"], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "SQLite" in result.stderr
    assert "ADMIN_TOKEN is not set" in result.stderr


async def test_kb_ingest_removes_the_cached_answers_of_the_documents_it_changed(
    tmp_path: Path, sqlite_url: str, embedder: Embedder
) -> None:
    """A replica started after `helpline kb ingest` loads the new versions, so it never sees a change to
    invalidate: the ingest itself must remove the answers drawn from the old text from the shared cache, or they
    are served for the whole TTL (found by a review, session 7)."""
    tenant = "t" + secrets.token_hex(6)
    settings = make_settings(sqlite_url, redis_url="redis://127.0.0.1:6379/0", tenant=tenant, kb_refresh_s=3600)
    question, once = "How long does delivery take?", "How fast is express delivery?"
    old = FakeProvider(name="gemini", model="old", default=FakeReply(text="Standard delivery takes one to two days."))
    async with running_api(settings, embedder, [old, ExtractiveProvider(0.5)]) as before:
        assert (await ask(before, question))["cache"] == "miss"
        assert (await ask(before, question))["cache"] == "exact"
        assert (await ask(before, question))["cache"] == "exact"  # popular: two hits
        assert (await ask(before, once))["cache"] == "miss"  # asked once: not worth re-warming
    edited = tmp_path / "delivery.md"
    policy = (SAMPLE_KB / "policies" / "delivery.md").read_text(encoding="utf-8")
    changed = policy.replace(
        "standard delivery arrives within 1\N{EN DASH}2 working days", "every order arrives within 2 hours"
    )
    assert changed != policy
    edited.write_text(changed, encoding="utf-8")
    # The ingest asks the popular question again from the new text, through the providers it is configured with.
    with FakeOllama(reply_text=f"Every order arrives within 2 hours.\n<<ACTION=answer; SOURCES={CITED}>>") as ollama:
        result = run_cli(
            "kb", "ingest", str(edited), "--json", database_url=sqlite_url, cwd=tmp_path,
            extra_env={"HELPLINE_REDIS_URL": settings.redis_url, "HELPLINE_TENANT": tenant,
                       "HELPLINE_PROVIDERS": "ollama,extractive", "HELPLINE_OLLAMA_HOST": ollama.base_url},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        chats = [r for r in ollama.requests if r.path == "/api/chat"]
        assert len(chats) == 1  # the popular question only
    assert json.loads(result.stdout)["updated"] == [CITED]
    new = FakeProvider(name="gemini", model="new", default=FakeReply(text="Fresh: within 2 hours."))
    async with running_api(settings, embedder, [new, ExtractiveProvider(0.5)]) as after:
        again = await ask(after, question)
        other = await ask(after, once)
    # Re-warmed by the ingest from the new text: no shopper waits for a provider, none sees the old answer.
    assert (again["cache"], again["reply"], again["provider"]) == ("exact", "Every order arrives within 2 hours.",
                                                                   "ollama")  # fmt: skip
    assert (other["cache"], other["reply"]) == ("miss", "Fresh: within 2 hours.")


async def test_kb_ingest_that_cannot_reach_the_cache_leaves_the_change_to_the_service(
    tmp_path: Path, empty_sqlite_url: str
) -> None:
    first = run_cli("kb", "ingest", str(SAMPLE_KB / "faq.jsonl"), database_url=empty_sqlite_url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    lines = (SAMPLE_KB / "faq.jsonl").read_text(encoding="utf-8").splitlines()
    entry = json.loads(lines[0])
    entry["answer"] += " (Updated.)"
    edited = tmp_path / "faq.jsonl"
    edited.write_text(json.dumps(entry) + "\n", encoding="utf-8")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = run_cli(
        "kb", "ingest", str(edited), database_url=empty_sqlite_url, cwd=tmp_path,
        extra_env={"HELPLINE_REDIS_URL": f"redis://127.0.0.1:{port}/0"},
    )  # fmt: skip
    assert result.returncode == 1
    assert entry["id"] in result.stderr
    assert "serves no cached answer until" in result.stderr
    assert "Traceback" not in result.stderr
    # The change waits in the database's outbox for the service to drain (the first ingest's were drained by
    # nobody either: no cache store was configured for it, and no service has run).
    engine = db.create_engine(empty_sqlite_url)
    try:
        pending = await KnowledgeRepository(db.session_factory(engine)).pending_changes()
    finally:
        await engine.dispose()
    assert entry["id"] in pending.values()
    # The service started for the invalidation is no server: the one-time admin token is left for `serve`.
    assert "admin token" not in result.stderr


async def test_cache_warm_fills_every_faq_answer_including_generic_form_entries(
    tmp_path: Path, sqlite_url: str, embedder: Embedder
) -> None:
    """An FAQ entry may be written in the generic form ({"kind": "faq", "title", "text"}): its title is the
    question. `cache warm` once stopped on such an entry with a KeyError (found by a review, session 8)."""
    tenant = "t" + secrets.token_hex(6)
    settings = make_settings(sqlite_url, redis_url="redis://127.0.0.1:6379/0", tenant=tenant, kb_refresh_s=3600)
    entry = {"id": "faq-dogs", "kind": "faq", "title": "Can I bring my dog to the pick-up point?",
             "text": "Dogs on a lead are welcome at every Greenbasket pick-up point."}  # fmt: skip
    (tmp_path / "dogs.jsonl").write_text(json.dumps(entry) + "\n", encoding="utf-8")
    env = {"HELPLINE_REDIS_URL": settings.redis_url, "HELPLINE_TENANT": tenant}
    ingested = run_cli("kb", "ingest", str(tmp_path / "dogs.jsonl"), database_url=sqlite_url, cwd=tmp_path,
                       extra_env=env)  # fmt: skip
    assert ingested.returncode == 0, ingested.stderr
    faq_entries = len((SAMPLE_KB / "faq.jsonl").read_text(encoding="utf-8").splitlines()) + 1
    reply = "Dogs on a lead are welcome at every pick-up point.\n<<ACTION=answer; SOURCES=faq-dogs>>"
    with FakeOllama(reply_text=reply) as ollama:
        warmed = run_cli(
            "cache", "warm", "--json", database_url=sqlite_url, cwd=tmp_path,
            extra_env={**env, "HELPLINE_PROVIDERS": "ollama,extractive", "HELPLINE_OLLAMA_HOST": ollama.base_url},
        )  # fmt: skip
        assert warmed.returncode == 0, warmed.stderr
        asked = [str(r.body["messages"][-1]["content"]) for r in ollama.requests if r.path == "/api/chat"]
    report = json.loads(warmed.stdout)
    assert report["questions"] == faq_entries
    # Each FAQ question once at most (one already answered by a similar question's warmed answer, or personal,
    # needs no call)
    assert len(asked) == len(set(asked)) <= faq_entries
    assert any(entry["title"] in message for message in asked)
    assert 1 <= report["warmed"] <= faq_entries
    later = FakeProvider(name="gemini", model="later", default=FakeReply(text="Not this one."))
    async with running_api(settings, embedder, [later, ExtractiveProvider(0.5)]) as api:
        served = await ask(api, entry["title"])
    assert (served["cache"], served["reply"]) == ("exact", "Dogs on a lead are welcome at every pick-up point.")
    assert later.requests == []


async def test_cache_reset_removes_every_cached_answer_of_the_store(
    tmp_path: Path, sqlite_url: str, embedder: Embedder
) -> None:
    """The operator's step after restoring the database from a backup: nothing cached before is served after."""
    tenant = "t" + secrets.token_hex(6)
    settings = make_settings(sqlite_url, redis_url="redis://127.0.0.1:6379/0", tenant=tenant, kb_refresh_s=3600)
    question = "How long does delivery take?"
    before = FakeProvider(name="gemini", model="before", default=FakeReply(text="Within two hours."))
    async with running_api(settings, embedder, [before, ExtractiveProvider(0.5)]) as api:
        assert [(await ask(api, question))["cache"] for _ in range(2)] == ["miss", "exact"]
    env = {"HELPLINE_REDIS_URL": settings.redis_url, "HELPLINE_TENANT": tenant}
    reset = run_cli("cache", "reset", "--json", database_url=sqlite_url, cwd=tmp_path, extra_env=env)
    assert reset.returncode == 0, reset.stderr
    assert json.loads(reset.stdout)["removed"] >= 3  # the answer, its index, its tags
    after = FakeProvider(name="gemini", model="after", default=FakeReply(text="One to two working days."))
    async with running_api(settings, embedder, [after, ExtractiveProvider(0.5)]) as api:
        served = await ask(api, question)
    assert (served["cache"], served["reply"]) == ("miss", "One to two working days.")
