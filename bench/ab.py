"""A/B of two builds end to end: a cached `/v1/chat` against `/healthz`, both builds served at once, alternating.

Run: `.venv/bin/python -m bench.ab BASE NEW [--setup redis|embedded] [--rounds 6] [--seconds 3]`, BASE and NEW
git revisions (checked out into temporary worktrees) or source directories (a `src` inside is used). Needs `wrk`.

Why: on these shared 2-core machines a build's rate moves by ±15 % from one minute to the next, so two runs of
bench.cache minutes apart cannot tell a 5 % change. Here both builds run the same bench.cache server (setup,
question, 32 connections) side by side; each round starts both servers afresh, then measures `/healthz` and a hit
on one build, then on the other (the order alternates), so a slow moment hits both. Printed: medians over the
rounds of the rates, the throughput ratio, the server's main-thread CPU per hit and per `/healthz`, its
whole-process CPU per hit (/proc), Redis's CPU per hit, and the paired per-round difference of the ratio
(NEW - BASE) with how many rounds NEW won.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
from tests.fakes.gemini import FakeGemini
from tests.test_serve import serving

from bench.cache import LUA, QUESTION, REPLY, setups, wrk
from bench.common import ROOT, cpu_seconds


@contextlib.contextmanager
def source(spec: str, workdir: Path) -> Iterator[Path]:
    """The `src` directory of a source tree, or of a git revision checked out into a temporary worktree."""
    given = Path(spec)
    if given.is_dir():
        yield given / "src" if (given / "src").is_dir() else given
        return
    tree = workdir / f"tree-{len(list(workdir.iterdir()))}"
    git = ["git", "-C", str(ROOT)]
    subprocess.run([*git, "worktree", "add", "--detach", "--quiet", str(tree), spec], check=True)  # noqa: S603
    try:
        yield tree / "src"
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=True)  # noqa: S603


def redis_pid() -> int | None:
    """The local Redis server's process (the oldest redis-server: the one on 6379 starts first), for its CPU."""
    found = sorted(int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _comm(d) == "redis-server")
    return found[0] if found else None


def _comm(process: Path) -> str:
    try:
        return (process / "comm").read_text(encoding="utf-8").strip()
    except OSError:  # gone meanwhile
        return ""


@contextlib.contextmanager
def started(src: Path, env: dict[str, str], home: Path) -> Iterator[tuple[str, int]]:
    """bench.cache's server on the build in ``src``, its cache filled with the question's answer."""
    home.mkdir()
    # serving() starts from this process's environment and adds ``env``: the server imports this build.
    with serving(home, {**env, "PYTHONPATH": str(src)}, quiet=True) as (base_url, process):
        for _ in range(2):  # the miss that fills the cache, then a hit
            httpx.post(f"{base_url}/v1/chat", json={"message": QUESTION}, timeout=30).raise_for_status()
        yield base_url, process.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base")
    parser.add_argument("new")
    parser.add_argument("--setup", choices=["embedded", "redis"], default="redis")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    options = parser.parse_args()
    redis = redis_pid()
    builds = (("base", options.base), ("new", options.new))
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, _ in builds}
    with tempfile.TemporaryDirectory() as tmp, FakeGemini(reply_text=REPLY) as gemini, contextlib.ExitStack() as stack:
        trees, work = Path(tmp, "trees"), Path(tmp, "work")
        trees.mkdir()
        work.mkdir()
        setup = setups(gemini.base_url)[0 if options.setup == "embedded" else 1]
        sources = {name: stack.enter_context(source(spec, trees)) for name, spec in builds}
        script = work / "post.lua"
        script.write_text(LUA, encoding="utf-8")
        for number in range(options.rounds):
            # Fresh servers every round: one process can run a few per cent faster than another on the same code
            # for its whole life (where it landed), which alternation alone does not cancel.
            with contextlib.ExitStack() as round_servers:
                servers = []
                for name, _ in builds:
                    env = dict(setup.env)
                    if "HELPLINE_TENANT" in env:
                        env["HELPLINE_TENANT"] += f"-{name}{number}"  # its own keys on the shared Redis
                    base_url, pid = round_servers.enter_context(started(sources[name], env, work / f"{name}{number}"))
                    wrk(base_url, "/v1/chat", script, pid, 1.0)  # warm
                    servers.append((name, base_url, pid))
                for name, base_url, pid in servers if number % 2 == 0 else servers[::-1]:
                    health = wrk(base_url, "/healthz", None, pid, options.seconds)
                    redis_before = cpu_seconds(redis) if redis else 0.0
                    hit = wrk(base_url, "/v1/chat", script, pid, options.seconds)
                    redis_us = (cpu_seconds(redis) - redis_before) / max(hit["requests"], 1.0) * 1e6 if redis else 0.0
                    assert hit["errors"] == 0, hit
                    rows[name].append({
                        "health": health["rps"], "hit": hit["rps"], "ratio": hit["rps"] / health["rps"],
                        "main_us": hit["loop_us"], "cpu_us": hit["cpu_us"], "redis_us": redis_us,
                        "health_main_us": health["loop_us"],
                    })  # fmt: skip
    print(f"{setup.name}: {options.rounds} alternating rounds of {options.seconds:g} s per endpoint, medians")
    print("| build | /healthz req/s | hit req/s | ratio | hit main-thread µs | /healthz main-thread µs | hit CPU µs "
          "| Redis CPU µs/hit |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, spec in builds:
        runs = rows[name]

        def median(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(run[key] for run in runs)

        print(
            f"| {name} ({spec}) | {median('health'):.0f} | {median('hit'):.0f} | {median('ratio'):.3f} "
            f"| {median('main_us'):.0f} | {median('health_main_us'):.0f} | {median('cpu_us'):.0f} "
            f"| {median('redis_us'):.0f} |"
        )
    paired = [new["ratio"] - base["ratio"] for base, new in zip(rows["base"], rows["new"], strict=True)]
    print(
        f"ratio, new - base per round: median {statistics.median(paired):+.3f}; "
        f"new higher in {sum(delta > 0 for delta in paired)} of {len(paired)} rounds"
    )


if __name__ == "__main__":
    main()
