"""RedisCache: the shared L2 over redis.asyncio, with timeouts, a circuit breaker and no raising.

Every public operation reports a Redis failure as a miss / ``False`` / ``0`` and counts it;
bad input (an invalid key, an unserialisable value) still raises, because that is the
caller's bug, not an outage.

This module holds the guarded call (breaker, ``operation_timeout``, latency and error
accounting) and the key/value operations. The tag index (`_tags`) and the lease locks
(`_lease`) run their Redis calls through the guarded call; clients are built, closed and
watched in `_clients`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypedDict, TypeVar, final

import anyio
from anyio.abc import TaskStatus
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from ._autopipeline import ReadBatcher
from ._breaker import BreakerState, CircuitBreaker
from ._clients import UNAVAILABLE, L2Client, build_client, close_client, watch_primary
from ._direct import OwnConnection
from ._lease import LeaseLocks
from ._log import Logger, get_logger
from ._signing import sign
from ._sweep import SCAN_COUNT as SCAN_COUNT
from ._sweep import KeyspaceSweep, Progress
from ._tags import TAG_PRUNE_MIN as TAG_PRUNE_MIN
from ._tags import TagIndex
from ._telemetry import LatencyHistogram, note_backend_error
from .config import CacheConfig
from .errors import BackendError, BackendTimeoutError, BackendUnavailableError, DeserializationError
from .keys import escape_glob, key_prefix, redis_key, validate_key, validate_pattern
from .serializer import CacheSerializer, StoredEntry
from .types import MISSING

__all__ = ["L2Stats", "RedisCache"]

log = get_logger()

T = TypeVar("T")


class L2Stats(TypedDict):
    """Statistics of a `RedisCache` (the seed's ``l2_cache`` block, plus extras)."""

    hits: int
    misses: int
    hit_rate: float
    connected: bool
    errors: int
    timeouts: int
    rejected_payloads: int
    short_circuited: int
    dropped_writes: int
    """Writes, deletes and clears that did not reach Redis (outage, timeout, open
    breaker). They are not queued or retried: see docs/reliability.md."""
    breaker: str
    url: str | None


def _ttl_ms(ttl: float | None) -> int | None:
    return None if ttl is None else max(1, math.ceil(ttl * 1000))


@final
class RedisCache:
    """The L2 tier: one namespace of a Redis or Valkey server, shared by every instance.

    Keys are stored as ``<namespace>:<key>``; values as `CacheSerializer` payloads.
    Every call runs under ``operation_timeout`` and a circuit breaker: after
    ``circuit_breaker_threshold`` consecutive connection failures or timeouts, calls fail
    fast (as misses) until a probe after a cooldown (at most ``circuit_breaker_cooldown``)
    succeeds. redis-py reconnects by itself; nothing needs restarting.

    Pending writes: none. A write, delete or clear that fails is dropped, counted in
    ``dropped_writes`` and logged; it is never queued or retried, so it can never land
    after (and overwrite) a newer value. A failed write's L1 copy lives at most
    ``max_stale_on_bus_loss`` (see `MultiTierCache`). One caveat no client can remove: a
    command the server had already received when its reply timed out may still be applied.

    Args:
        config: the settings; ``redis_url`` must not be ``None``.
        client: a ready ``redis.asyncio.Redis`` (or ``RedisCluster``) to use instead of one
            built from the config
            (the caller keeps ownership: `aclose` does not close it).
        serializer: the payload codec; built from the config when omitted.
        timer: the clock used by the circuit breaker.
        logger: the logger of its events, a structlog one too (the manager passes its own, with the
            namespace and origin bound); the package logger when omitted.
    """

    def __init__(
        self,
        config: CacheConfig,
        *,
        client: L2Client | None = None,
        serializer: CacheSerializer | None = None,
        timer: Callable[[], float] = time.monotonic,
        logger: Logger | None = None,
    ) -> None:
        if client is None and config.redis_url is None:
            raise ValueError("RedisCache needs config.redis_url or a client")
        self.config = config
        self.namespace = config.namespace
        self.serializer = serializer or CacheSerializer.from_config(config)
        self._owns_client = client is None
        self._client = client if client is not None else build_client(config)
        self._timeout = config.operation_timeout
        self._cluster = isinstance(self._client, RedisCluster)
        # RedisCluster's per-node pools raise MaxConnectionsError when full instead of
        # waiting (which would count as an outage and open the breaker): callers beyond
        # max_connections wait here instead, within the operation deadline, as they do
        # for a connection of the standalone BlockingConnectionPool.
        self._slots = anyio.Semaphore(config.max_connections) if self._cluster else None
        # In a cluster, PUBLISH cannot ride in a pipeline (the pipeline sends to several
        # nodes at once, so the message could overtake the write it announces): it goes
        # out once the write has returned. Sharded mode publishes on the channel's slot.
        self._publish_command = (
            "SPUBLISH" if self._cluster and config.cluster_bus == "sharded" else "PUBLISH"
        )
        self._reads = ReadBatcher(self._client, timeout=self._timeout)
        """GETs issued while another is in flight share one pipeline (auto-pipelining)."""
        self._writes = OwnConnection(self._client)  # a write and its bus message, no checkout
        self._breaker = CircuitBreaker(
            threshold=config.circuit_breaker_threshold,
            max_cooldown=config.circuit_breaker_cooldown,
            timer=timer,
        )
        self.connected = False
        self._hits = 0
        self._misses = 0
        self._errors = 0
        self._timeouts = 0
        self._rejected = 0
        self._short_circuited = 0
        self._dropped_writes = 0
        self.published = 0
        """Bus messages PUBLISHed successfully through this client."""
        self.latency = LatencyHistogram()
        """Round-trip times of successful Redis calls."""
        self.log: Logger = logger if logger is not None else log
        """The logger of its events."""
        self._tags = TagIndex(self._client, self.namespace, self._call, cluster=self._cluster)
        """The tag indexes (`invalidate_tags`, `prune_tag`, `run_tag_pruner`)."""
        self._locks = LeaseLocks(self._client, self.namespace, self._call)
        """The cross-instance lease locks (`try_lock`, `renew_lock`, `unlock`)."""
        self._sweep = KeyspaceSweep(self._client, self._call, self._writes)
        """The pattern sweeps of `clear_pattern` and `clear`."""
        keys = config.signing_keys()
        self._signing_key = keys[0] if keys else None

    def _signed(self, channel: str, message: bytes) -> bytes:
        """``message`` with its HMAC appended when ``bus_signing_keys`` is set."""
        if self._signing_key is None:
            return message
        return sign(message, channel, self._signing_key)

    @property
    def client(self) -> L2Client:
        """The underlying ``redis.asyncio.Redis`` (``RedisCluster`` in cluster mode) client."""
        return self._client

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> bool:
        """PING the server within ``connect_timeout``; return whether it answered.

        A failure opens the circuit breaker at once, so the first operations after a failed
        start do not each wait for a connect timeout.
        """
        try:
            with anyio.fail_after(self.config.connect_timeout + self._timeout):
                await self._client.ping()
                await self._reads.connect()  # the first read does not pay a handshake
                await self._writes.connect()
        except (TimeoutError, redis_errors.RedisError, *UNAVAILABLE) as exc:
            self._errors += 1
            self.connected = False
            self._breaker.trip()
            self.log.warning(
                "l2_unavailable",
                url=self.config.redacted_url(),
                error=type(exc).__name__,
                detail=str(exc),
            )
            return False
        self.connected = True
        self._breaker.success()
        return True

    async def aclose(self) -> None:
        """Close the connection pool (unless the client was passed in)."""
        self.connected = False
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.connect_timeout):
            await self._reads.aclose()
            await self._writes.aclose()
        if self._owns_client:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.connect_timeout):
                await close_client(self._client)

    async def __aenter__(self) -> RedisCache:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def run_primary_watch(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Sentinel mode: follow a failover even while pooled connections stay open; log
        ``l2_primary_changed`` when the primary changes (see `_clients.watch_primary`).
        Outside Sentinel mode it sleeps forever. Error handling: a failed or slow query to
        the sentinels is skipped until the next round."""
        await watch_primary(
            self._client, self.config, on_changed=self._primary_changed, task_status=task_status
        )

    def _primary_changed(self, old: str, new: str) -> None:
        self.log.warning("l2_primary_changed", old=old, new=new)

    # -- the guarded call ------------------------------------------------------------------

    async def _call(self, op: str, func: Callable[[], Awaitable[T]], bounded: bool = False) -> T:
        """Run one Redis call under the breaker and the operation timeout (``bounded``: ``func``
        keeps it itself, as `ReadBatcher` does, without a timer per call).

        Raises:
            BackendUnavailableError: the breaker is open or the connection failed.
            BackendTimeoutError: the call took longer than ``operation_timeout``.
            BackendError: Redis answered with an error.
        """
        breaker = self._breaker
        if not breaker.allow():
            self._short_circuited += 1
            error = BackendUnavailableError(f"Redis circuit breaker is open ({op} not sent)")
            note_backend_error(op, error)
            raise error
        probe = breaker.state is BreakerState.HALF_OPEN
        started = time.perf_counter_ns()
        try:
            # asyncio.timeout, not anyio.fail_after: a third of the cost per call, and
            # redis.asyncio ties this tier to asyncio anyway.
            if bounded and self._slots is None:
                result = await func()  # its own deadline, no timer here
            else:
                async with asyncio.timeout(self._timeout):
                    if self._slots is None:
                        result = await func()
                    else:
                        async with self._slots:
                            result = await func()
        except TimeoutError as exc:
            self._timeouts += 1
            self._record_failure(op, exc, probe)
            raise BackendTimeoutError(
                f"Redis {op} took longer than operation_timeout={self._timeout}s"
            ) from exc
        except UNAVAILABLE as exc:
            self._record_failure(op, exc, probe)
            raise BackendUnavailableError(f"Redis {op} failed: {exc}") from exc
        except redis_errors.RedisError as exc:
            # The server answered (e.g. OOM, READONLY): the connection itself is fine.
            self._errors += 1
            note_backend_error(op, exc)
            self._record_success(probe)
            self.log.warning("l2_command_error", op=op, error=type(exc).__name__, detail=str(exc))
            raise BackendError(f"Redis {op} failed: {exc}") from exc
        except BaseException:
            breaker.release(probe=probe)
            raise
        self.latency.record(time.perf_counter_ns() - started)
        self._record_success(probe)
        return result

    def _record_failure(self, op: str, exc: BaseException, probe: bool) -> None:
        self._errors += 1
        note_backend_error(op, exc)
        was_connected = self.connected
        self.connected = False
        opened = self._breaker.failure(probe=probe)
        if was_connected or opened:
            self.log.warning(
                "l2_unavailable",
                op=op,
                error=type(exc).__name__,
                detail=str(exc),
                breaker=self._breaker.state.value,
            )

    def _record_success(self, probe: bool = False) -> None:
        recovered = self._breaker.success(probe=probe)
        if not self.connected or recovered:
            self.connected = True
            self.log.info("l2_connected", url=self.config.redacted_url())

    def _decode_entry(self, key: str, payload: bytes | str) -> StoredEntry | None:
        if not isinstance(payload, bytes):  # only with decode_responses=True clients
            self._rejected += 1
            self.log.warning("l2_payload_rejected", key_prefix=key_prefix(key), reason="not bytes")
            return None
        if len(payload) > self.config.max_value_size:
            # Not written by a well-configured instance: someone else wrote it, or this
            # instance's limit is lower than the writer's. Decoding it could cost a lot.
            self._rejected += 1
            self.log.warning(
                "l2_payload_rejected",
                key_prefix=key_prefix(key),
                reason=f"{len(payload)} bytes, over max_value_size={self.config.max_value_size}",
            )
            return None
        try:
            return self.serializer.deserialize_entry(payload)
        except DeserializationError as exc:
            self._rejected += 1
            self.log.warning("l2_payload_rejected", key_prefix=key_prefix(key), reason=str(exc))
            return None

    def _decode(self, key: str, payload: bytes | str) -> Any:
        """The value of a payload if it is valid and fresh, else MISSING."""
        entry = self._decode_entry(key, payload)
        if entry is None or not entry.is_fresh():
            return MISSING
        return entry.value

    def _count(self, value: Any) -> None:
        if value is MISSING:
            self._misses += 1
        else:
            self._hits += 1

    # -- reads -----------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """Return the value of ``key``, or ``default`` on a miss, a bad payload or an outage."""
        validate_key(key)
        return await self.read_value(key, default)

    async def read_value(self, key: str, default: Any) -> Any:
        """`get` of a ``key`` already checked (the read path of `MultiTierCache`, which
        checks it once, at the public boundary)."""
        try:
            name = redis_key(self.namespace, key)
            payload = await self._call("GET", lambda: self._reads.get(name), True)
        except BackendError:
            return default
        value = MISSING if payload is None else self._decode(key, payload)
        self._count(value)
        return default if value is MISSING else value

    async def get_with_ttl(self, key: str) -> tuple[Any, float | None] | None:
        """Return ``(value, remaining_ttl_seconds)`` of ``key`` in one round trip, or ``None``.

        ``remaining_ttl_seconds`` is ``None`` for a key without expiry. Misses, stale
        entries, bad payloads and outages all return ``None``.

        Raises:
            InvalidKeyError: ``key`` is not a valid key.
        """
        validate_key(key)
        found = await self.get_entry_with_ttl(key)
        if found is None:
            return None
        entry, remaining = found
        if not entry.is_fresh():
            return None
        return entry.value, remaining

    async def get_entry_with_ttl(self, key: str) -> tuple[StoredEntry, float | None] | None:
        """Return the stored entry (stale ones too) and its remaining TTL, or ``None``.

        Counts a hit for a fresh entry and a miss otherwise. The read path of
        `MultiTierCache`: ``key`` must be valid (checked once, at the public boundary).
        """
        name = redis_key(self.namespace, key)
        try:
            payload, pttl = await self._call(
                "GET+PTTL", lambda: self._reads.get_with_pttl(name), True
            )
        except BackendError:
            return None
        # pttl == -2: the key expired between GET and PTTL; the value is still a valid read.
        entry = None if payload is None else self._decode_entry(key, payload)
        fresh = entry is not None and entry.is_fresh()
        if fresh:
            self._hits += 1
        else:
            self._misses += 1
        if entry is None:
            return None
        return entry, (None if pttl == -1 else max(pttl, 0) / 1000)

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Return the values of the ``keys`` that hit, with one ``MGET``."""
        wanted = [validate_key(k) for k in keys]
        if not wanted:
            return {}
        names = [redis_key(self.namespace, k) for k in wanted]
        try:
            payloads = await self._call("MGET", lambda: self._mget(names))
        except BackendError:
            return {}
        found: dict[str, Any] = {}
        for key, payload in zip(wanted, payloads, strict=True):
            value = MISSING if payload is None else self._decode(key, payload)
            self._count(value)
            if value is not MISSING:
                found[key] = value
        return found

    async def _mget(self, names: list[str]) -> list[Any]:
        if isinstance(self._client, RedisCluster):
            # One MGET per slot, pipelined per node (a single MGET would be CROSSSLOT).
            return list(await self._client.mget_nonatomic(names))
        return list(await self._client.mget(names))

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists in Redis (``False`` during an outage)."""
        validate_key(key)
        try:
            count = await self._call(
                "EXISTS", lambda: self._client.exists(redis_key(self.namespace, key))
            )
        except BackendError:
            return False
        return bool(count)

    # -- writes ----------------------------------------------------------------------------

    async def set(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` for ``ttl`` seconds (``None``: no expiry); ``False`` on an outage.

        Raises:
            SerializationError: ``value`` cannot be encoded; nothing is written.
            ValueTooLargeError: the encoded value exceeds ``max_value_size``.
        """
        validate_key(key)
        payload = self.serializer.pack(self.serializer.dumps(value, key=key), key=key)
        return await self.set_payload(key, payload, ttl)

    async def set_payload(
        self,
        key: str,
        payload: bytes,
        ttl: float | None,
        *,
        notify: bytes | None = None,
        tags: tuple[str, ...] = (),
    ) -> bool:
        """Store an already encoded payload (from `CacheSerializer`); ``False`` on an outage.

        With ``notify``, the bus message is PUBLISHed in the same round trip, right after
        the SET. Each of ``tags`` gets ``key`` added to its index set (see `invalidate_tags`).
        """
        name = redis_key(self.namespace, key)
        px = _ttl_ms(ttl)
        if notify is not None:
            notify = self._signed(self.config.channel, notify)

        async def call() -> Any:
            if notify is None and not tags:
                return await self._client.set(name, payload, px=px)
            if not tags and not self._cluster:
                set_ = ("SET", name, payload) if px is None else ("SET", name, payload, "PX", px)
                return await self._writes.send(set_, ("PUBLISH", self.config.channel, notify))
            async with self._client.pipeline(transaction=False) as pipe:
                _ = pipe.set(name, payload, px=px)
                self._tags.add(pipe, key, tags, px)
                if notify is not None and not self._cluster:
                    _ = pipe.publish(self.config.channel, notify)
                result = await pipe.execute()
            if notify is not None and self._cluster:
                await self._publish(self.config.channel, notify)
            return result

        try:
            result = await self._call("SET", call)
        except BackendError:
            self._dropped_writes += 1
            return False
        if notify is not None:
            self.published += 1
        if tags:
            self._tags.added(tags, result[1 : 1 + len(tags)])
        return True

    # -- tag index (see `_tags.TagIndex`) ---------------------------------------------------

    async def invalidate_tags(self, tags: Iterable[str], *, batch: int = SCAN_COUNT) -> int:
        """Remove every entry indexed under any of ``tags``, and the indexes; return how many.

        ``SSCAN``, ``SREM`` and ``UNLINK`` in batches, each call under ``operation_timeout``
        (see `_tags.TagIndex.invalidate`). An outage midway is logged; the count so far is
        returned.
        """
        removed, error = await self._tags.invalidate(tags, batch=batch)
        if error is not None:
            self._dropped_writes += 1
            self.log.warning("l2_invalidate_tags_incomplete", removed=removed, error=str(error))
        return removed

    async def prune_tag(self, tag: str, *, batch: int = SCAN_COUNT) -> int:
        """Drop members of ``tag``'s index whose entries are gone; return how many.

        Raises:
            BackendError: Redis failed.
        """
        return await self._tags.prune(tag, batch=batch)

    async def run_tag_pruner(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Prune tag indexes that grew past their threshold, one at a time, forever.

        A tag's index is pruned when it holds more than `TAG_PRUNE_MIN` members and twice
        as many as after its last pruning, so pruning costs O(1) amortised per tagged
        write; each pruning logs ``tag_index_pruned``. Error handling: a Redis failure
        leaves the tag due; the next tagged write wakes the loop again.
        """
        await self._tags.run_pruner(
            batch=SCAN_COUNT, on_pruned=self._tag_pruned, task_status=task_status
        )

    def _tag_pruned(self, tag: str, pruned: int, size: int) -> None:
        self.log.info("tag_index_pruned", tag=tag, pruned=pruned, size=size)

    # -- cross-instance lease lock -----------------------------------------------------------

    async def try_lock(self, key: str, token: str, lease: float) -> bool:
        """Take the lease lock of ``key`` for ``lease`` seconds if nobody else holds it.

        Idempotent per ``token`` (see `_lease.LeaseLocks.try_lock`).

        Raises:
            BackendError: Redis failed.
        """
        return await self._locks.try_lock(key, token, lease)

    async def renew_lock(self, key: str, token: str, lease: float) -> bool:
        """Extend our lease of ``key``'s lock; ``False`` if it is no longer ours.

        Raises:
            BackendError: Redis failed.
        """
        return await self._locks.renew(key, token, lease)

    async def unlock(self, key: str, token: str) -> bool:
        """Release ``key``'s lock if we still hold it (compare-and-delete); a failure
        returns ``False`` (the lease expires by itself)."""
        return await self._locks.unlock(key, token)

    async def set_many(self, items: Mapping[str, Any], ttl: float | None = None) -> bool:
        """Store every item in one pipeline; ``False`` on an outage.

        All values are encoded before anything is sent, so one bad value writes nothing.

        Raises:
            SerializationError: a value cannot be encoded; nothing is written.
            ValueTooLargeError: an encoded value exceeds ``max_value_size``.
        """
        encoded = [
            (validate_key(k), self.serializer.pack(self.serializer.dumps(v, key=k), key=k), ttl)
            for k, v in items.items()
        ]
        return await self.set_payloads(encoded)

    async def set_payloads(
        self,
        items: Sequence[tuple[str, bytes, float | None]],
        *,
        raise_errors: bool = False,
    ) -> bool:
        """Store already encoded ``(key, payload, ttl)`` items in one pipelined round trip.

        Each item keeps its own TTL (``None``: no expiry). Nothing is PUBLISHed: this is the
        cache warmer's fill path. Keys are not validated here (the caller did).

        Raises:
            BackendError: Redis failed, timed out or the breaker is open; only with
                ``raise_errors=True``, otherwise an outage returns ``False``.
        """
        if not items:
            return True
        commands = [(redis_key(self.namespace, k), p, _ttl_ms(t)) for k, p, t in items]

        async def write() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                for name, payload, px in commands:
                    _ = pipe.set(name, payload, px=px)
                _ = await pipe.execute()

        try:
            await self._call("SET*", write)
        except BackendError:
            self._dropped_writes += 1
            if raise_errors:
                raise
            return False
        return True

    async def delete(self, key: str, *, notify: bytes | None = None) -> bool:
        """Remove ``key``; return whether it existed (``False`` on an outage too).

        With ``notify``, the bus message is PUBLISHed in the same round trip, right after
        the UNLINK.
        """
        validate_key(key)
        name = redis_key(self.namespace, key)
        if notify is not None:
            notify = self._signed(self.config.channel, notify)

        async def call() -> Any:
            if notify is None:
                return await self._client.unlink(name)
            if self._cluster:
                count = await self._client.unlink(name)
                await self._publish(self.config.channel, notify)
                return count
            publish = ("PUBLISH", self.config.channel, notify)
            return (await self._writes.send(("UNLINK", name), publish))[0]

        try:
            count = await self._call("UNLINK", call)
        except BackendError:
            self._dropped_writes += 1
            return False
        if notify is not None:
            self.published += 1
        return bool(count)

    async def ping(self) -> bool:
        """Whether Redis answers a PING now (through the breaker, under the timeout)."""
        try:
            await self._call("PING", self._client.ping)
        except BackendError:
            return False
        return True

    async def publish(self, channel: str, message: bytes) -> int:
        """PUBLISH ``message`` on ``channel``; return how many subscribers received it.

        With ``bus_signing_keys``, the message is signed first (as are the ``notify``
        messages of `set_payload` and `delete`).

        Raises:
            BackendError: Redis failed, timed out, or the breaker is open.
        """
        message = self._signed(channel, message)
        receivers = await self._call(self._publish_command, lambda: self._publish(channel, message))
        self.published += 1
        return receivers

    async def _publish(self, channel: str, message: bytes) -> int:
        """PUBLISH (SPUBLISH in a sharded cluster bus); in a cluster with ``broadcast``, the
        count is of the receiving node's subscribers only."""
        if self._publish_command == "SPUBLISH":
            return int(await self._client.spublish(channel, message))
        return int(await self._client.publish(channel, message))

    async def delete_many(self, keys: Iterable[str], *, raise_errors: bool = False) -> int:
        """Remove ``keys`` with one ``UNLINK``; return how many existed.

        Raises:
            BackendError: only with ``raise_errors=True``; otherwise an outage returns 0.
        """
        names = [redis_key(self.namespace, validate_key(k)) for k in keys]
        if not names:
            return 0
        try:
            count = await self._call("UNLINK", lambda: self._client.unlink(*names))
        except BackendError:
            self._dropped_writes += 1
            if raise_errors:
                raise
            return 0
        return int(count)

    async def clear_pattern(
        self, pattern: str, *, raise_errors: bool = False, notify: bytes | None = None
    ) -> int:
        """Remove this namespace's keys matching the glob ``pattern``; return how many.

        Runs ``SCAN MATCH`` + ``UNLINK`` in batches of `SCAN_COUNT`, each call under
        ``operation_timeout``, so the server is never blocked (no ``KEYS``); on one server
        each batch is one script (`_sweep`). If Redis fails midway, the keys removed so far
        are counted and the failure is logged (or, with ``raise_errors=True``, raised as
        `BackendError`).

        With ``notify``, the bus message is PUBLISHed after the last UNLINK (on one server
        by the last batch's script, in the same round trip), and after a failure midway
        too: the other instances must drop copies of what was removed.
        """
        validate_pattern(pattern)
        match = f"{escape_glob(self.namespace)}:{pattern}"
        channel = self.config.channel
        signed = None if notify is None else (channel, self._signed(channel, notify))
        progress = Progress()
        failure: BackendError | None = None
        try:
            await self._sweep.sweep(match, progress, signed)
        except BackendError as exc:
            failure = exc
            self._dropped_writes += 1
        if progress.published:
            self.published += 1
        elif signed is not None:
            # After a failure midway too. A script whose reply timed out may still have
            # published on the server: then the message goes twice, harmlessly (a drop is
            # idempotent), and never before the last UNLINK (the script is atomic).
            with contextlib.suppress(BackendError):  # counted by _call
                await self._call(self._publish_command, lambda: self._publish(*signed))
                self.published += 1
        if failure is not None:
            if raise_errors:
                raise failure
            self.log.warning(
                "l2_clear_pattern_incomplete",
                pattern_prefix=key_prefix(pattern),
                removed=progress.removed,
                error=str(failure),
            )
        return progress.removed

    async def clear(self) -> int:
        """Remove every key of this namespace (never another namespace's); return how many.

        The namespace's tag indexes go too; the count is of cache entries only.
        """
        removed = await self.clear_pattern("*")
        with contextlib.suppress(BackendError):
            await self._sweep.sweep(f"{escape_glob(self.namespace)}#tag:*", Progress())
        return removed

    # -- stats -----------------------------------------------------------------------------

    @property
    def breaker_state(self) -> BreakerState:
        """The circuit breaker's state."""
        return self._breaker.state

    def stats(self) -> L2Stats:
        """The counters, without asking Redis anything."""
        total = self._hits + self._misses
        return {
            "hits": self._hits,
            "misses": self._misses,
            "hit_rate": self._hits / total if total else 0.0,
            "connected": self.connected,
            "errors": self._errors,
            "timeouts": self._timeouts,
            "rejected_payloads": self._rejected,
            "short_circuited": self._short_circuited,
            "dropped_writes": self._dropped_writes,
            "breaker": self._breaker.state.value,
            "url": self.config.redacted_url(),
        }

    async def get_stats(self) -> L2Stats:
        """The seed's ``l2_cache`` statistics (hits, misses, hit_rate, connected, errors, ...)."""
        return self.stats()
