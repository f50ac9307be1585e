"""SIGTERM under load (what Docker and the blue-green switch send): no accepted conversation is lost.

~20 chats are in flight when the server is told to stop. uvicorn stops accepting, lets the in-flight requests
finish (``timeout_graceful_shutdown`` in cli.py), then runs the lifespan shutdown. Every request that got a 200 must
have its conversation row in the database afterwards: a reply the shopper saw is always on record.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.deploy.server import serving

CONCURRENT = 20
# Long questions make each reply take a while (embedding, retrieval), so most are still in flight at SIGTERM.
QUESTION = "How long does delivery take and what does it cost to deliver to my address? " * 25


@dataclass
class Outcome:
    status: int | None
    message_id: str | None
    finished_at: float
    error: str = ""


def ask(base: str, index: int, first_done: threading.Event) -> Outcome:
    try:
        response = httpx.post(f"{base}/v1/chat", json={"message": f"{index} {QUESTION}"[:2000]}, timeout=60)
    except httpx.TransportError as error:
        return Outcome(None, None, time.monotonic(), type(error).__name__)
    finally:
        first_done.set()
    message_id = response.json().get("message_id") if response.status_code == 200 else None
    return Outcome(response.status_code, message_id, time.monotonic())


def stored_message_ids(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        return {row[0] for row in connection.execute("SELECT message_id FROM conversations")}


def test_sigterm_drains_in_flight_chats_and_loses_no_accepted_conversation(tmp_path: Path) -> None:
    first_done = threading.Event()
    with serving(tmp_path) as (base, process), ThreadPoolExecutor(CONCURRENT) as pool:
        futures = [pool.submit(ask, base, index, first_done) for index in range(CONCURRENT)]
        assert first_done.wait(timeout=30)
        process.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        outcomes = [future.result(timeout=60) for future in futures]
        # uvicorn re-raises the signal after a clean shutdown, so the exit status is "killed by SIGTERM".
        assert process.wait(timeout=40) in (0, -signal.SIGTERM)
    answered = [outcome for outcome in outcomes if outcome.status == 200]
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert "Application shutdown complete" in log, log[-3000:]
    assert len(answered) >= CONCURRENT // 2, (outcomes, log[-3000:])
    # The drain really happened: replies were still being sent after the signal.
    assert any(outcome.finished_at > signalled_at for outcome in answered), outcomes
    assert all(outcome.status in (200, None) for outcome in outcomes), outcomes
    missing = {outcome.message_id for outcome in answered} - stored_message_ids(tmp_path / "var" / "helpline.db")
    assert not missing, f"accepted conversations lost at shutdown: {missing}"
