"""A cached `/v1/chat` end to end at 32 concurrent clients on one worker, against `/healthz` in the same run.

Run: `.venv/bin/python -m bench.cache` (needs `wrk`, Debian package `wrk`). The server is `helpline serve` with one
worker, Gemini aimed at the stand-in of tests/fakes (so answers are cacheable), limits raised out of the way, the
embedded SQLite store, the production log level. The question is asked once (a miss), then 32 connections repeat
it in ROUNDS rounds of DURATION_S seconds, interleaved with `/healthz`: every request is an exact hit that is still
recorded as a conversation, which this script checks afterwards. Two setups, each against its own `/healthz`: the
embedded default (cache and limiter in process) and Redis (cache and limiter in the local Redis, as replicas
share them). Besides rates and latencies it reads the server's CPU time per request from /proc: the whole process,
and its main thread alone (the event loop, which is what saturates on one worker).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from tests.fakes.gemini import FakeGemini

from bench.common import cpu_seconds, server_process

QUESTION = "How long does delivery take?"
REPLY = "Standard delivery takes one to two working days.\n<<ACTION=answer; SOURCES=policy-delivery.delivery-times>>"
CONNECTIONS = 32
# One load-generator thread: 32 connections need no more, and the server keeps more of the 2 shared cores.
WRK_THREADS = 1
REDIS_URL = "redis://127.0.0.1:6379/0"
DURATION_S = 5
ROUNDS = 3
ADMIN = "bench-admin-token-0123456789abcdef"
LUA = f"""wrk.method = "POST"
wrk.body = '{{"message": "{QUESTION}"}}'
wrk.headers["Content-Type"] = "application/json"
"""
_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_TOTAL = re.compile(r"(\d+) requests in")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def wrk(base: str, path: str, script: Path | None, pid: int) -> dict[str, float]:
    """One wrk run; ``cpu_us`` is the server's CPU time per request (less sensitive to a noisy neighbour than the
    rate, since it does not count the time the server waited for a core)."""
    args = ["wrk", f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{DURATION_S}s", "--latency"]
    args += ["-s", str(script)] if script else []
    cpu_before, loop_before = cpu_seconds(pid), cpu_seconds(pid, main_thread=True)
    output = subprocess.run([*args, base + path], capture_output=True, text=True, check=True).stdout  # noqa: S603
    cpu = cpu_seconds(pid) - cpu_before
    loop = cpu_seconds(pid, main_thread=True) - loop_before
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency = {f"p{q}": float(v) * scale[unit] for q, v, unit in _LATENCY.findall(output)}
    non_2xx = _NON_2XX.search(output)
    requests = float(_TOTAL.search(output).group(1))  # type: ignore[union-attr]
    return {
        **latency,
        "rps": float(_RPS.search(output).group(1)),  # type: ignore[union-attr]
        "requests": requests,
        "errors": float(non_2xx.group(1)) if non_2xx else 0.0,
        "cpu_us": cpu / max(requests, 1.0) * 1e6,
        "loop_us": loop / max(requests, 1.0) * 1e6,
    }


def combine(runs: list[dict[str, float]]) -> dict[str, float]:
    """Medians of rate and latency over the rounds; totals of requests and errors."""
    median = {key: statistics.median(run[key] for run in runs) for key in ("rps", "p50", "p99", "cpu_us", "loop_us")}
    return {**median, "requests": sum(run["requests"] for run in runs), "errors": sum(run["errors"] for run in runs)}


@dataclass(frozen=True)
class Setup:
    name: str
    env: dict[str, str]


def setups(gemini_url: str) -> list[Setup]:
    common = {
        "HELPLINE_PROVIDERS": "gemini,extractive", "HELPLINE_GEMINI_API_KEY": "bench-gemini-key",
        "HELPLINE_GEMINI_BASE_URL": gemini_url, "HELPLINE_RATE_LIMIT_IP": "1000000/second",
        "HELPLINE_RATE_LIMIT_SESSION": "1000000/second", "HELPLINE_ADMIN_TOKEN": ADMIN,
        # The production log level: every chat request writes its JSON summary line (probes log at debug).
        "HELPLINE_LOG_LEVEL": "INFO",
    }  # fmt: skip
    tenant = "bench" + secrets.token_hex(4)  # a shared Redis: keys of this run only
    return [
        Setup("embedded: in-process cache and limiter", common),
        Setup(
            "Redis: cache and limiter in Redis", {**common, "HELPLINE_REDIS_URL": REDIS_URL, "HELPLINE_TENANT": tenant}
        ),
    ]


def measure(setup: Setup, script: Path, workdir: Path) -> dict[str, dict[str, float]]:
    with server_process(workdir, setup.env) as (base, pid):
        first = httpx.post(f"{base}/v1/chat", json={"message": QUESTION}, timeout=30).json()
        assert (first["cache"], first["provider"]) == ("miss", "gemini"), first
        assert httpx.post(f"{base}/v1/chat", json={"message": QUESTION}, timeout=30).json()["cache"] == "exact"
        before = stats(base)
        runs: dict[str, list[dict[str, float]]] = {"health": [], "cached": []}
        for _ in range(ROUNDS):  # interleaved: a noisy neighbour slows both, not one of them
            runs["health"].append(wrk(base, "/healthz", None, pid))
            runs["cached"].append(wrk(base, "/v1/chat", script, pid))
        health, cached = combine(runs["health"]), combine(runs["cached"])
        time.sleep(1.0)  # the write-behind queue drains
        cached["recorded"] = float(stats(base) - before)
    assert cached["errors"] == 0, cached
    assert cached["recorded"] >= cached["requests"], cached  # every hit is in the conversation store
    return {"health": health, "cached": cached}


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, FakeGemini(reply_text=REPLY) as gemini:
        script = Path(tmp) / "post.lua"
        script.write_text(LUA, encoding="utf-8")
        for number, setup in enumerate(setups(gemini.base_url)):
            workdir = Path(tmp) / f"setup{number}"
            workdir.mkdir()
            results[setup.name] = measure(setup, script, workdir)
    print(
        f"one worker, {CONNECTIONS} connections, {ROUNDS} interleaved rounds of {DURATION_S} s per endpoint "
        f"(wrk -t{WRK_THREADS}, medians), log level INFO"
    )
    print(
        "| setup | endpoint | req/s | p50 ms | p99 ms | non-2xx | server CPU µs/request | of which main thread "
        "| throughput ratio | cost ratio (/healthz CPU ÷ this CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        health, cached = rows["health"], rows["cached"]
        for label, row in (("GET /healthz (baseline)", health), ("POST /v1/chat, exact hit", cached)):
            print(
                f"| {name} | {label} | {row['rps']:.0f} | {row['p50']:.2f} | {row['p99']:.2f} | {row['errors']:.0f} "
                f"| {row['cpu_us']:.0f} | {row['loop_us']:.0f} | {row['rps'] / health['rps']:.2f} "
                f"| {health['cpu_us'] / row['cpu_us']:.2f} |"
            )
    for name, rows in results.items():
        cached = rows["cached"]
        print(f"{name}: {cached['requests']:.0f} cached answers, {cached['recorded']:.0f} conversations recorded")


def stats(base: str) -> int:
    response = httpx.get(f"{base}/v1/admin/stats", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
    count: int = json.loads(response.text)["conversations"]
    return count


if __name__ == "__main__":
    main()
