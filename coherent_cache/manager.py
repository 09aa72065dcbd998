"""CacheManager, the per-instance coordinator, and create_cache_manager."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, Self, TypedDict, final

import anyio
import structlog
from redis.asyncio import Redis

from ._supervisor import Supervisor, TaskInfo
from .bus import BusMessage, BusOp, InvalidationBus, make_origin
from .config import CacheConfig, CacheTier
from .errors import CacheClosedError, CacheError
from .l1 import ActorStats, FlushAll, InMemoryCache, InvalidateKeys, InvalidatePattern, L1Actor
from .l2 import RedisCache
from .multitier import MultiTierCache, TierStats
from .serializer import CacheSerializer
from .types import TTL, USE_DEFAULT

__all__ = ["BusInfo", "CacheManager", "CacheStats", "HealthReport", "create_cache_manager"]

log = structlog.get_logger("coherent_cache")


class BusInfo(TypedDict):
    """The invalidation bus in `CacheStats`: the subscriber, publishing and the L1 mailbox."""

    enabled: bool
    connected: bool
    channel: str | None
    origin: str
    published: int
    received: int
    applied: int
    own_skipped: int
    dropped: int
    losses: int
    recoveries: int
    connect_attempts: int
    last_loss_at: float | None
    last_recovery_at: float | None
    mailbox: ActorStats


class CacheStats(TierStats):
    """Everything `CacheManager.get_stats` reports: the seed's shape plus bus and tasks."""

    bus: BusInfo
    tasks: dict[str, TaskInfo]


class HealthReport(TypedDict):
    """What `CacheManager.health` returns."""

    status: Literal["healthy", "degraded", "unhealthy"]
    reasons: list[str]
    l2_connected: bool | None
    bus_connected: bool | None
    tasks: dict[str, TaskInfo]


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


@final
class CacheManager(anyio.AsyncContextManagerMixin):
    """The cache of one app instance: an L1 in memory and, when configured, a Redis L2.

    Use it as ``async with create_cache_manager(config) as cache:`` or call `start` and
    `stop` yourself (in the same task, as FastAPI's lifespan does). Operations before
    ``start()`` or after ``stop()`` raise `CacheClosedError`. Redis being down never makes
    an operation raise: reads fall back to L1, writes go to L1, and the failure is counted
    in `get_stats`.

    Args:
        config: the settings; `CacheConfig.from_env` when omitted.
        redis_client: a ready ``redis.asyncio.Redis`` to use for the L2 (tests, custom
            connection setups); the manager does not close it.
        timer: the monotonic clock of the L1 TTLs and the circuit breaker (tests).
    """

    def __init__(
        self,
        config: CacheConfig | None = None,
        *,
        redis_client: Redis | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config if config is not None else CacheConfig.from_env()
        cfg = self.config
        self._state = _State.NEW
        self.serializer = CacheSerializer(
            compression=cfg.enable_compression,
            threshold=cfg.compression_threshold,
            algorithm=cfg.compression_algorithm,
            max_size=cfg.max_value_size,
        )
        self.l1 = InMemoryCache(
            cfg.memory_cache_size, cfg.memory_cache_ttl, cfg.memory_cache_strategy, timer=timer
        )
        self.l2: RedisCache | None = None
        if cfg.enable_multi_tier and (cfg.redis_url is not None or redis_client is not None):
            self.l2 = RedisCache(cfg, client=redis_client, serializer=self.serializer, timer=timer)
        self.origin = make_origin(cfg.origin_prefix)
        """This instance's id on the bus; it skips messages carrying it."""
        self._timer = timer
        self.bus: InvalidationBus | None = None
        use_bus = self.l2 is not None and cfg.enable_invalidation_bus and cfg.redis_url is not None
        self._cache = MultiTierCache(
            self.l1,
            self.l2,
            serializer=self.serializer,
            default_ttl=cfg.default_ttl,
            namespace=cfg.namespace,
            origin=self.origin,
            publish=use_bus,
        )
        self._actor = L1Actor(self._cache, mailbox_size=cfg.l1_mailbox_size)
        if use_bus:
            self.bus = InvalidationBus(
                cfg,
                origin=self.origin,
                on_message=self._on_bus_message,
                on_subscribed=self._on_bus_subscribed,
                on_lost=self._on_bus_lost,
                timer=timer,
            )
        self._supervisor: Supervisor | None = None
        self._host: asyncio.Task[None] | None = None
        self._stop_requested = anyio.Event()

    def __repr__(self) -> str:
        return (
            f"<CacheManager namespace={self.config.namespace!r} state={self._state.value} "
            f"l2={self.config.redacted_url() if self.l2 is not None else None!r}>"
        )

    @property
    def running(self) -> bool:
        """Whether the manager has been started and not stopped."""
        return self._state is _State.RUNNING

    # -- bus callbacks (run on the bus listener's task) --------------------------------------

    def _on_bus_message(self, message: BusMessage) -> None:
        if message.op is BusOp.DELETE:
            self._actor.submit(InvalidateKeys(message.keys))
        elif message.op is BusOp.CLEAR_PATTERN:
            assert message.pattern is not None
            self._actor.submit(InvalidatePattern(message.pattern))
        else:
            self._actor.submit(FlushAll())

    def _on_bus_subscribed(self) -> None:
        # Messages sent while we were not subscribed are gone: nothing in L1, and no fill
        # that started before now, can be trusted. Flush, then trust L1 again.
        self._cache.invalidate_local_all()
        self.l1.trust()

    def _on_bus_lost(self, when: float) -> None:
        self.l1.distrust(when, self.config.max_stale_on_bus_loss)

    # -- lifecycle -------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[Self]:
        if self._state is _State.CLOSED:
            raise CacheClosedError(
                "this CacheManager was stopped; create a new one instead of restarting it"
            )
        cfg = self.config
        try:
            async with anyio.create_task_group() as tg:
                supervisor = self._supervisor = Supervisor(
                    tg, backoff_max=cfg.reconnect_backoff_max
                )
                connected = False
                if self.l2 is not None:
                    connected = await self.l2.connect()
                if self.bus is not None:
                    # Until the first subscription is confirmed, invalidations could be
                    # missed: L1 entries are bounded like during a bus loss.
                    self.l1.distrust(self._timer(), cfg.max_stale_on_bus_loss)
                    await supervisor.start("l1_actor", self._actor.run)
                    if connected:
                        await supervisor.start("bus_listener", self.bus.run)
                    else:
                        supervisor.start_soon("bus_listener", self.bus.run)
                log.info(
                    "cache_started",
                    namespace=cfg.namespace,
                    l2=cfg.redacted_url() if self.l2 is not None else None,
                    connected=connected,
                    bus=self.bus.connected if self.bus is not None else None,
                    origin=self.origin,
                )
                self._state = _State.RUNNING
                try:
                    yield self
                finally:
                    self._state = _State.CLOSED
                    tg.cancel_scope.cancel()
        finally:
            self._state = _State.CLOSED
            for info in self._supervisor.tasks.values() if self._supervisor else ():
                if info["state"] != "failed":
                    info["state"] = "stopped"
            if self.bus is not None:
                self.bus.connected = False
            with anyio.CancelScope(shield=True):
                await self._actor.aclose()
                if self.l2 is not None:
                    await self.l2.aclose()
            log.info("cache_stopped", namespace=cfg.namespace)

    async def start(self) -> None:
        """Connect to Redis (if configured), subscribe to the bus and accept operations.

        Returns once L2 answered a PING and the bus subscription is confirmed, or once
        Redis proved unreachable within about ``connect_timeout``; then the manager serves
        from L1 and reconnects by itself. Calling it on a running manager does nothing.

        The background tasks run in a host task of the manager's own (the manager's
        ``async with`` block in that task), so `start` and `stop` may be called from
        different tasks and inside any cancel scope, as FastAPI's startup and shutdown
        handlers do. ``async with manager:`` runs them in the caller's task instead.

        Raises:
            CacheClosedError: the manager was stopped before.
        """
        if self._state is _State.RUNNING:
            return
        if self._state is _State.CLOSED:
            raise self._closed_error()
        if self._host is not None:
            raise CacheError("start() is already in progress in another task")
        ready = anyio.Event()
        self._stop_requested = anyio.Event()
        failure: list[BaseException] = []

        async def host() -> None:
            try:
                async with self:
                    ready.set()
                    await self._stop_requested.wait()
            except Exception as exc:
                failure.append(exc)
            finally:
                ready.set()

        self._host = asyncio.get_running_loop().create_task(
            host(), name=f"coherent_cache:{self.config.namespace}"
        )
        try:
            await ready.wait()
        except BaseException:
            self._host.cancel()
            raise
        if failure:
            self._host = None
            raise failure[0]

    async def stop(self) -> None:
        """Stop background tasks and close connections; idempotent.

        Returns within a bounded time (cancelled tasks close their connections with a
        1 s limit each). Later operations raise `CacheClosedError`.
        """
        host = self._host
        if host is not None:
            self._host = None
            self._stop_requested.set()
            with anyio.CancelScope(shield=True), anyio.move_on_after(10) as scope:
                await host
            if scope.cancelled_caught:
                host.cancel()
                log.error("cache_stop_timed_out", namespace=self.config.namespace)
        elif self._state is _State.RUNNING:
            await self.__aexit__(None, None, None)
        self._state = _State.CLOSED

    async def aclose(self) -> None:
        """Same as `stop`."""
        await self.stop()

    def _closed_error(self) -> CacheClosedError:
        if self._state is _State.NEW:
            return CacheClosedError(
                "CacheManager is not started: call 'await cache.start()' or use "
                "'async with create_cache_manager(config) as cache:'"
            )
        return CacheClosedError("CacheManager is stopped; create a new one")

    # -- operations ------------------------------------------------------------------------

    async def get(self, key: str, tier: CacheTier = CacheTier.BOTH, *, default: Any = None) -> Any:
        """Return the cached value of ``key``, or ``default`` (``None``) when absent.

        With ``tier=BOTH`` an L1 miss reads L2 and copies the value into L1 for at most its
        remaining L2 TTL (capped by ``memory_cache_ttl``).

        Raises:
            InvalidKeyError: ``key`` is not a non-empty str of at most 1024 bytes.
            CacheClosedError: the manager is not running.
        """
        if self._state is not _State.RUNNING:
            raise self._closed_error()
        return await self._cache.get(key, tier, default=default)

    async def set(
        self, key: str, value: Any, ttl: TTL = USE_DEFAULT, tier: CacheTier = CacheTier.BOTH
    ) -> bool:
        """Store ``value`` under ``key`` for ``ttl`` seconds.

        ``ttl`` defaults to ``default_ttl``; ``None`` means no expiry in L2 (L1 entries
        still live at most ``memory_cache_ttl``). Returns ``False`` if a requested L2 write
        failed (Redis down); the L1 write still happened.

        Raises:
            InvalidKeyError, InvalidTTLError: bad arguments; nothing is written.
            SerializationError: ``value`` is not JSON-encodable; nothing is written.
            ValueTooLargeError: the encoded value exceeds ``max_value_size``.
            CacheClosedError: the manager is not running.
        """
        if self._state is not _State.RUNNING:
            raise self._closed_error()
        return await self._cache.set(key, value, ttl, tier)

    async def delete(self, key: str, tier: CacheTier = CacheTier.BOTH) -> bool:
        """Remove ``key``; return whether a tier held it. This instance's L1 forgets it now."""
        if self._state is not _State.RUNNING:
            raise self._closed_error()
        return await self._cache.delete(key, tier)

    async def clear_pattern(self, pattern: str, tier: CacheTier = CacheTier.BOTH) -> int:
        """Remove keys matching the Redis glob ``pattern`` (``user:*``) from this namespace.

        L2 is cleared with SCAN + UNLINK batches, never KEYS. Returns the number of L2 keys
        removed (L1 keys when running on L1 alone).
        """
        if self._state is not _State.RUNNING:
            raise self._closed_error()
        return await self._cache.clear_pattern(pattern, tier)

    async def clear(self, tier: CacheTier = CacheTier.BOTH) -> int:
        """Remove every key of this namespace (other namespaces are untouched)."""
        if self._state is not _State.RUNNING:
            raise self._closed_error()
        return await self._cache.clear(tier)

    def stats(self) -> CacheStats:
        """Like `get_stats`, synchronously."""
        tiers = self._cache.stats()
        if self.bus is not None:
            sub = self.bus.stats()
            bus: BusInfo = {
                "enabled": True,
                "connected": sub["connected"],
                "channel": sub["channel"],
                "origin": self.origin,
                "published": self.l2.published if self.l2 is not None else 0,
                "received": sub["received"],
                "applied": sub["applied"],
                "own_skipped": sub["own_skipped"],
                "dropped": sub["dropped"],
                "losses": sub["losses"],
                "recoveries": sub["recoveries"],
                "connect_attempts": sub["connect_attempts"],
                "last_loss_at": sub["last_loss_at"],
                "last_recovery_at": sub["last_recovery_at"],
                "mailbox": self._actor.stats(),
            }
        else:
            bus = {
                "enabled": False,
                "connected": False,
                "channel": None,
                "origin": self.origin,
                "published": 0,
                "received": 0,
                "applied": 0,
                "own_skipped": 0,
                "dropped": 0,
                "losses": 0,
                "recoveries": 0,
                "connect_attempts": 0,
                "last_loss_at": None,
                "last_recovery_at": None,
                "mailbox": self._actor.stats(),
            }
        tasks: dict[str, TaskInfo] = {}
        if self._supervisor is not None:
            tasks = {name: TaskInfo(**info) for name, info in self._supervisor.tasks.items()}
        return {**tiers, "bus": bus, "tasks": tasks}

    async def get_stats(self) -> CacheStats:
        """Statistics in the seed's shape (``l1_cache``, ``l2_cache``, ``total_*``) plus
        ``bus`` (messages published / received / dropped, connection, losses, recoveries,
        the L1 mailbox) and ``tasks`` (state and restarts of each background task).

        Works in any state, so a health endpoint can report a stopped cache.
        """
        return self.stats()

    async def health(self) -> HealthReport:
        """``healthy`` when L2 answers, the bus is subscribed and no background task died.

        Redis unreachable or the bus down is ``degraded`` (L1 still serves, within the
        bus-loss bound); a stopped manager or a background task given up after repeated
        crashes is ``unhealthy``. Hit rates and past error counts are stats, not health.
        The L2 check is one PING under ``operation_timeout`` (short-circuited while the
        breaker is open); the report turns healthy again by itself after recovery.
        """
        reasons: list[str] = []
        unhealthy = False
        if self._state is not _State.RUNNING:
            unhealthy = True
            reasons.append(f"cache manager is {self._state.value}")
        l2_ok: bool | None = None
        if self.l2 is not None and self._state is _State.RUNNING:
            l2_ok = await self.l2.ping()
            if not l2_ok:
                reasons.append("redis unreachable: serving from L1 and loaders")
        bus_ok: bool | None = None
        if self.bus is not None:
            bus_ok = self.bus.connected
            if not bus_ok and self._state is _State.RUNNING:
                reasons.append(
                    "invalidation bus disconnected: L1 entries are served at most "
                    f"{self.config.max_stale_on_bus_loss:g}s after the loss"
                )
        tasks = self.stats()["tasks"]
        for name in self._supervisor.failed() if self._supervisor is not None else []:
            unhealthy = True
            reasons.append(f"background task {name} failed: {tasks[name]['last_error']}")
        status: Literal["healthy", "degraded", "unhealthy"] = (
            "unhealthy" if unhealthy else "degraded" if reasons else "healthy"
        )
        return {
            "status": status,
            "reasons": reasons,
            "l2_connected": l2_ok,
            "bus_connected": bus_ok,
            "tasks": tasks,
        }

    @property
    def multi_tier(self) -> MultiTierCache:
        """The `MultiTierCache` this manager drives."""
        return self._cache


def create_cache_manager(config: CacheConfig | None = None) -> CacheManager:
    """Build a `CacheManager` (not started) from ``config``, or from the environment.

    Args:
        config: the settings; when omitted, `CacheConfig.from_env` reads
            ``COHERENT_CACHE_*`` variables over the defaults.
    """
    return CacheManager(config)
