"""The CLI as users run it: a real subprocess against a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_KB


@pytest.fixture
def empty_sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"


def run_cli(*args: str, database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELPLINE_DATABASE_URL": database_url, "HELPLINE_ENV": "development"}
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
