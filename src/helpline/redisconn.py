"""One way to open Redis for every Helpline component (limiter, cache): bounded timeouts, bounded retries.

Why this module exists: redis-py's defaults are made for batch jobs, not for a request path. Its default ``Retry``
(exponential backoff with a 10 s cap, several attempts) plus 5 s socket timeouts can make one PING to a dead or
black-holed Redis take tens of seconds, and every request waiting on the limiter would wait with it. Here every
client has short connect/read timeouts and one quick retry, so the caller learns within about a second that Redis
is not answering and can fall back.

Cluster URLs: ``redis+cluster://host:port/0`` (or ``rediss+cluster://`` for TLS), or any ``redis://`` /
``rediss://`` URL with ``?cluster=true``. The given node is a seed; the client discovers the rest of the cluster.

Two cluster-client habits to know (redis-py 8): its lazy topology discovery, when a burst of concurrent first
commands races it, closes connections under commands in flight (``ConnectionError``, even ``AttributeError``), so
call ``await connect(client)`` once before concurrent use; and an exhausted per-node pool raises
``MaxConnectionsError`` at once instead of waiting, so bound concurrent commands yourself (a semaphore).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_TRUE = frozenset({"1", "true", "yes", "on"})

AnyRedis = Redis | RedisCluster


def split_cluster_url(url: str) -> tuple[str, bool]:
    """(a URL redis-py understands, whether it names a cluster). ``cluster=...`` is removed from the query."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qsl(parts.query, keep_blank_values=True)
    flagged = any(key == "cluster" and value.lower() in _TRUE for key, value in query)
    remaining = urlencode([(key, value) for key, value in query if key != "cluster"])
    cluster = scheme in CLUSTER_SCHEMES or flagged
    plain = parts._replace(scheme=CLUSTER_SCHEMES.get(scheme, scheme), query=remaining)
    return urlunsplit(plain), cluster


def quick_retry(retries: int) -> Retry:
    """At most ``retries`` extra attempts, 10-50 ms apart, on connection errors and timeouts only."""
    return Retry(
        ExponentialBackoff(cap=0.05, base=0.01), retries, supported_errors=(RedisConnectionError, RedisTimeoutError)
    )


def create_redis(
    url: str,
    *,
    connect_timeout_s: float = 0.25,
    timeout_s: float = 0.5,
    retries: int = 1,
    health_check_interval_s: int = 15,
    max_connections: int = 64,
    decode_responses: bool = False,
    **extra: Any,
) -> AnyRedis:
    """A Redis or Redis Cluster client for ``url``; nothing connects until the first command.

    ``max_connections`` bounds the pool per process (per node for a cluster); a burst beyond it waits for a free
    connection for at most ``timeout_s`` instead of opening a socket per concurrent request.
    """
    plain_url, is_cluster = split_cluster_url(url)
    common: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout_s,
        "socket_timeout": timeout_s,
        "retry": quick_retry(retries),
        "health_check_interval": health_check_interval_s,
        "decode_responses": decode_responses,
        **extra,
    }
    if is_cluster:
        # Redirections (MOVED/ASK during resharding or failover) are retried by the cluster client itself;
        # keep that bounded as well.
        return RedisCluster.from_url(plain_url, max_connections=max_connections, **common)
    pool = BlockingConnectionPool.from_url(plain_url, max_connections=max_connections, timeout=timeout_s, **common)
    return Redis(connection_pool=pool)


async def connect(client: AnyRedis) -> None:
    """Discover the cluster (if it is one) and round-trip once; raises if Redis does not answer."""
    if isinstance(client, RedisCluster):
        await client.initialize()
    await client.ping()


def pool_size(client: AnyRedis) -> int:
    """How many connections the client may hold (per node for a cluster): ``max_connections`` of create_redis."""
    if isinstance(client, RedisCluster):
        return int(client.nodes_manager.connection_kwargs.get("max_connections", 0))
    return int(client.connection_pool.max_connections)


async def prewarm(client: AnyRedis, connections: int, key: str, batch: int = 8) -> int:
    """Open up to ``connections`` pooled connections now, so a first burst of requests finds them; on a cluster,
    in the pool of the node that serves ``key`` (call :func:`connect` first). Returns how many are open.

    Opening a connection costs a TCP handshake plus redis-py's hello round trips; fifty of them at once in a cold
    worker, under the burst that caused them, took longer than the limiter's budget (measured: 0.5-0.8 s on two
    cores) and made a healthy Redis look down. Connections are held until all are open (a released one would only
    be reused by the next batch), ``batch`` at a time; failures are ignored: such a connection opens on demand."""
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(key)
        if node is None:  # no slot owner known: nothing to open
            return 0

        async def take() -> Any:
            connection = node.acquire_connection()
            try:
                await connection.connect()  # type: ignore[no-untyped-call]
            except BaseException:
                node.release(connection)
                raise
            return connection

        async def give_back(connection: Any) -> None:
            node.release(connection)
    else:
        pool = client.connection_pool

        async def take() -> Any:
            return await pool.get_connection()  # type: ignore[no-untyped-call]

        async def give_back(connection: Any) -> None:
            await pool.release(connection)

    held: list[Any] = []
    try:
        for start in range(0, connections, batch):
            results = await asyncio.gather(
                *(take() for _ in range(min(batch, connections - start))), return_exceptions=True
            )
            held += [result for result in results if not isinstance(result, BaseException)]
    finally:
        for connection in held:
            await give_back(connection)
    return len(held)


def describe(url: str) -> str:
    """The URL without credentials, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc, query=""))
