"""A cached `/v1/chat` end to end at 32 concurrent clients on one worker, against `/healthz` in the same run.

Run: `.venv/bin/python -m bench.cache` (needs `wrk`, Debian package `wrk`). The server is `helpline serve` with one
worker, Gemini aimed at the stand-in of tests/fakes (so answers are cacheable), limits raised out of the way, the
embedded SQLite store. The question is asked once (a miss), then 32 connections repeat it for DURATION seconds:
every request is an exact hit that is still recorded as a conversation, which this script checks afterwards.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from tests.fakes.gemini import FakeGemini

from bench.common import server

QUESTION = "How long does delivery take?"
REPLY = "Standard delivery takes one to two working days.\n<<ACTION=answer; SOURCES=policy-delivery.delivery-times>>"
CONNECTIONS = 32
DURATION_S = 10
ADMIN = "bench-admin-token-0123456789abcdef"
LUA = f"""wrk.method = "POST"
wrk.body = '{{"message": "{QUESTION}"}}'
wrk.headers["Content-Type"] = "application/json"
"""
_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_TOTAL = re.compile(r"(\d+) requests in")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def wrk(base: str, path: str, script: Path | None) -> dict[str, float]:
    args = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{DURATION_S}s", "--latency"]
    args += ["-s", str(script)] if script else []
    output = subprocess.run([*args, base + path], capture_output=True, text=True, check=True).stdout  # noqa: S603
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency = {f"p{q}": float(v) * scale[unit] for q, v, unit in _LATENCY.findall(output)}
    non_2xx = _NON_2XX.search(output)
    return {
        **latency,
        "rps": float(_RPS.search(output).group(1)),  # type: ignore[union-attr]
        "requests": float(_TOTAL.search(output).group(1)),  # type: ignore[union-attr]
        "errors": float(non_2xx.group(1)) if non_2xx else 0.0,
    }


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp, FakeGemini(reply_text=REPLY) as gemini:
        env = {
            "HELPLINE_PROVIDERS": "gemini,extractive", "HELPLINE_GEMINI_API_KEY": "bench-gemini-key",
            "HELPLINE_GEMINI_BASE_URL": gemini.base_url, "HELPLINE_RATE_LIMIT_IP": "1000000/second",
            "HELPLINE_RATE_LIMIT_SESSION": "1000000/second", "HELPLINE_ADMIN_TOKEN": ADMIN,
        }  # fmt: skip
        script = Path(tmp) / "post.lua"
        script.write_text(LUA, encoding="utf-8")
        with server(Path(tmp), env) as base:
            first = httpx.post(f"{base}/v1/chat", json={"message": QUESTION}, timeout=30).json()
            assert (first["cache"], first["provider"]) == ("miss", "gemini"), first
            assert httpx.post(f"{base}/v1/chat", json={"message": QUESTION}, timeout=30).json()["cache"] == "exact"
            before = stats(base)
            health = wrk(base, "/healthz", None)
            cached = wrk(base, "/v1/chat", script)
            time.sleep(1.0)  # the write-behind queue drains
            recorded = stats(base) - before
    print(f"one worker, {CONNECTIONS} connections, {DURATION_S} s each (wrk)")
    print("| endpoint | req/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---|---|---|")
    for name, row in (("GET /healthz (baseline)", health), ("POST /v1/chat, exact hit", cached)):
        print(f"| {name} | {row['rps']:.0f} | {row['p50']:.2f} | {row['p99']:.2f} | {row['errors']:.0f} |")
    print(f"throughput ratio chat/healthz: {cached['rps'] / health['rps']:.2f}")
    print(f"cached requests answered: {cached['requests']:.0f}; conversations recorded for them: {recorded}")


def stats(base: str) -> int:
    response = httpx.get(f"{base}/v1/admin/stats", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
    count: int = json.loads(response.text)["conversations"]
    return count


if __name__ == "__main__":
    main()
