"""Small helpers shared by the benchmarks: percentiles and a bounded async HTTP load loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from tests.test_serve import serving

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)


async def load(
    base: str,
    method: str,
    path: str,
    *,
    json: object | None = None,
    concurrency: int = 16,
    seconds: float = 5.0,
    max_requests: int = 100_000,
) -> LoadResult:
    """Closed-loop load: ``concurrency`` clients send back-to-back for ``seconds`` (bounded in count too)."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal errors, sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                started = time.perf_counter()
                response = await client.request(method, path, json=json)
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return LoadResult(len(latencies), errors, elapsed, latencies)


@contextmanager
def server(workdir: Path, env_extra: dict[str, str] | None = None) -> Iterator[str]:
    """`helpline serve` (one worker) on a free port with the embedded defaults in ``workdir``."""
    with server_process(workdir, env_extra) as (base, _pid):
        yield base


@contextmanager
def server_process(workdir: Path, env_extra: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """As :func:`server`, with the server's process id (one worker serves in that process)."""
    env = {"HELPLINE_LOG_LEVEL": "WARNING", **(env_extra or {})}
    with serving(workdir, env, quiet=True) as (base, process):
        yield base, process.pid


def cpu_seconds(pid: int, *, main_thread: bool = False, children: bool = False) -> float:
    """User + system CPU time a process has used so far: all its threads, or only its main thread (the event loop
    of a uvicorn worker, what saturates first) with ``main_thread`` (Linux /proc). With ``children``, its child
    processes' too, running or ended (SQLite's writing process, see ``store.sqlite_writer``)."""
    path = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
    fields = Path(path).read_text(encoding="ascii").rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])  # children already waited for
    seconds = ticks / os.sysconf("SC_CLK_TCK")
    if children:
        for child in _children(pid):
            with contextlib.suppress(OSError):  # ended meanwhile
                seconds += cpu_seconds(child, children=True)
    return seconds


def _children(pid: int) -> set[int]:
    """The running child processes of ``pid`` (of any of its threads)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found.update(int(child) for child in (task / "children").read_text(encoding="ascii").split())
    return found
