"""Exact limits across processes: `helpline serve --workers 4` behind one Redis (single node and cluster).

200 concurrent requests from one address with 5/minute: exactly 5 answered, 195 refused with 429; the same with
one user key at 20/hour: exactly 20. And a 1001st concurrent request is refused while 1000 leases are held by four
independent limiter instances (four replicas' worth of clients).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from helpline.ratelimit.redis import RedisLimiter
from helpline.redisconn import create_redis
from tests.fakes.servers import free_port
from tests.ratelimit.conftest import REDIS_URL, delete_prefix, unique_prefix

WORKERS = 4
CONCURRENT = 200
STARTUP_TIMEOUT_S = 45.0


@dataclass
class Server:
    base: str
    env: dict[str, str]
    redis_url: str
    log: Path


def server_env(tmp_path: Path, redis_url: str, prefix: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HELPLINE_")}
    env.update(
        {
            "HELPLINE_ENV": "test",
            "HELPLINE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'helpline.db'}",
            "HELPLINE_REDIS_URL": redis_url,
            "HELPLINE_TENANT": prefix,
            "HELPLINE_RATE_LIMIT_IP": "5/minute",
            "HELPLINE_RATE_LIMIT_USER": "20/hour",
            "HELPLINE_PROVIDERS": "extractive",
            "HELPLINE_KB_LOAD_SAMPLE_WHEN_EMPTY": "false",
            "HELPLINE_ADMIN_TOKEN": "exactness-admin-token-0123456789",
            "HELPLINE_LOG_JSON": "true",
        }
    )
    return env


def wait_for_workers(log: Path, process: subprocess.Popen[bytes]) -> None:
    """Every worker must be serving, or the test would prove less than it claims."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        if log.read_text().count("Application startup complete") >= WORKERS:
            return
        time.sleep(0.2)
    raise AssertionError(f"{WORKERS} workers did not start: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module", params=["redis", "cluster"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    redis_url = REDIS_URL if request.param == "redis" else request.getfixturevalue("redis_cluster_url")
    tmp_path = tmp_path_factory.mktemp(f"exact-{request.param}")
    prefix = "t" + secrets.token_hex(6)
    env = server_env(tmp_path, redis_url, prefix)
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "helpline", "serve", "--port", str(port), "--workers", str(WORKERS)],
            cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_workers(log, process)
        yield Server(f"http://127.0.0.1:{port}", env, redis_url, log)
    finally:
        process.terminate()
        process.wait(timeout=30)
        asyncio.run(_cleanup(redis_url, "hl:rl:{" + prefix + ":rl}:"))


async def _cleanup(redis_url: str, prefix: str) -> None:
    client = create_redis(redis_url)
    try:
        await delete_prefix(client, prefix)
    finally:
        await client.aclose()


async def burst(base: str, headers: dict[str, str] | None = None) -> Counter[int]:
    limits = httpx.Limits(max_connections=CONCURRENT, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        responses = await asyncio.gather(
            *(
                client.post("/v1/chat", json={"message": f"Do you deliver on Sunday? ({n})"}, headers=headers)
                for n in range(CONCURRENT)
            )
        )
    for response in responses:
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "rate_limited"
            assert int(response.headers["retry-after"]) >= 1
    return Counter(response.status_code for response in responses)


async def test_exactly_5_of_200_concurrent_requests_from_one_address(server: Server) -> None:
    assert await burst(server.base) == Counter({200: 5, 429: CONCURRENT - 5})
    assert "ratelimit_redis_unavailable" not in server.log.read_text()  # decided by Redis, not by a fallback


async def test_exactly_20_of_200_concurrent_requests_with_one_user_key(server: Server) -> None:
    created = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "helpline", "keys", "create", "--name", "exactness", "--json"],
        env=server.env, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    key = orjson.loads(created.stdout)["key"]
    assert await burst(server.base, {"authorization": f"Bearer {key}"}) == Counter({200: 20, 429: CONCURRENT - 20})
    assert "ratelimit_redis_unavailable" not in server.log.read_text()


async def test_the_1001st_lease_is_refused_across_four_replicas(server: Server) -> None:
    prefix = unique_prefix()
    replicas = [RedisLimiter(create_redis(server.redis_url), 1000, prefix=prefix) for _ in range(WORKERS)]
    try:
        for replica in replicas:  # as each replica does at start (in its own process)
            await replica.warm_up()
        decisions = await asyncio.gather(*(replicas[n % WORKERS].acquire([]) for n in range(1050)))
        assert sum(decision.allowed for decision in decisions) == 1000
        assert {decision.refused_by for decision in decisions if not decision.allowed} == {"concurrency"}
        assert not (await replicas[0].acquire([])).allowed
        released = next(decision.lease for decision in decisions if decision.lease is not None)
        assert released is not None
        await released.release()
        assert (await replicas[3].acquire([])).allowed
    finally:
        await delete_prefix(replicas[0].client, prefix)
        for replica in replicas:
            await replica.aclose()
