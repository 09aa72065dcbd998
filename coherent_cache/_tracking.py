"""Server-assisted invalidation: ``CLIENT TRACKING ON ... BCAST PREFIX <namespace>:``.

With ``client_tracking=True`` every instance keeps one connection of its own per node
(one on a standalone server or Sentinel's primary, one per primary in a cluster), made
like the bus's (`_clients.bus_pool`: RESP2, the same credentials, TLS and timeouts, no
hidden retries). On it::

    CLIENT ID                                          -> <id>
    CLIENT TRACKING ON REDIRECT <id> BCAST PREFIX <namespace>:
    SUBSCRIBE __redis__:invalidate

so the server sends this very connection, as pub/sub messages, the keys of every write
under the prefix, whoever wrote them (another service, ``valkey-cli``, a Lua script, an
expiry or eviction), and ``nil`` for ``FLUSHDB``/``FLUSHALL``. RESP2 and a redirect to
itself keep one connection per node and the bus's proven listen loop (its PING deadline,
reconnects and failover checks) rather than redis-py's RESP3 push-handler path.

Each message goes to the L1 actor's mailbox like a bus ``delete`` (`InvalidateKeys`: the
keys leave L1 and in-flight fills of them turn stale; ``nil``: `FlushAll`), after mapping
the Redis keys back to cache keys through the exact prefix ``<namespace>:`` (a namespace
cannot contain ``:``, so ``shop:`` never matches ``shop2:...`` or ``shopx``); a key
outside it is counted in ``ignored`` and dropped. Losing a connection (error, EOF, an
unanswered PING, a Sentinel failover, a changed set of cluster primaries) is a loss
handled like the bus's: L1 is distrusted through the `TrustGate` until the channel is
back, then flushed and trusted again once every channel is up.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypedDict, final

import anyio
from anyio.abc import TaskGroup, TaskStatus
from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection

from ._backoff import backoff_delay
from ._clients import BusEndpoint, bus_endpoint, bus_pool
from ._invalidation import TrustGate
from ._listen import await_subscribed, listen, resubscribe
from ._log import Logger, get_logger
from .config import CacheConfig
from .keys import redis_key
from .l1 import FlushAll, InvalidateKeys, L1Actor

__all__ = ("INVALIDATE_CHANNEL", "ClientTracking", "TrackingStats", "disabled_tracking_stats")

log = get_logger()

INVALIDATE_CHANNEL: Final = "__redis__:invalidate"
"""Where the server sends a RESP2 client's tracking invalidations."""


class TrackingStats(TypedDict):
    """Client tracking in `CacheStats` (``enabled: False`` and zeros when it is off)."""

    enabled: bool
    connected: bool
    """Every tracking connection is subscribed."""
    channels: int
    """Tracking connections: 1 (standalone, Sentinel), one per primary (cluster)."""
    messages: int
    """Invalidation messages received (flushes included)."""
    keys_dropped: int
    """Live L1 entries dropped because of a tracking message."""
    flushes: int
    """Flush messages (``FLUSHDB``/``FLUSHALL``) and flushes on (re)connection."""
    ignored: int
    """Keys in messages that are not under the exact prefix ``<namespace>:``."""
    losses: int
    recoveries: int
    last_loss_at: float | None
    last_recovery_at: float | None


def disabled_tracking_stats() -> TrackingStats:
    """The `TrackingStats` of an instance without client tracking."""
    return {
        "enabled": False,
        "connected": False,
        "channels": 0,
        "messages": 0,
        "keys_dropped": 0,
        "flushes": 0,
        "ignored": 0,
        "losses": 0,
        "recoveries": 0,
        "last_loss_at": None,
        "last_recovery_at": None,
    }


class TrackingLost(Exception):
    """A tracking connection is dead or no longer the right one."""


@final
class ClientTracking:
    """The client-tracking side of one instance: its channels, counters and L1 hooks.

    Args:
        config: the manager's settings (URL, mode, credentials, timeouts, namespace).
        actor: the L1 actor the invalidations go to.
        flush: empties L1 and makes every in-flight fill stale (on every subscription).
        gate: where each channel reports itself down and up.
        timer: monotonic clock of the PING deadline and the distrust times.
        logger: the logger of its events (the package's when omitted).
    """

    def __init__(
        self,
        config: CacheConfig,
        *,
        actor: L1Actor,
        flush: Callable[[], None],
        gate: TrustGate,
        timer: Callable[[], float] = time.monotonic,
        logger: Logger | None = None,
    ) -> None:
        assert config.redis_url is not None
        self.config = config
        self.prefix = redis_key(config.namespace, "").encode()
        self._actor = actor
        self.flush = flush
        self.gate = gate
        self.timer = timer
        self.log: Logger = logger if logger is not None else log
        self.pool: ConnectionPool = bus_pool(config, role="tracking")
        self.channels: dict[str, TrackingChannel] = {}
        self.messages = 0
        self.keys_dropped = 0
        self.flushes = 0
        self.ignored = 0
        self.losses = 0
        self.recoveries = 0
        self.last_loss_at: float | None = None
        self.last_recovery_at: float | None = None

    @property
    def connected(self) -> bool:
        """Whether every tracking connection is subscribed (and there is at least one)."""
        return bool(self.channels) and all(c.connected for c in self.channels.values())

    def stats(self) -> TrackingStats:
        """Counters and state."""
        return {
            "enabled": True,
            "connected": self.connected,
            "channels": max(1, len(self.channels)),
            "messages": self.messages,
            "keys_dropped": self.keys_dropped,
            "flushes": self.flushes,
            "ignored": self.ignored,
            "losses": self.losses,
            "recoveries": self.recoveries,
            "last_loss_at": self.last_loss_at,
            "last_recovery_at": self.last_recovery_at,
        }

    async def run(
        self,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
        ready_within: float = 0.0,
    ) -> None:
        """Track forever (the supervised ``tracking`` task); see `TrackingChannel.run`.

        Cluster mode: one channel per primary (`run_cluster`).
        """
        if self.config.redis_mode == "cluster":
            await run_cluster(self, task_status=task_status, ready_within=ready_within)
            return
        endpoint = bus_endpoint(self.config, self.pool)
        channel = TrackingChannel(self, "tracking", endpoint.connect, endpoint=endpoint)
        self.channels = {"tracking": channel}
        try:
            await channel.run(task_status=task_status, ready_within=ready_within)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await endpoint.aclose()
                await self.pool.disconnect()

    # -- the channels' hooks -----------------------------------------------------------------

    def subscribed(self, channel: TrackingChannel, *, recovered: bool) -> None:
        """``channel`` is (again) subscribed: flush L1, then it counts as up."""
        self.flushes += 1
        self.flush()
        if recovered:
            self.recoveries += 1
            self.last_recovery_at = time.time()
        self.gate.up(channel.name)

    def lost(self, channel: TrackingChannel, since: float) -> None:
        """``channel``'s subscription ended; it was last known alive at ``since``."""
        self.losses += 1
        self.last_loss_at = time.time()
        self.gate.down(channel.name, since)

    def invalidate(self, payload: Any) -> None:
        """One ``__redis__:invalidate`` message: its keys (or ``nil``: a flush) leave L1."""
        self.messages += 1
        if payload is None:
            self.flushes += 1
            self._actor.submit(FlushAll())
            return
        if not isinstance(payload, list):
            self.ignored += 1
            return
        prefix = self.prefix
        start = len(prefix)
        keys: list[str] = []
        for raw in payload:
            if isinstance(raw, bytes) and raw.startswith(prefix) and len(raw) > start:
                try:
                    keys.append(raw[start:].decode())
                    continue
                except UnicodeDecodeError:
                    pass
            self.ignored += 1
        if keys:
            self._actor.submit(InvalidateKeys(tuple(keys), self._count_dropped))

    def _count_dropped(self, dropped: int) -> None:
        self.keys_dropped += dropped


@final
class TrackingChannel:
    """One tracking connection: set up, listen, PING, reconnect forever.

    The connection counts as dead on any read or write error, on EOF, and when a PING
    sent after ``bus_health_check_interval`` seconds of silence gets no reply within that
    interval plus ``operation_timeout`` (as the bus's). Sentinel: the endpoint is asked
    every few seconds whether the primary moved. Error handling: a loss is reported to the
    owner (L1 distrusted since the last reply), counted and logged, and a new connection
    is tried after a jittered exponential backoff (50 ms doubling up to
    ``reconnect_backoff_max``). Cancellation closes the connection and propagates.
    """

    def __init__(
        self,
        owner: ClientTracking,
        name: str,
        connect: Callable[[], Awaitable[AbstractConnection]],
        *,
        endpoint: BusEndpoint | None = None,
        address: str | None = None,
    ) -> None:
        self.owner = owner
        self.name = name
        self._connect = connect
        self._endpoint = endpoint
        self.address = address
        self.connected = False
        self.last_seen = owner.timer()
        self._random = random.Random()
        self._ever = False
        """Whether it was ever subscribed (a later subscription is a recovery)."""

    def _where(self) -> str | None:
        return self._endpoint.address if self._endpoint is not None else self.address

    async def run(
        self,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
        ready_within: float = 0.0,
        attempts: int | None = None,
    ) -> None:
        """Subscribe, listen and resubscribe; report readiness once (as `InvalidationBus.run`).

        ``attempts``: give up (return) after this many failed connection attempts in a row
        (cluster mode: a node that stays unreachable is left to the topology refresh);
        ``None``: never.
        """
        await resubscribe(
            subscribe=self._subscribe,
            listen=self._listen,
            on_subscribed=self._subscribed,
            on_lost=self._lost,
            on_failed=self._failed,
            on_stopping=self._stopping,
            errors=(TrackingLost, TimeoutError, redis_errors.RedisError, OSError),
            backoff=lambda attempt: backoff_delay(
                attempt, base=0.05, cap=self.owner.config.reconnect_backoff_max, rng=self._random
            ),
            task_status=task_status,
            ready_within=ready_within,
            attempts=attempts,
        )

    def _subscribed(self) -> None:
        owner = self.owner
        self.last_seen = owner.timer()
        self.connected = True
        owner.subscribed(self, recovered=self._ever)
        self._ever = True
        owner.log.info(
            "tracking_subscribed", channel=self.name, node=self._where(),
            recoveries=owner.recoveries,
        )  # fmt: skip

    def _lost(self) -> None:
        self.connected = False
        self.owner.lost(self, self.last_seen)

    def _failed(self, exc: BaseException, subscribed: bool, attempt: int) -> None:
        if self._endpoint is not None:
            self._endpoint.failed()
        log = self.owner.log
        level = log.warning if subscribed or attempt == 0 else log.debug
        level(
            "tracking_disconnected" if subscribed else "tracking_connect_failed",
            channel=self.name,
            node=self._where(),
            attempt=attempt,
            error=type(exc).__name__,
            detail=str(exc),
        )

    def _stopping(self) -> None:
        self.connected = False

    async def _subscribe(self) -> AbstractConnection:
        """Connect, turn BCAST tracking on (redirected to this connection), subscribe."""
        cfg = self.owner.config
        per_connect = self._endpoint.attempts_per_connect if self._endpoint is not None else 1
        deadline = per_connect * (cfg.connect_timeout + cfg.operation_timeout)
        with anyio.fail_after(deadline + 2 * cfg.operation_timeout):
            conn = await self._connect()
            try:
                await conn.send_command("CLIENT", "ID")
                client_id = await conn.read_response(timeout=cfg.operation_timeout)
                if not isinstance(client_id, int):
                    raise TrackingLost(f"unexpected CLIENT ID reply {client_id!r}")
                await conn.send_packed_command(
                    conn.pack_commands(
                        [
                            ("CLIENT", "TRACKING", "ON", "REDIRECT", client_id,
                             "BCAST", "PREFIX", self.owner.prefix),
                            ("SUBSCRIBE", INVALIDATE_CHANNEL),
                        ]
                    )
                )  # fmt: skip
                reply = await conn.read_response(timeout=cfg.operation_timeout)
                if reply not in (b"OK", "OK"):
                    raise TrackingLost(f"CLIENT TRACKING refused: {reply!r}")
                await await_subscribed(
                    conn,
                    "SUBSCRIBE",
                    b"subscribe",
                    reply_timeout=cfg.operation_timeout,
                    lost=TrackingLost,
                )
                return conn
            except BaseException:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                    await conn.disconnect()
                raise

    async def _listen(self, conn: AbstractConnection) -> None:
        owner = self.owner
        await listen(
            conn,
            owner.config,
            endpoint=self._endpoint,
            timer=owner.timer,
            last_seen=self.last_seen,
            on_reply=self._reply,
            on_seen=self._seen,
            on_suspect=self._suspect,
            on_alive=self._alive,
            lost=TrackingLost,
        )

    def _reply(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
            self.owner.invalidate(reply[2])

    def _seen(self, when: float) -> None:
        self.last_seen = when

    def _suspect(self, since: float) -> None:
        self.owner.gate.down(self.name, since)

    def _alive(self) -> None:
        self.owner.gate.up(self.name)


# -- cluster: one channel per primary --------------------------------------------------------
# Client tracking on a Redis/Valkey Cluster: one tracking connection per primary.
#
# Tracking is per node: a write reaches only the connections tracking on the primary that
# executed it. So the cluster loop asks a node for ``CLUSTER SLOTS`` every
# ``bus_health_check_interval`` (on a control connection of its own, rotating through the
# known nodes when one fails) and keeps exactly one `TrackingChannel` per primary. BCAST
# tracks a prefix, not slots, so a migrated slot's keys are covered by the channel of the
# primary they moved to.
#
# A primary that leaves the topology (failover, removed node) is a loss: its channel stops
# (counted as lost if it was still subscribed) and its name stays down in the `TrustGate`
# (L1 distrusted since its last reply) until a later round finds every current primary's
# channel subscribed; then L1 is flushed (every write the old primary took after its last
# message may be missed) and trusted again, counted as a recovery. A new primary gets a
# channel, which flushes L1 when it subscribes. The first round works the same way, with
# the manager's initial ``tracking`` distrust in place of a retired channel.

Address = tuple[str, int]


async def _open(tracking: ClientTracking, address: Address) -> AbstractConnection:
    """A connection to ``address`` with the tracking pool's options, or raise (closed)."""
    pool = tracking.pool
    conn: AbstractConnection = pool.connection_class(
        **{**pool.connection_kwargs, "host": address[0], "port": address[1]}
    )
    try:
        await conn.connect()  # type: ignore[no-untyped-call]
    except BaseException:
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
            await conn.disconnect()
        raise
    return conn


def parse_primaries(reply: object, asked: str) -> list[Address]:
    """The primaries in a ``CLUSTER SLOTS`` reply, in order (``?``/empty host: ``asked``).

    Raises:
        redis.exceptions.InvalidResponse: the reply is not shaped like ``CLUSTER SLOTS``'s.
    """
    primaries: list[Address] = []
    try:
        for entry in reply:  # type: ignore[attr-defined]
            node = entry[2]
            raw = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
            address = (raw if raw and raw != "?" else asked, int(node[1]))
            if address not in primaries:
                primaries.append(address)
    except (TypeError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise redis_errors.InvalidResponse(f"unexpected CLUSTER SLOTS reply: {exc}") from None
    return primaries


class _Topology:
    """The control connection that asks for ``CLUSTER SLOTS``, and the nodes to ask."""

    def __init__(self, tracking: ClientTracking) -> None:
        self.tracking = tracking
        kwargs = tracking.pool.connection_kwargs
        self.seed: Address = (str(kwargs.get("host", "localhost")), int(kwargs.get("port", 6379)))
        self.known: list[Address] = [self.seed]
        self.next = 0
        self.conn: AbstractConnection | None = None
        self.asked = self.seed

    async def primaries(self) -> list[Address] | None:
        """The current primaries, or ``None`` when no node answered within the deadline."""
        cfg = self.tracking.config
        try:
            with anyio.fail_after(cfg.connect_timeout + cfg.operation_timeout):
                if self.conn is None:
                    self.asked = self.known[self.next % len(self.known)]
                    self.conn = await _open(self.tracking, self.asked)
                await self.conn.send_command("CLUSTER", "SLOTS")
                reply = await self.conn.read_response(timeout=cfg.operation_timeout)
                found = parse_primaries(reply, self.asked[0])
        except (TimeoutError, redis_errors.RedisError, OSError):
            await self.close()
            self.next += 1
            return None
        if not found:
            return None
        self.known = [*found, *(a for a in self.known if a not in found)]
        return found

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await conn.disconnect()


async def run_cluster(
    tracking: ClientTracking,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ready_within: float = 0.0,
) -> None:
    """Keep one tracking channel per primary, forever; report readiness once every
    primary's channel is subscribed, or after ``ready_within`` seconds."""
    cfg = tracking.config
    topology = _Topology(tracking)
    scopes: dict[str, anyio.CancelScope] = {}
    # The manager's initial distrust, and the channels of a run that crashed (restarted by
    # the supervisor): each stays down until every current primary is tracked.
    retired: set[str] = {"tracking", *tracking.channels}
    tracking.channels = {}
    ready = False
    give_up_at = time.monotonic() + ready_within
    try:
        async with anyio.create_task_group() as tg:
            while True:
                primaries = await topology.primaries()
                if primaries is not None:
                    _reconcile(tracking, tg, primaries, scopes, retired)
                channels = tracking.channels
                if retired and channels and all(c.connected for c in channels.values()):
                    # Every current primary is tracked: what the retired channels may
                    # have missed is flushed, then they stop bounding L1.
                    tracking.flushes += 1
                    tracking.flush()
                    if retired != {"tracking"}:
                        tracking.recoveries += 1
                        tracking.last_recovery_at = time.time()
                    for name in retired:
                        tracking.gate.up(name)
                    retired.clear()
                if not ready and (not retired or time.monotonic() >= give_up_at):
                    ready = True
                    task_status.started()
                await anyio.sleep(
                    cfg.bus_health_check_interval if ready else min(0.05, ready_within)
                )
    finally:
        # Nothing listens until a new run tracks every primary again.
        for name, channel in tracking.channels.items():
            tracking.gate.down(name, channel.last_seen)
        await topology.close()
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
            await tracking.pool.disconnect()


def _reconcile(
    tracking: ClientTracking,
    tg: TaskGroup,
    primaries: list[Address],
    scopes: dict[str, anyio.CancelScope],
    retired: set[str],
) -> None:
    """Stop the channels of nodes no longer primaries, start channels for new ones."""
    wanted = {f"tracking:{host}:{port}": (host, port) for host, port in primaries}
    for name in [n for n in tracking.channels if n not in wanted]:
        channel = tracking.channels.pop(name)
        scopes.pop(name).cancel()
        if channel.connected:
            channel.connected = False
            tracking.lost(channel, channel.last_seen)
        else:
            tracking.gate.down(name, channel.last_seen)
        retired.add(name)
        tracking.log.warning("tracking_primary_gone", channel=name)
    for name, address in wanted.items():
        if name in tracking.channels:
            continue

        async def connect(address: Address = address) -> AbstractConnection:
            return await _open(tracking, address)

        channel = TrackingChannel(tracking, name, connect, address=f"{address[0]}:{address[1]}")
        tracking.channels[name] = channel
        # Down until its first subscription (which flushes L1 and brings it up).
        tracking.gate.down(name, tracking.timer())
        scope = scopes[name] = anyio.CancelScope()
        tg.start_soon(_run_channel, channel, scope)


async def _run_channel(channel: TrackingChannel, scope: anyio.CancelScope) -> None:
    with scope:
        await channel.run()
