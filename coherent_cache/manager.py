"""CacheManager, the per-instance coordinator, and create_cache_manager."""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast, final, overload

import anyio
from anyio.abc import TaskGroup
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider
from opentelemetry.util.types import AttributeValue
from redis.asyncio import Redis

from . import fleet as _fleet
from ._first_use import FirstUseMethods
from ._host import DetachedHost
from ._invalidation import TrustGate, make_bus
from ._loader import LoadEngine, LoadPolicy
from ._log import get_logger
from ._supervisor import Supervisor
from ._telemetry import LatencyStats, Telemetry
from ._tracking import ClientTracking
from ._typed import value_decoder
from .bus import InvalidationBus, make_origin
from .config import CacheConfig, CacheTier
from .errors import CacheClosedError
from .keys import validate_key
from .l1 import InMemoryCache, L1Actor
from .l2 import RedisCache
from .monitoring import (
    BusInfo,
    CacheMonitor,
    CacheStats,
    HealthReport,
    LatencyInfo,
    LoaderStats,
    check_health,
    collect_stats,
)
from .multitier import MultiTierCache
from .serializer import CacheSerializer
from .types import MISSING, NOT_LOOKED, TTL, USE_DEFAULT, UseDefault

if TYPE_CHECKING:  # imported on first use: a plain get/set never needs it
    from .warming import CacheWarmer

__all__ = [
    "BusInfo",
    "CacheManager",
    "CacheStats",
    "HealthReport",
    "LatencyInfo",
    "LatencyStats",
    "LoaderStats",
    "create_cache_manager",
]

R = TypeVar("R")
D = TypeVar("D")
T = TypeVar("T")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


@final
class CacheManager(FirstUseMethods, anyio.AsyncContextManagerMixin):
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
        tracer_provider: OpenTelemetry tracer provider for the spans; the global one
            when omitted (picked up even if the application sets it later).
        meter_provider: OpenTelemetry meter provider for the metrics; the global one
            when omitted.
    """

    def __init__(
        self,
        config: CacheConfig | None = None,
        *,
        redis_client: Redis | None = None,
        timer: Callable[[], float] = time.monotonic,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.config = config if config is not None else CacheConfig.from_env()
        cfg = self.config
        self._state = _State.NEW
        self.serializer = CacheSerializer.from_config(cfg)
        self.l1 = InMemoryCache.from_config(cfg, timer=timer)
        self.origin = make_origin(cfg.origin_prefix)
        """This instance's id on the bus; it skips messages carrying it."""
        # structlog when the app configured it (checked per event), else stdlib logging.
        self.log = get_logger(namespace=cfg.namespace, origin=self.origin)
        """The ``coherent_cache`` logger with this instance's namespace and origin bound."""
        self.l2: RedisCache | None = None
        if cfg.enable_multi_tier and (cfg.redis_url is not None or redis_client is not None):
            self.l2 = RedisCache(
                cfg, client=redis_client, serializer=self.serializer, timer=timer, logger=self.log
            )
        self._telemetry = Telemetry(
            namespace=cfg.namespace,
            redis_url=cfg.redis_url if self.l2 is not None else None,
            trace_full_keys=cfg.trace_full_keys,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
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
            unconfirmed_write_ttl=cfg.max_stale_on_bus_loss if use_bus else None,
            copy_on_read=cfg.l1_copy_on_read,
        )
        self._actor = L1Actor(self._cache, mailbox_size=cfg.l1_mailbox_size, logger=self.log)
        self._trust = TrustGate(self.l1, cfg.max_stale_on_bus_loss)
        if use_bus:
            self.bus = make_bus(
                cfg, origin=self.origin, actor=self._actor, trust=self._trust.channel("bus"),
                telemetry=self._telemetry, on_subscribed=self._on_bus_subscribed, timer=timer,
                logger=self.log,
            )  # fmt: skip
        self.tracking: ClientTracking | None = None
        """Client tracking (``client_tracking=True`` with a ``redis_url``), else ``None``."""
        if cfg.client_tracking and self.l2 is not None and cfg.redis_url is not None:
            self.tracking = ClientTracking(
                cfg, actor=self._actor, flush=self._cache.invalidate_local_all,
                gate=self._trust, timer=timer, logger=self.log,
            )  # fmt: skip
        self.monitor: CacheMonitor | None = None
        """The monitor started with the manager when ``enable_monitoring`` is on."""
        self._supervisor: Supervisor | None = None
        self._tg: TaskGroup | None = None
        self._loader = LoadEngine(
            self._cache, config=cfg, telemetry=self._telemetry, logger=self.log, timer=timer,
            closed_error=self._closed_error,
        )  # fmt: skip
        self._warmer: CacheWarmer | None = None
        self._host = DetachedHost(f"coherent_cache:{cfg.namespace}", self.log)

    def __repr__(self) -> str:
        return (
            f"<CacheManager namespace={self.config.namespace!r} state={self._state.value} "
            f"l2={self.config.redacted_url() if self.l2 is not None else None!r}>"
        )

    @property
    def running(self) -> bool:
        """Whether the manager has been started and not stopped."""
        return self._state is _State.RUNNING

    def _on_bus_subscribed(self) -> None:  # the bus's on_subscribed, on its listener task
        # Messages sent while we were not subscribed are gone: nothing in L1, and no fill
        # that started before now, can be trusted. Flush, then trust L1 again.
        self._cache.invalidate_local_all()
        self._trust.up("bus")

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
                self._tg = tg
                supervisor = self._supervisor = Supervisor(
                    tg, backoff_max=cfg.reconnect_backoff_max, logger=self.log
                )
                connected = False
                if self.l2 is not None:
                    connected = await self.l2.connect()
                    supervisor.start_soon("tag_pruner", self.l2.run_tag_pruner)
                    if cfg.redis_mode == "sentinel":
                        supervisor.start_soon("primary_watch", self.l2.run_primary_watch)
                # Until a channel's first subscription (awaited one more connect deadline if
                # Redis answered), missed invalidations bound L1 entries as a bus loss does.
                within = (cfg.connect_timeout + cfg.operation_timeout) if connected else 0.0
                channels = [
                    (n, c) for n, c in (("bus", self.bus), ("tracking", self.tracking)) if c
                ]
                for name, _ in channels:
                    self._trust.down(name, self._timer())
                if channels:
                    await supervisor.start("l1_actor", self._actor.run)
                for name, channel in channels:
                    run = functools.partial(channel.run, ready_within=within)
                    if connected:
                        await supervisor.start("bus_listener" if name == "bus" else name, run)
                    else:
                        supervisor.start_soon("bus_listener" if name == "bus" else name, run)
                self._telemetry.recheck()
                self._telemetry.register(self._stats_for_metrics)
                self.log.info(
                    "cache_started",
                    l2=cfg.redacted_url() if self.l2 is not None else None,
                    connected=connected,
                    bus=self.bus.connected if self.bus is not None else None,
                    origin=self.origin,
                )
                self._state = _State.RUNNING
                self._loader.open(tg)
                _fleet.start_reporter(self, supervisor)
                if cfg.enable_monitoring:
                    self.monitor = CacheMonitor(self, interval=cfg.monitoring_interval)
                    await self.monitor.start_monitoring()
                if self._warmer is not None:  # warmers scheduled before start
                    self._warmer.launch_schedules(supervisor)
                try:
                    yield self
                finally:
                    self._close()
                    tg.cancel_scope.cancel()
        finally:
            self._close()
            self._telemetry.unregister()
            if self._supervisor is not None:
                self._supervisor.mark_stopped()
            if self.bus is not None:
                self.bus.connected = False
            with anyio.CancelScope(shield=True):
                await self._actor.aclose()
                if self.l2 is not None:
                    await self.l2.aclose()
            self.log.info("cache_stopped")

    async def start(self) -> None:
        """Connect to Redis (if configured), subscribe to the bus and accept operations.

        Returns once L2 answered a PING and the bus subscription is confirmed, or once
        Redis proved unreachable within about ``connect_timeout`` (then it serves from L1
        and reconnects by itself); a no-op when running. Runs in a host task of its own,
        so `start` and `stop` may be called from different tasks (FastAPI's handlers).

        Raises:
            CacheClosedError: the manager was stopped before.
        """
        if self._state is _State.RUNNING:
            return
        if self._state is _State.CLOSED:
            raise self._closed_error()
        await self._host.start(self)

    async def stop(self) -> None:
        """Stop background tasks and close connections, within a bounded time; idempotent.

        Later operations raise `CacheClosedError`. Inside ``async with manager:`` it only
        closes the manager to new operations; the block's exit releases everything.
        """
        await self._host.stop()
        self._close()

    def _close(self) -> None:
        """Refuse new operations (the task group, if any, is released by its owner)."""
        self._state = _State.CLOSED
        self._tg = None
        self._loader.close()

    aclose = stop  # the anyio / redis-py name

    def _check_running(self) -> None:
        if self._state is not _State.RUNNING:
            raise self._closed_error()

    def _closed_error(self) -> CacheClosedError:
        if self._state is _State.NEW:
            return CacheClosedError(
                "CacheManager is not started: call 'await cache.start()' or use "
                "'async with create_cache_manager(config) as cache:'"
            )
        return CacheClosedError("CacheManager is stopped; create a new one")

    # -- operations ------------------------------------------------------------------------

    @overload
    async def get(self, key: str, tier: CacheTier = ..., *, default: Any = ...) -> Any: ...
    @overload
    async def get(self, key: str, tier: CacheTier = ..., *, value_type: type[R]) -> R | None: ...
    @overload
    async def get(
        self, key: str, tier: CacheTier = ..., *, default: D, value_type: type[R]
    ) -> R | D: ...
    async def get(
        self, key: str, tier: CacheTier = CacheTier.BOTH, *, default: Any = None,
        value_type: Any = None,
    ) -> Any:  # fmt: skip
        """Return the cached value of ``key``, or ``default`` (``None``) when absent.

        With ``tier=BOTH`` an L1 miss reads L2 and copies the value into L1 for at most its
        remaining L2 TTL (capped by ``memory_cache_ttl``). With ``value_type``, the value is
        decoded as that type (an L2 value before it enters L1; an L1 value is validated, an
        instance passing as is); one that does not validate is a miss.

        Raises:
            InvalidKeyError: ``key`` is not a non-empty str of at most 1024 bytes.
            CacheClosedError: the manager is not running.
            ConfigurationError: pydantic cannot decode ``value_type``.
        """
        if self._state is not _State.RUNNING:
            raise self._closed_error()
        tel = self._telemetry
        if value_type is not None:  # traced like the rest, when telemetry is on
            decoded = value_decoder(value_type)
            return await self._cache.get(key, tier, default=default, decode=decoded, tel=tel)
        if tel.active:
            return await self._cache.get_traced(key, tier, default, tel)
        # Telemetry.poll() inlined: this is the L1-hit path.
        tel.countdown -= 1
        if tel.countdown <= 0 and tel.recheck():
            return await self._cache.get_traced(key, tier, default, tel)
        cache = self._cache
        if tier is not CacheTier.L2:
            value = cache.peek(key)
            if value is not MISSING:
                return value
        validate_key(key)
        found = await cache.read(key, tier)
        return default if found is None else found[0]

    async def set(
        self,
        key: str,
        value: Any,
        ttl: TTL = USE_DEFAULT,
        tier: CacheTier = CacheTier.BOTH,
        *,
        tags: Iterable[str] = (),
    ) -> bool:
        """Store ``value`` under ``key`` for ``ttl`` seconds.

        ``ttl`` defaults to ``default_ttl``; ``None`` means no expiry in L2 (L1 entries
        still live at most ``memory_cache_ttl``). Returns ``False`` if a requested L2 write
        failed (Redis down); the L1 write still happened. Without an L2 write, ``False``
        if L1 did not keep it (above 1/8 of ``memory_cache_max_bytes``). ``tags`` let
        `invalidate_tags` remove the entry later.

        Raises:
            InvalidKeyError, InvalidTTLError: bad arguments; nothing is written.
            SerializationError: ``value`` is not JSON-encodable; nothing is written.
            ValueTooLargeError: the encoded value exceeds ``max_value_size``.
            CacheClosedError: the manager is not running.
        """
        self._check_running()
        return await self._op(
            "set", "cache.stored", self._cache.set(key, value, ttl, tier, tags=tags), key=key
        )

    async def invalidate_tags(self, *tags: str) -> int:
        """Remove every entry carrying any of ``tags`` from every tier and every instance.

        Returns the number of L2 entries removed (L1 entries without an L2). This
        instance's L1 forgets them before this returns; others follow within the bus
        latency (a ``tags`` bus message).

        Raises:
            InvalidKeyError: a tag is not a valid tag.
        """
        self._check_running()
        return await self._op(
            "invalidate_tags",
            "cache.removed",
            self._cache.invalidate_tags(*tags),
            attributes={"cache.tag_count": len(tags)},
        )

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[R]],
        ttl: TTL | Callable[[R], float | None] = USE_DEFAULT,
        tier: CacheTier = CacheTier.BOTH,
        *,
        tags: Iterable[str] = (),
        lock: bool | None = None,
        stale_ttl: float | None = None,
        loader_timeout: float | None = None,
        cache_none: bool = True,
        should_cache: Callable[[Any], bool] | None = None,
        ttl_jitter: float = 0.0,
        value_type: type[R] | None = None,
        loader_hard_timeout: float | UseDefault | None = USE_DEFAULT,
        refresh_ahead: float | UseDefault | None = USE_DEFAULT,
        none_ttl: float | UseDefault | None = USE_DEFAULT,
    ) -> R:
        """Return the cached value of ``key``, or run ``loader`` once, cache and return it.

        - **Single-flight**: concurrent callers of a missing key in this instance share one
          loader call (run in the manager's task group, so a cancelled caller does not
          cancel it for the others) and its result or exception (never cached).
        - ``lock=True``: at most once across instances too, under a Redis lease lock;
          others poll for the value up to ``lock_timeout``, then load anyway.
        - ``stale_ttl``: stale-while-revalidate and fail-safe; ``loader_timeout`` bounds
          how long a caller holding a stale value waits for the refresh.
        - ``loader_hard_timeout``, ``refresh_ahead`` (`USE_DEFAULT`: the config's), a
          callable ``ttl``, ``none_ttl``, ``cache_none``, ``should_cache``, ``ttl_jitter``
          and ``value_type`` (L2 values decode to it; one that does not validate is a miss):
          the table of load options in docs/decorators.md.
        - Results are stored without a bus message (a fill, not a write); one that cannot
          be encoded is returned uncached (logged once per key prefix, counted).

        Raises:
            Exception: whatever the loader raised (shared by every waiting caller).
            InvalidKeyError, InvalidTTLError: bad arguments.
            CacheClosedError: the manager is not running.
            LoaderTimeoutError: ``loader_hard_timeout`` passed before the loader ended.
        """
        if self._state is not _State.RUNNING:
            raise self._closed_error()
        engine, decode = self._loader, None if value_type is None else value_decoder(value_type)
        hit = engine.fast_hit(key, decode) if tier is not CacheTier.L2 else NOT_LOOKED
        fraction = self.config.refresh_ahead if refresh_ahead is USE_DEFAULT else refresh_ahead
        if hit is not NOT_LOOKED and hit is not MISSING and fraction is None:
            return cast("R", hit)

        # A partial, not a closure: a closure's cells would slow down the hit path above.
        policy = functools.partial(
            LoadPolicy.of_call,
            self.config,
            ttl=ttl,
            tier=tier,
            tags=tags,
            lock=lock,
            stale_ttl=stale_ttl,
            loader_timeout=loader_timeout,
            cache_none=cache_none,
            should_cache=should_cache,
            ttl_jitter=ttl_jitter,
            loader_hard_timeout=loader_hard_timeout,
            refresh_ahead=refresh_ahead,
            none_ttl=none_ttl,
            decode=decode,
        )
        if hit is not NOT_LOOKED and hit is not MISSING:
            span = self.config.default_ttl if ttl is USE_DEFAULT else ttl
            if engine.refresh_due(key, fraction, span):
                engine.refresh_if_due(key, loader, policy(), hit)
            return cast("R", hit)
        if hit is MISSING:  # untraced, and L1 missed
            validate_key(key)
            return cast("R", (await engine.load(key, loader, policy()))[0])
        refresh = fraction is not None
        return cast(
            "R", await engine.get_or_set(key, loader, tier, policy, decode, refresh=refresh)
        )

    async def delete(self, key: str, tier: CacheTier = CacheTier.BOTH) -> bool:
        """Remove ``key``; return whether a tier held it. This instance's L1 forgets it now."""
        self._check_running()
        return await self._op("delete", "cache.hit", self._cache.delete(key, tier), key=key)

    async def clear_pattern(self, pattern: str, tier: CacheTier = CacheTier.BOTH) -> int:
        """Remove keys matching the Redis glob ``pattern`` (``user:*``) from this namespace.

        L2 is cleared with SCAN + UNLINK batches, never KEYS. Returns the number of L2 keys
        removed (L1 keys when running on L1 alone).
        """
        self._check_running()
        return await self._op(
            "clear_pattern", "cache.removed", self._cache.clear_pattern(pattern, tier), key=pattern
        )

    async def clear(self, tier: CacheTier = CacheTier.BOTH) -> int:
        """Remove every entry of this namespace (not other namespaces, nor fleet reports)."""
        self._check_running()
        return await self._op("clear", "cache.removed", self._cache.clear(tier))

    async def _op(
        self,
        op: str,
        result: str,
        call: Awaitable[T],
        *,
        key: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> T:
        """Await ``call``; while tracing, under the span of operation ``op`` (``key``'s
        attributes or ``attributes``), with its result recorded as the attribute ``result``."""
        tel = self._telemetry
        if not (tel.active or tel.poll()):
            return await call
        with tel.operation(op, tel.key_attributes(key) if key is not None else attributes) as span:
            value = await call
            span.set_attribute(result, cast("AttributeValue", value))
            return value

    def stats(self) -> CacheStats:
        """Like `get_stats`, synchronously."""
        return collect_stats(
            self._cache,
            bus=self.bus.stats() if self.bus is not None else None,
            channel=self.config.channel,
            origin=self.origin,
            mailbox=self._actor.stats(),
            tasks=self._supervisor.tasks if self._supervisor is not None else {},
            loader=self._loader.stats(),
            tracking=self.tracking.stats() if self.tracking is not None else None,
        )

    def _stats_for_metrics(self) -> CacheStats | None:
        return self.stats() if self._state is _State.RUNNING else None

    async def get_stats(self) -> CacheStats:
        """Statistics in the seed's shape (``l1_cache``, ``l2_cache``, ``total_*``) plus
        ``bus``, ``tasks``, ``loader`` and ``latency`` (`CacheStats`, ``docs/api.md``).
        ``l1_cache["memory_bytes"]`` is accounted under a byte bound, else a sampled
        estimate. Works in any state, so a health endpoint can report a stopped cache.
        """
        return self.stats()

    async def health(self) -> HealthReport:
        """``healthy`` when L2 answers, the bus is subscribed and no background task died;
        Redis unreachable or the bus down is ``degraded``; a stopped manager or a task
        given up after repeated crashes is ``unhealthy`` (`monitoring.check_health`). The
        L2 check is one PING under ``operation_timeout``."""
        return await check_health(
            state=self._state.value,
            ping=self.l2.ping if self.l2 is not None else None,
            bus_connected=self.bus.connected if self.bus is not None else None,
            max_stale_on_bus_loss=self.config.max_stale_on_bus_loss,
            tasks=self.stats()["tasks"],
            tracking_connected=self.tracking.connected if self.tracking is not None else None,
        )

    @property
    def supervisor(self) -> Supervisor | None:
        """The background tasks' supervisor while running (for `CacheMonitor`), or ``None``."""
        return self._supervisor if self._state is _State.RUNNING else None

    @property
    def load_engine(self) -> LoadEngine:
        """The engine of `get_or_set` and of the `cached` functions."""
        return self._loader

    @property
    def multi_tier(self) -> MultiTierCache:
        """The `MultiTierCache` this manager drives."""
        return self._cache

    # `cached`, `cache_invalidate` (coherent_cache.decorators) and `CacheWarmer`'s methods
    # `warm_cache`, `warm_in_background`, `schedule_warming`, `warm_when`: FirstUseMethods
    fleet = _fleet.fleet  # the live instances' reports (`coherent_cache.fleet`)

    @property
    def warmer(self) -> CacheWarmer:
        """This manager's `CacheWarmer` (made on first use)."""
        if self._warmer is None:
            from .warming import CacheWarmer, WarmLauncher

            launcher = WarmLauncher(self._warm_task_group, self._warm_supervisor)
            self._warmer = CacheWarmer(self, telemetry=self._telemetry, launcher=launcher)
        return self._warmer

    def _warm_task_group(self) -> TaskGroup:
        if self._state is not _State.RUNNING or self._tg is None:
            raise self._closed_error()
        return self._tg

    def _warm_supervisor(self) -> Supervisor | None:
        if self._state is _State.CLOSED:
            raise self._closed_error()
        return self._supervisor if self._state is _State.RUNNING else None


def create_cache_manager(config: CacheConfig | None = None) -> CacheManager:
    """Build a `CacheManager` (not started) from ``config``, or, when omitted, from the
    ``COHERENT_CACHE_*`` environment variables over the defaults (`CacheConfig.from_env`)."""
    return CacheManager(config)
