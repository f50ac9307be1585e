"""A cached `/v1/chat` end to end at 32 concurrent clients on one worker, against `/healthz` in the same run.

Run: `.venv/bin/python -m bench.cache` (needs `wrk`, Debian package `wrk`). The server is `helpline serve` with one
worker, Gemini aimed at the stand-in of tests/fakes (so answers are cacheable), limits raised out of the way, the
embedded SQLite store, the production log level. The question is asked once (a miss), then 32 connections repeat
it in ROUNDS rounds of DURATION_S seconds, interleaved with `/healthz`: every request is an exact hit that is still
recorded as a conversation, which this script checks afterwards. Two setups, each against its own `/healthz`: the
embedded default (cache and limiter in process) and Redis (cache and limiter in the local Redis, as replicas
share them). Besides rates and latencies it reads the server's CPU time per request from /proc: the whole process,
and its main thread alone (the event loop, which is what saturates on one worker).

Latency is read twice. At saturation (the rounds above) every connection always has a request waiting, so the
p50 is fixed by the rate: p50 ≈ connections ÷ throughput (Little's law), the throughput ratio in other units.
So it is also read paced: the same 32 connections as 32 shoppers who pause between questions (exponentially
distributed think time, so they do not fire in step), at offered rates that are shares of `/healthz`'s peak rate
in the same run, up to half of it (the rate the throughput goal asks a hit to carry). The think time is
calibrated in up to four short passes to hit each rate; the achieved rate is printed beside the offered one, so
a rate a setup cannot carry shows as such.
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
from typing import Any

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
PACED_SHARES = (0.1, 0.25, 0.4, 0.5)  # of /healthz's peak rate; 0.5 is the throughput goal
CALIBRATION_S = 2
CALIBRATION_PASSES = 4
DAMPING = 0.6
ADMIN = "bench-admin-token-0123456789abcdef"
LUA = f"""wrk.method = "POST"
wrk.body = '{{"message": "{QUESTION}"}}'
wrk.headers["Content-Type"] = "application/json"
"""
# Exponential think time before each request (wrk calls delay() per request; its mean in ms is filled in).
THINK = """math.randomseed(os.time())
function delay()
  return -{mean_ms} * math.log(1 - math.random())
end
"""
_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_TOTAL = re.compile(r"(\d+) requests in")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def wrk(base: str, path: str, script: Path | None, pid: int, seconds: float = DURATION_S) -> dict[str, float]:
    """One wrk run; ``cpu_us`` is the server's CPU time per request, its writing process's included (less sensitive
    to a noisy neighbour than the rate, since it does not count the time the server waited for a core)."""
    args = ["wrk", f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency"]
    args += ["-s", str(script)] if script else []
    cpu_before, loop_before = cpu_seconds(pid, children=True), cpu_seconds(pid, main_thread=True)
    output = subprocess.run([*args, base + path], capture_output=True, text=True, check=True).stdout  # noqa: S603
    cpu = cpu_seconds(pid, children=True) - cpu_before
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


def paced(base: str, path: str, body_script: str, pid: int, *, rate: float, workdir: Path) -> dict[str, float]:
    """32 connections with exponential think time, calibrated so that together they offer ``rate`` requests a
    second: with think time T and mean time per request W (latency and client), each connection sends 1/(T + W)
    a second, so T + W = connections/rate; each pass moves T by the gap it measured (up to CALIBRATION_PASSES,
    fewer once a pass lands within 5 % of ``rate``). Returns the measured pass, with the requests of the
    calibration passes added to ``requests`` and ``errors`` (they were answered and recorded too)."""
    script = workdir / "paced.lua"

    def run_for(seconds: float) -> dict[str, float]:
        script.write_text(body_script + THINK.format(mean_ms=f"{think_s * 1000:.3f}"), encoding="utf-8")
        return wrk(base, path, script, pid, seconds)

    think_s = CONNECTIONS / rate  # the first guess: no time in the server at all
    calibration = {"requests": 0.0, "errors": 0.0}
    for _ in range(CALIBRATION_PASSES):
        run = run_for(CALIBRATION_S)
        calibration = {key: calibration[key] + run[key] for key in calibration}
        if abs(run["rps"] / rate - 1) < 0.05:
            break
        # T + W = connections / rate: move T by the gap, damped (W grows with the rate near saturation, so the
        # full step overshoots and oscillates).
        think_s = max(0.0, think_s + DAMPING * (CONNECTIONS / rate - CONNECTIONS / run["rps"]))
    run = run_for(DURATION_S)
    totals = {key: run[key] + calibration[key] for key in calibration}
    return {**run, **totals, "target": rate, "think_ms": think_s * 1000}


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


def measure(setup: Setup, workdir: Path) -> dict[str, Any]:
    with server_process(workdir, setup.env) as (base, pid):
        first = httpx.post(f"{base}/v1/chat", json={"message": QUESTION}, timeout=30).json()
        assert (first["cache"], first["provider"]) == ("miss", "gemini"), first
        assert httpx.post(f"{base}/v1/chat", json={"message": QUESTION}, timeout=30).json()["cache"] == "exact"
        post = workdir / "post.lua"
        post.write_text(LUA, encoding="utf-8")
        before, hits_before = stats(base), exact_hits(base)
        runs: dict[str, list[dict[str, float]]] = {"health": [], "cached": []}
        for _ in range(ROUNDS):  # interleaved: a noisy neighbour slows both, not one of them
            runs["health"].append(wrk(base, "/healthz", None, pid))
            runs["cached"].append(wrk(base, "/v1/chat", post, pid))
        health, cached = combine(runs["health"]), combine(runs["cached"])
        sweep: list[dict[str, Any]] = []
        for share in PACED_SHARES:
            rate = share * health["rps"]
            sweep.append({
                "share": share,
                "health": paced(base, "/healthz", "", pid, rate=rate, workdir=workdir),
                "cached": paced(base, "/v1/chat", LUA, pid, rate=rate, workdir=workdir),
            })  # fmt: skip
        time.sleep(1.0)  # the write-behind queue drains
        cached["recorded"] = float(stats(base) - before)
        cached["exact_hits"] = exact_hits(base) - hits_before
    answered = cached["requests"] + sum(point["cached"]["requests"] for point in sweep)
    errors = cached["errors"] + sum(point["cached"]["errors"] for point in sweep)
    assert errors == 0, (cached, sweep)
    assert cached["recorded"] >= answered, (cached, answered)  # every hit is in the conversation store
    # and every conversation recorded meanwhile (wrk's, and the paced points' calibration passes) was an exact hit:
    # a bypassed cache (a store call timed out) sends them to the provider instead
    assert cached["exact_hits"] == cached["recorded"], cached
    return {"health": health, "cached": cached, "sweep": sweep, "answered": answered}


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, FakeGemini(reply_text=REPLY) as gemini:
        for number, setup in enumerate(setups(gemini.base_url)):
            workdir = Path(tmp) / f"setup{number}"
            workdir.mkdir()
            results[setup.name] = measure(setup, workdir)
    print(
        f"Saturated: one worker, {CONNECTIONS} connections, {ROUNDS} interleaved rounds of {DURATION_S} s per endpoint "
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
    print(
        f"\nPaced: the same {CONNECTIONS} connections with exponential think time, at shares of /healthz's peak rate "
        f"above (each calibrated in up to {CALIBRATION_PASSES} passes of {CALIBRATION_S} s, then {DURATION_S} s "
        "measured; latencies in ms)"
    )
    print(
        "| setup | share of /healthz peak | offered req/s | /healthz achieved | /healthz p50 | /healthz p99 "
        "| hit achieved | hit p50 | hit p99 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        for point in rows["sweep"]:
            health, cached = point["health"], point["cached"]
            print(
                f"| {name} | {point['share']:g} | {health['target']:.0f} | {health['rps']:.0f} | {health['p50']:.2f} "
                f"| {health['p99']:.2f} | {cached['rps']:.0f} | {cached['p50']:.2f} | {cached['p99']:.2f} |"
            )
    for name, rows in results.items():
        print(f"{name}: {rows['answered']:.0f} cached answers, {rows['cached']['recorded']:.0f} conversations recorded")


def exact_hits(base: str) -> float:
    """Replies the server answered from the exact cache tier so far (its /metrics)."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    found = re.search(r'^helpline_cache_lookups_total\{tier="exact"\} ([0-9.e+]+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def stats(base: str) -> int:
    response = httpx.get(f"{base}/v1/admin/stats", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
    count: int = json.loads(response.text)["conversations"]
    return count


if __name__ == "__main__":
    main()
