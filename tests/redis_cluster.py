"""A real three-node Redis Cluster for tests: redis-server processes on spare ports in a temporary directory.

Why real: slot routing, MOVED redirections and the "all keys of one script in one slot" rule (CROSSSLOT) are
exactly what a fake would get wrong. Nothing is persisted (``--save "" --appendonly no``); the processes are
stopped and the directory removed on exit. Use ``redis_cluster(tmp_path)`` as a context manager, or the
``redis_cluster_url`` fixture in tests/ratelimit/conftest.py.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

NODES = 3
BUS_OFFSET = 10000  # Redis Cluster's bus port is the client port + 10000
_START_TIMEOUT_S = 20.0


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def spare_ports(count: int = NODES) -> list[int]:
    """Client ports whose cluster-bus ports (+10000) are free too; random so parallel runs do not collide."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, 45000)
        if port not in ports and _bindable(port) and _bindable(port + BUS_OFFSET):
            ports.append(port)
    return ports


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (apt-get install redis-server)")
    return path


def _cli(port: int, *args: str, timeout: float = 10.0) -> str:
    result = subprocess.run(  # noqa: S603 - fixed binary, our own arguments
        [_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return result.stdout + result.stderr


def _wait(predicate: object, what: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"redis cluster: {what} did not happen within {_START_TIMEOUT_S:.0f} s")


@dataclass
class RedisClusterProcesses:
    ports: list[int]
    directory: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A Helpline cluster URL (see helpline.redisconn); any node is a seed."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        for port in self.ports:
            self.processes.append(self._spawn(port))
        for port in self.ports:
            _wait(lambda port=port: "PONG" in _cli(port, "ping", timeout=2), f"node {port} answering")
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        output = _cli(
            self.ports[0], "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes", timeout=30
        )
        if "[OK] All 16384 slots covered" not in output:
            raise RuntimeError(f"redis cluster create failed: {output}")
        for port in self.ports:
            _wait(lambda port=port: "cluster_state:ok" in _cli(port, "cluster", "info", timeout=2), "cluster_state:ok")

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(  # noqa: S603 - fixed binary, our own arguments
            [
                _binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-config-file", str(node_dir / "nodes.conf"), "--cluster-node-timeout", "2000",
                "--save", "", "--appendonly", "no", "--dir", str(node_dir), "--logfile", str(node_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        self.processes.clear()


@contextlib.contextmanager
def redis_cluster(directory: Path) -> Iterator[RedisClusterProcesses]:
    """Start a 3-primary cluster under ``directory``, yield it, stop it and remove its files."""
    cluster = RedisClusterProcesses(spare_ports(), directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
