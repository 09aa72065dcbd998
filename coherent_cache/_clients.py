"""How coherent_cache connects: every Redis client, pool and bus endpoint, per deployment.

One place for "how we connect" in each ``redis_mode`` (standalone, cluster, sentinel):

- `build_client`: the L2 client of `RedisCache` (a ``BlockingConnectionPool`` client,
  a ``RedisCluster``, or Sentinel's ``master_for``), every wait bounded by the timeouts;
  `close_client` closes it (and a Sentinel client's connections to the sentinels).
- `watch_primary`: Sentinel mode's watch of the primary the L2 client's pool follows.
- `bus_pool` and `bus_endpoint`: the subscriber connection of `InvalidationBus`: its
  connection options, and, for every connection attempt, which node to connect to and
  which subscribe command to use.
- `watch_client`: the plain pub/sub client of ``coherent-cache watch``.
- `make_sentinel`: the `Sentinel` the L2 client and the bus ask for the primary.

`L2Client` and `GuardedCall` name what the tag index (`_tags`) and the lease locks
(`_lease`) receive from `RedisCache`: the client and the guarded call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeAlias, TypeVar

import anyio
from anyio.abc import TaskStatus
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis, SSLConnection
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.crc import key_slot

from .config import CacheConfig, parse_address

__all__ = ()

L2Client: TypeAlias = Redis | RedisCluster
"""What `RedisCache` talks to: one server (standalone, Sentinel's current primary) or a
cluster client that routes each key to its slot's primary."""

T = TypeVar("T")

UNAVAILABLE: Final = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterError,
    redis_errors.RedisClusterException,
    redis_errors.TryAgainError,
    OSError,
)
"""Failures that say "the server (or the cluster) cannot serve now": they count against
`RedisCache`'s breaker. Cluster topology errors are not all ConnectionErrors
(RedisClusterException is not even a RedisError), and a cluster mid-failover answers
CLUSTERDOWN / TRYAGAIN."""


class GuardedCall(Protocol):
    """`RedisCache`'s guarded call, as the tag index and the lease locks receive it.

    ``call(op, func)`` awaits ``func()`` under the circuit breaker and
    ``operation_timeout``, and records its latency; a failure raises `BackendError`
    (`BackendUnavailableError`, `BackendTimeoutError`) and is counted by the `RedisCache`.
    """

    async def __call__(self, op: str, func: Callable[[], Awaitable[T]]) -> T: ...


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (connects to the primary the sentinels name, follows a failover)
    with the standalone pool's bounded wait for a free connection."""


def _url_kwargs(config: CacheConfig) -> dict[str, Any]:
    """The URL's connection options (credentials, database, TLS), overridden by the config's."""
    assert config.redis_url is not None
    found: dict[str, Any] = dict(parse_url(config.redis_url))
    if found.pop("connection_class", None) is SSLConnection:
        found["ssl"] = True
    found.update(config.credentials())
    return found


def build_client(config: CacheConfig) -> L2Client:
    """The L2 client of ``config.redis_mode``; its every wait is bounded by the timeouts.

    Standalone: a ``BlockingConnectionPool`` of ``max_connections`` from the URL. Cluster:
    a ``RedisCluster`` (``max_connections`` per node). Sentinel: the primary named by the
    sentinels (``master_for``), through a pool that waits for a free connection like the
    standalone one. All three share the socket timeouts, keepalive, client name,
    credentials and TLS options, and one immediate retry on a fresh connection.
    """
    assert config.redis_url is not None
    options: dict[str, Any] = {
        "socket_timeout": config.operation_timeout,
        "socket_connect_timeout": config.connect_timeout,
        "socket_keepalive": True,
        "client_name": f"coherent_cache:{config.namespace}",
        **config.credentials(),
        **config.tls_options(),
    }
    if config.redis_mode == "standalone":
        pool = BlockingConnectionPool.from_url(
            config.redis_url,
            max_connections=config.max_connections,
            # Waiting for a free pooled connection is bounded like any other wait.
            timeout=config.operation_timeout,
            # One immediate retry on a fresh connection covers a pooled connection the
            # server closed while idle; the operation deadline still bounds the whole call.
            retry=Retry(NoBackoff(), 1),
            **options,
        )
        return Redis.from_pool(pool)
    kwargs = {**_url_kwargs(config), **options}
    # One immediate retry on a fresh connection, as in standalone mode; the operation
    # deadline bounds the whole call, redirects and topology refreshes included.
    retry = Retry(NoBackoff(), 1)
    if config.redis_mode == "cluster":
        kwargs.pop("db", None)
        return RedisCluster(
            **kwargs,
            max_connections=config.max_connections,  # per node
            retry=retry,
            # Keep serving the healthy shards while a failed one is being failed over.
            require_full_coverage=False,
        )
    kwargs.pop("host", None)
    kwargs.pop("port", None)
    sentinel = make_sentinel(config)
    client: Redis = sentinel.master_for(
        config.sentinel_master or "",
        connection_pool_class=_BlockingSentinelPool,
        max_connections=config.max_connections,
        timeout=config.operation_timeout,  # wait for a free pooled connection
        retry=retry,
        **kwargs,
    )
    return client


def make_sentinel(config: CacheConfig) -> Sentinel:
    """A `Sentinel` over ``sentinel_addresses`` whose every query is bounded by the timeouts."""
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": config.operation_timeout,
        "socket_connect_timeout": config.connect_timeout,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
        **config.sentinel_credentials(),
    }
    if config.redis_url is not None and config.redis_url.startswith("rediss:"):
        # A rediss:// deployment talks TLS to its sentinels too, with the same settings.
        sentinel_kwargs.update(ssl=True, **config.tls_options())
    return Sentinel(  # type: ignore[no-untyped-call]
        [parse_address(address) for address in config.sentinel_addresses],
        sentinel_kwargs=sentinel_kwargs,
    )


async def close_client(client: L2Client) -> None:
    """Close ``client`` and, for a Sentinel primary, the connections to the sentinels."""
    await client.aclose()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    if isinstance(manager, Sentinel):
        await manager.aclose()


async def watch_primary(
    client: L2Client,
    config: CacheConfig,
    *,
    on_changed: Callable[[str, str], None],
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Sentinel mode: follow a failover even while pooled connections stay open.

    redis-py asks the sentinels for the primary only when it opens a connection. A
    graceful failover (``SENTINEL FAILOVER``) leaves the old primary answering, and it
    takes writes until the sentinels demote it, seconds later; meanwhile other instances
    use the new one. So every few seconds (five bus health-check intervals, at least one
    second) this asks the sentinels and, when the primary changed, calls
    ``on_changed(old, new)`` (``host:port`` each); the pool, having re-resolved the
    primary, closes its idle connections to the old one (in-use ones are dropped on
    release). Outside Sentinel mode it sleeps forever. Error handling: a failed or slow
    query (``operation_timeout``) is skipped until the next round.
    """
    task_status.started()
    pool = client.connection_pool if isinstance(client, Redis) else None
    if not isinstance(pool, SentinelConnectionPool):
        await anyio.sleep_forever()
        return
    interval = max(1.0, 5 * config.bus_health_check_interval)
    while True:
        await anyio.sleep(interval)
        before = pool.master_address
        try:
            with anyio.fail_after(config.operation_timeout):
                now = await pool.get_master_address()  # type: ignore[no-untyped-call]
        except (TimeoutError, redis_errors.RedisError, OSError):
            continue
        if before is not None and now != before:
            on_changed(f"{before[0]}:{before[1]}", f"{now[0]}:{now[1]}")


def bus_pool(config: CacheConfig, *, role: str = "bus") -> ConnectionPool:
    """The connection options of the bus subscriber, as a pool `bus_endpoint` opens from.

    RESP2, no hidden retries (every reconnect goes through `InvalidationBus.run`), the
    same timeouts, credentials and TLS as the L2 client, its own client name
    (``coherent_cache:<namespace>:<role>``; the client-tracking connections use
    ``tracking``).
    """
    assert config.redis_url is not None
    return ConnectionPool.from_url(
        config.redis_url,
        protocol=2,
        socket_timeout=config.operation_timeout,
        socket_connect_timeout=config.connect_timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        client_name=f"coherent_cache:{config.namespace}:{role}",
        **config.credentials(),
        **config.tls_options(),
    )


def watch_client(config: CacheConfig) -> Redis:
    """The pub/sub client of ``coherent-cache watch``: connects to the URL's server."""
    assert config.redis_url is not None
    return Redis.from_url(
        config.redis_url,
        protocol=2,
        socket_connect_timeout=config.connect_timeout,
        socket_keepalive=True,
        # A lost connection ends the watch with an error rather than reconnecting
        # silently: messages sent meanwhile would be missing from the output.
        retry=Retry(NoBackoff(), 0),
        client_name=f"coherent_cache:{config.namespace}:watch",
        **config.credentials(),
        **config.tls_options(),
    )


async def _close_quietly(conn: AbstractConnection) -> None:
    """Disconnect ``conn`` even while cancelled, waiting at most 1 s."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
        await conn.disconnect()


async def _connect_or_close(conn: AbstractConnection) -> AbstractConnection:
    """``conn``, connected; or closed (`_close_quietly`) and the error raised."""
    try:
        await conn.connect()  # type: ignore[no-untyped-call]
    except BaseException:
        await _close_quietly(conn)
        raise
    return conn


class BusEndpoint:
    """One server: the URL's host (standalone), connect there, ``SUBSCRIBE``.

    Subclasses pick the node per attempt (cluster, sentinel). `connect` returns a connected
    connection or raises, closing whatever it opened.
    """

    subscribe_command: str = "SUBSCRIBE"
    subscribed_kind: bytes = b"subscribe"
    message_kind: bytes = b"message"
    lost_kinds: frozenset[bytes] = frozenset()
    """Push messages that end the subscription (the server unsubscribed us)."""
    attempts_per_connect: int = 1
    """How many connection deadlines one attempt may need (for the subscribe deadline)."""
    check_interval: float | None = None
    """Seconds between `moved_to` checks while subscribed; ``None``: never."""

    def __init__(self, config: CacheConfig, pool: ConnectionPool) -> None:
        self.config = config
        self.pool = pool
        self.address: str | None = None
        """``host:port`` of the node serving the current subscription."""

    def _open(self, host: str, port: int) -> AbstractConnection:
        kwargs = {**self.pool.connection_kwargs, "host": host, "port": port}
        connection: AbstractConnection = self.pool.connection_class(**kwargs)
        return connection

    async def _connected(self, host: str, port: int) -> AbstractConnection:
        conn = await _connect_or_close(self._open(host, port))
        self.address = f"{host}:{port}"
        return conn

    async def connect(self) -> AbstractConnection:
        """A connection to the node to subscribe on."""
        conn = await _connect_or_close(self.pool.make_connection())  # type: ignore[no-untyped-call]
        kwargs = self.pool.connection_kwargs
        self.address = f"{kwargs.get('host')}:{kwargs.get('port')}"
        return conn

    def failed(self) -> None:
        """The last attempt or subscription failed: the next attempt may try elsewhere."""

    async def moved_to(self) -> str | None:
        """Where the subscription should be now, if not on `address` (else ``None``)."""
        return None

    async def aclose(self) -> None:
        """Close whatever the endpoint holds besides the subscriber connection."""


class SentinelBusEndpoint(BusEndpoint):
    """Ask the sentinels for the current primary on every attempt, then ``SUBSCRIBE`` there.

    After a failover the old primary's connection drops (or it is demoted); the next
    attempt asks the sentinels again and lands on the new primary.
    """

    attempts_per_connect = 2

    def __init__(self, config: CacheConfig, pool: ConnectionPool) -> None:
        super().__init__(config, pool)
        self._sentinel = make_sentinel(config)
        # A graceful failover (SENTINEL FAILOVER) demotes the old primary without closing
        # its connections: its subscribers keep receiving through replication, but only
        # while its replication link holds. So the bus also asks the sentinels every few
        # seconds and moves to the new primary.
        self.check_interval = max(1.0, 5 * config.bus_health_check_interval)

    async def connect(self) -> AbstractConnection:
        host, port = await self._sentinel.discover_master(self.config.sentinel_master or "")
        return await self._connected(str(host), int(port))

    async def moved_to(self) -> str | None:
        try:
            host, port = await self._sentinel.discover_master(self.config.sentinel_master or "")
        except (redis_errors.RedisError, OSError):
            return None  # sentinels unreachable: the subscription itself is still fine
        address = f"{host}:{port}"
        return None if address == self.address else address

    async def aclose(self) -> None:
        await self._sentinel.aclose()


class ClusterBusEndpoint(BusEndpoint):
    """A cluster node: the channel's slot owner (sharded) or any node (broadcast).

    Every attempt asks a known node for ``CLUSTER SLOTS``, which refreshes the list of
    nodes to fall back on. Sharded mode then connects to the primary owning the channel's
    slot and uses ``SSUBSCRIBE``; when the slot moves, the server ends the subscription
    with an ``sunsubscribe`` push and the next attempt finds the new owner. Broadcast mode
    subscribes with ``SUBSCRIBE`` on the node it reached (``PUBLISH`` reaches every node
    through the cluster bus); a failed attempt moves on to the next known node.
    """

    def __init__(self, config: CacheConfig, pool: ConnectionPool) -> None:
        super().__init__(config, pool)
        kwargs = pool.connection_kwargs
        self._seed = (str(kwargs.get("host", "localhost")), int(kwargs.get("port", 6379)))
        self._nodes: list[tuple[str, int]] = [self._seed]
        self._next = 0
        self.sharded = config.cluster_bus == "sharded"
        self.slot = key_slot(config.channel.encode())
        if self.sharded:
            self.subscribe_command = "SSUBSCRIBE"
            self.subscribed_kind = b"ssubscribe"
            self.message_kind = b"smessage"
            self.lost_kinds = frozenset({b"sunsubscribe"})
            self.attempts_per_connect = 2

    async def connect(self) -> AbstractConnection:
        host, port = self._nodes[self._next % len(self._nodes)]
        conn = await self._connected(host, port)
        try:
            owner = await self._refresh(conn, host)
            if self.sharded and owner != (host, port):
                await conn.disconnect()
                if owner is None:
                    raise redis_errors.ConnectionError(
                        f"no node serves slot {self.slot} of the bus channel"
                    )
                conn = await self._connected(*owner)
        except BaseException:
            await _close_quietly(conn)
            raise
        return conn

    async def _refresh(self, conn: AbstractConnection, asked: str) -> tuple[str, int] | None:
        """Learn the nodes from ``CLUSTER SLOTS``; return the primary of the channel's slot."""
        await conn.send_command("CLUSTER", "SLOTS")
        reply = await conn.read_response(timeout=self.config.operation_timeout)
        primaries: list[tuple[str, int]] = []
        replicas: list[tuple[str, int]] = []
        owner = None
        try:
            for entry in reply:
                start, end, *nodes = entry
                for index, node in enumerate(nodes):
                    raw_host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
                    address = (raw_host if raw_host and raw_host != "?" else asked, int(node[1]))
                    group = primaries if index == 0 else replicas
                    if address not in group:
                        group.append(address)
                    if index == 0 and int(start) <= self.slot <= int(end):
                        owner = address
        except (TypeError, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise redis_errors.InvalidResponse(f"unexpected CLUSTER SLOTS reply: {exc}") from None
        known = [*primaries, *replicas]
        if self._seed not in known:
            known.append(self._seed)
        self._nodes = known
        self._next = 0
        return owner

    def failed(self) -> None:
        self._next += 1


def bus_endpoint(config: CacheConfig, pool: ConnectionPool) -> BusEndpoint:
    """The endpoint for ``config.redis_mode``; ``pool`` carries the connection options."""
    if config.redis_mode == "cluster":
        return ClusterBusEndpoint(config, pool)
    if config.redis_mode == "sentinel":
        return SentinelBusEndpoint(config, pool)
    return BusEndpoint(config, pool)
