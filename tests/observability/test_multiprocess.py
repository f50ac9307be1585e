"""Several workers: one fresh PROMETHEUS_MULTIPROC_DIR, and every scrape shows the sum over all workers."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from helpline.observability import metrics
from tests.deploy.server import child_pids, serving

REDIS_URL = "redis://127.0.0.1:6379/0"

CHATS = 12


def chat_200s(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "helpline_http_requests_total" and sample.labels == {
                "route": "/v1/chat", "method": "POST", "status": "200"
            }:  # fmt: skip
                return sample.value
    return 0.0


def multiproc_dir(server_pid: int) -> Path:
    for pid in child_pids(server_pid):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        for entry in environ:
            if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                return Path(entry.split(b"=", 1)[1].decode())
    raise AssertionError("no worker has PROMETHEUS_MULTIPROC_DIR")


def test_two_workers_share_one_fresh_metrics_directory_and_scrapes_merge_them(tmp_path: Path) -> None:
    shared = {"HELPLINE_REDIS_URL": REDIS_URL, "HELPLINE_TENANT": "t" + secrets.token_hex(6)}
    with serving(tmp_path, "--workers", "2", env=shared) as (base, process):
        directory = multiproc_dir(process.pid)
        assert directory.name.startswith("helpline-metrics-")

        def ask(index: int) -> int:
            with httpx.Client(timeout=30) as client:  # a new connection each: the kernel spreads them over workers
                return client.post(f"{base}/v1/chat", json={"message": f"bananas {index}"}).status_code

        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(ask, range(CHATS))) == [200] * CHATS
        worker_files = {path.stem.rsplit("_", 1)[1] for path in directory.glob("counter_*.db")}
        assert len(worker_files) >= 2, worker_files  # both workers write their own file
        # Whichever worker answers the scrape, it reports the total over both.
        assert [chat_200s(base) for _ in range(6)] == [CHATS] * 6
    assert not directory.exists()  # removed with the server
    # Not a terminal, so JSON: uvicorn's own lines too, and no plain-text access lines beside our summaries.
    lines = [line for line in (tmp_path / "server.log").read_text().splitlines() if line.strip()]
    printed_once = [line for line in lines if "admin token (shown once" in line]  # deliberately not a log line
    parsed = [orjson.loads(line) for line in lines if line not in printed_once]
    assert any(entry["event"] == "Application startup complete." for entry in parsed)
    assert sum(entry["event"] == "request" and entry["route"] == "/v1/chat" for entry in parsed) == CHATS


def test_several_workers_without_redis_are_refused(tmp_path: Path) -> None:
    """Each worker would keep its own cache and limits: a purge would reach one worker, limits would multiply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELPLINE_", "PROMETHEUS_"))}
    result = subprocess.run(
        [sys.executable, "-m", "helpline", "serve", "--port", "9", "--workers", "2"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--workers 2 needs HELPLINE_REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()  # refused before creating the database


def test_one_worker_needs_no_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    assert metrics.prepare_multiprocess(1) is None
    assert metrics.MULTIPROC_ENV not in os.environ


def test_several_workers_get_a_fresh_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    directory = metrics.prepare_multiprocess(3)
    assert directory is not None
    try:
        assert os.environ[metrics.MULTIPROC_ENV] == str(directory)
        assert directory.is_dir()
        assert list(directory.iterdir()) == []
    finally:
        os.environ.pop(metrics.MULTIPROC_ENV, None)  # set by the code under test, not through monkeypatch
        metrics._remove_tree(directory)


def test_an_operator_directory_is_kept_but_emptied_of_earlier_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("not ours")
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    assert metrics.prepare_multiprocess(2) == tmp_path
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


def test_a_worker_killed_outright_stops_counting_in_live_gauges(tmp_path: Path) -> None:
    """A worker that dies without its exit handler (here ``os._exit``, as after SIGKILL) leaves its live gauge
    files; the scrape drops them, so its last backlog does not hold the alert on for good. A live worker's stay."""
    script = (
        "import os, sys\n"
        "from helpline.observability import metrics\n"
        "metrics.set_conversation_backlog(int(sys.argv[1]))\n"
        "if sys.argv[2] == 'die':\n"
        "    os._exit(0)\n"
        "sys.stdin.read()\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script, "9000", "die"], env=env, check=True, timeout=60)  # noqa: S603
    alive = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", script, "40", "live"], env=env, stdin=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("gauge_livemax_*.db"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # the live worker has set its gauge
        assert len(list(tmp_path.glob("gauge_livemax_*.db"))) == 2
        metrics.forget_dead_workers(tmp_path)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
        assert registry.get_sample_value("helpline_conversation_write_backlog") == 40
    finally:
        alive.communicate("", timeout=60)
