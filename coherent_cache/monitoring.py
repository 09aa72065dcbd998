"""The cache's statistics and health, and CacheMonitor: a periodic ``cache_stats`` log
event and alert hooks over those statistics."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, TypedDict, final

import anyio
from anyio.abc import TaskStatus

from ._log import get_logger
from ._supervisor import Supervisor, TaskInfo, TaskState
from ._telemetry import LatencyHistogram, LatencyStats
from ._tracking import TrackingStats, disabled_tracking_stats
from .bus import BusStats
from .errors import CacheClosedError
from .l1 import ActorStats
from .multitier import MultiTierCache, TierStats

__all__ = [
    "AlertHook",
    "AlertKind",
    "BusInfo",
    "CacheMonitor",
    "CacheStats",
    "HealthReport",
    "LatencyInfo",
    "LoaderStats",
    "MonitorReport",
    "MonitoredCache",
    "TrackingStats",
]

log = get_logger()


class BusInfo(BusStats):
    """The invalidation bus in `CacheStats`: the subscriber, publishing and the L1 mailbox."""

    published: int
    mailbox: ActorStats


class LatencyInfo(TypedDict):
    """Latency per tier in `CacheStats`, from fixed log-scale buckets (about 19 % wide).

    ``l1``: L1 lookups of ``get``, ``get_or_set`` and decorated calls (one in 64 is timed,
    `multitier.L1_LATENCY_SAMPLE`); ``l2``: round trips of successful Redis calls.
    """

    l1: LatencyStats
    l2: LatencyStats


class LoaderStats(TypedDict):
    """``get_or_set`` figures in `CacheStats`."""

    hits: int
    misses: int
    loads: int
    errors: int
    stale_served: int
    lock_waits: int
    discarded: int
    unencodable: int
    """Loader results that could not be encoded: returned to the caller, not cached."""
    type_mismatches: int
    """L2 values that did not validate against the declared type: served as misses."""
    refreshes: int
    """Refresh-ahead loads started (``refresh_ahead``)."""
    hard_timeouts: int
    """Callers that got `LoaderTimeoutError` (``loader_hard_timeout``)."""
    ttl_errors: int
    """Results left uncached because a callable ``ttl`` raised or returned no valid TTL."""


class CacheStats(TierStats):
    """Everything `CacheManager.get_stats` reports: the seed's shape plus bus and tasks."""

    bus: BusInfo
    tasks: dict[str, TaskInfo]
    loader: LoaderStats
    latency: LatencyInfo
    tracking: TrackingStats
    """Client tracking (``client_tracking``); ``enabled: False`` and zeros when off."""


class HealthReport(TypedDict):
    """What `CacheManager.health` returns."""

    status: Literal["healthy", "degraded", "unhealthy"]
    reasons: list[str]
    l2_connected: bool | None
    bus_connected: bool | None
    tasks: dict[str, TaskInfo]


def collect_stats(
    tiers: MultiTierCache,
    *,
    bus: BusStats | None,
    channel: str,
    origin: str,
    mailbox: ActorStats,
    tasks: dict[str, TaskInfo],
    loader: LoaderStats,
    tracking: TrackingStats | None = None,
) -> CacheStats:
    """`CacheStats` from the figures of the parts (``bus=None``: no bus; ``tracking=None``:
    no client tracking)."""
    l2 = tiers.l2
    latency: LatencyInfo = {
        "l1": tiers.l1_latency.stats(),
        "l2": (l2.latency if l2 is not None else LatencyHistogram()).stats(),
    }
    return {
        **tiers.stats(),
        "bus": _bus_info(
            bus,
            channel=channel,
            origin=origin,
            published=l2.published if l2 is not None else 0,
            mailbox=mailbox,
        ),
        "tasks": {name: TaskInfo(**info) for name, info in tasks.items()},
        "loader": loader,
        "latency": latency,
        "tracking": tracking if tracking is not None else disabled_tracking_stats(),
    }


def _bus_info(
    bus: BusStats | None, *, channel: str, origin: str, published: int, mailbox: ActorStats
) -> BusInfo:
    if bus is None:
        return {
            "enabled": False,
            "connected": False,
            "channel": channel,
            "origin": origin,
            "published": 0,
            "received": 0,
            "applied": 0,
            "own_skipped": 0,
            "dropped": 0,
            "unauthenticated": 0,
            "losses": 0,
            "recoveries": 0,
            "connect_attempts": 0,
            "last_loss_at": None,
            "last_recovery_at": None,
            "mailbox": mailbox,
        }
    return {
        "enabled": True,
        "connected": bus["connected"],
        "channel": bus["channel"],
        "origin": origin,
        "published": published,
        "received": bus["received"],
        "applied": bus["applied"],
        "own_skipped": bus["own_skipped"],
        "dropped": bus["dropped"],
        "unauthenticated": bus["unauthenticated"],
        "losses": bus["losses"],
        "recoveries": bus["recoveries"],
        "connect_attempts": bus["connect_attempts"],
        "last_loss_at": bus["last_loss_at"],
        "last_recovery_at": bus["last_recovery_at"],
        "mailbox": mailbox,
    }


async def check_health(
    *,
    state: str,
    ping: Callable[[], Awaitable[bool]] | None,
    bus_connected: bool | None,
    max_stale_on_bus_loss: float,
    tasks: dict[str, TaskInfo],
    tracking_connected: bool | None = None,
) -> HealthReport:
    """The health report (see `CacheManager.health`).

    Args:
        state: the manager's state (``new``, ``running``, ``closed``).
        ping: one bounded PING of the L2 (``None``: no L2); not called unless running.
        bus_connected: whether the bus is subscribed (``None``: no bus).
        max_stale_on_bus_loss: quoted in the reason of a lost bus.
        tasks: the background tasks' states.
        tracking_connected: whether every client-tracking connection is subscribed
            (``None``: no client tracking).
    """
    running = state == "running"
    reasons: list[str] = []
    unhealthy = False
    if not running:
        unhealthy = True
        reasons.append(f"cache manager is {state}")
    l2_ok: bool | None = None
    if ping is not None and running:
        l2_ok = await ping()
        if not l2_ok:
            reasons.append("redis unreachable: serving from L1 and loaders")
    if bus_connected is not None and not bus_connected and running:
        reasons.append(
            "invalidation bus disconnected: L1 entries are served at most "
            f"{max_stale_on_bus_loss:g}s after the loss"
        )
    if tracking_connected is not None and not tracking_connected and running:
        reasons.append(
            "tracking disconnected: L1 entries are served at most "
            f"{max_stale_on_bus_loss:g}s after the loss"
        )
    for name, info in tasks.items():
        if info["state"] == TaskState.FAILED:
            unhealthy = True
            reasons.append(f"background task {name} failed: {info['last_error']}")
    status: Literal["healthy", "degraded", "unhealthy"] = (
        "unhealthy" if unhealthy else "degraded" if reasons else "healthy"
    )
    return {
        "status": status,
        "reasons": reasons,
        "l2_connected": l2_ok,
        "bus_connected": bus_connected,
        "tasks": tasks,
    }


class MonitoredCache(Protocol):
    """What a `CacheMonitor` watches: a `CacheManager` (its public surface)."""

    @property
    def running(self) -> bool: ...

    @property
    def supervisor(self) -> Supervisor | None: ...

    @property
    def log(self) -> Any: ...

    def stats(self) -> CacheStats: ...


AlertKind = Literal["low_hit_rate", "high_error_rate"]
AlertHook = Callable[[AlertKind, dict[str, Any]], Awaitable[None] | None]
"""``on_alert(kind, details)``; a coroutine function is awaited."""


class MonitorReport(TypedDict):
    """What one monitoring interval measured (also the fields of the ``cache_stats`` event)."""

    interval_s: float
    l1_hit_rate: float | None
    """L1 hits / L1 lookups during the interval; ``None`` without lookups."""
    l1_lookups: int
    l2_hit_rate: float | None
    l2_errors_per_s: float
    l1_size: int
    l1_memory_bytes: int
    l1_evictions: int
    l2_connected: bool
    l2_errors: int
    bus_connected: bool
    bus_received: int
    bus_published: int
    bus_dropped: int
    l1_p99_ms: float | None
    l2_p99_ms: float | None
    alerts: list[AlertKind]


@final
class CacheMonitor:
    """Logs a ``cache_stats`` event every ``interval`` seconds and raises alerts.

    The loop runs as the supervised background task ``monitor`` of its `CacheManager`
    (``get_stats()["tasks"]``); ``CacheConfig.enable_monitoring`` starts one with the
    manager, at ``monitoring_interval``. Build another to get alerts::

        monitor = CacheMonitor(cache, interval=10, hit_rate_alert_below=0.5, on_alert=page)
        await monitor.start_monitoring()

    Args:
        manager: the cache to watch.
        interval: seconds between two reports.
        hit_rate_alert_below: alert ``low_hit_rate`` when the L1 hit rate over the last
            interval (with at least one lookup) is below this fraction.
        error_rate_alert_above: alert ``high_error_rate`` when Redis errors per second over
            the last interval exceed this.
        on_alert: called as ``on_alert(kind, details)`` (sync or async); an exception it
            raises is logged and does not stop the monitor. Alerts are logged either way
            (``cache_alert``, warning).
        name: the background task's name; ``monitor`` unless taken (then ``monitor-2``...).
        timer: monotonic clock (tests).
    """

    def __init__(
        self,
        manager: MonitoredCache,
        *,
        interval: float = 60.0,
        hit_rate_alert_below: float | None = None,
        error_rate_alert_above: float | None = None,
        on_alert: AlertHook | None = None,
        name: str = "monitor",
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self.manager = manager
        self.interval = interval
        self.hit_rate_alert_below = hit_rate_alert_below
        self.error_rate_alert_above = error_rate_alert_above
        self.on_alert = on_alert
        self.name = name
        self._timer = timer
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        self._last: tuple[float, CacheStats] | None = None
        self.reports = 0
        """Reports made so far."""

    def __repr__(self) -> str:
        state = "running" if self.running else "idle"
        return f"<CacheMonitor task={self.name!r} interval={self.interval:g}s {state}>"

    @property
    def running(self) -> bool:
        """Whether the loop is running."""
        return self._scope is not None

    async def start_monitoring(self) -> None:
        """Start the loop in the manager's task group; return once it runs. Idempotent.

        Raises:
            CacheClosedError: the manager is not running.
        """
        if self.running:
            return
        supervisor = self.manager.supervisor
        if supervisor is None or not self.manager.running:
            raise CacheClosedError("start the CacheManager before its monitor")
        base, n = self.name, 1
        while self.name in supervisor.tasks and supervisor.tasks[self.name]["state"] in (
            TaskState.STARTING,
            TaskState.RUNNING,
            TaskState.BACKOFF,
        ):
            n += 1
            self.name = f"{base}-{n}"
        self._stopped = anyio.Event()
        await supervisor.start(self.name, self._monitor_loop)

    async def stop_monitoring(self) -> None:
        """Stop the loop and wait until it has ended. Idempotent."""
        scope = self._scope
        if scope is None:
            return
        scope.cancel()
        await self._stopped.wait()

    async def _monitor_loop(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Report every ``interval`` seconds until `stop_monitoring` or the manager stops.

        Error handling: an exception from the stats or the report propagates to the
        supervisor, which logs it and restarts the loop after its backoff; an exception
        from ``on_alert`` is logged (``monitor_alert_failed``) and the loop goes on.
        """
        with anyio.CancelScope() as scope:
            self._scope = scope
            try:
                self._last = (self._timer(), self.manager.stats())
                task_status.started()
                while True:
                    await anyio.sleep(self.interval)
                    await self.check()
            finally:
                self._scope = None
                self._stopped.set()

    async def check(self) -> MonitorReport:
        """Report on the time since the previous check (or the start): log, alert, return.

        The loop calls it every ``interval``; tests and ad-hoc tools may call it directly.
        """
        now = self._timer()
        stats = self.manager.stats()
        if self._last is None:
            self._last = (now, stats)
        before_t, before = self._last
        self._last = (now, stats)
        elapsed = max(now - before_t, 1e-9)
        l1, l1_before = stats["l1_cache"], before["l1_cache"]
        l2, l2_before = stats["l2_cache"], before["l2_cache"]
        l1_hits = l1["hits"] - l1_before["hits"]
        l1_lookups = l1_hits + l1["misses"] - l1_before["misses"]
        l2_hits = l2["hits"] - l2_before["hits"]
        l2_lookups = l2_hits + l2["misses"] - l2_before["misses"]
        errors_per_s = (l2["errors"] - l2_before["errors"]) / elapsed
        report: MonitorReport = {
            "interval_s": round(elapsed, 3),
            "l1_hit_rate": l1_hits / l1_lookups if l1_lookups else None,
            "l1_lookups": l1_lookups,
            "l2_hit_rate": l2_hits / l2_lookups if l2_lookups else None,
            "l2_errors_per_s": errors_per_s,
            "l1_size": l1["size"],
            "l1_memory_bytes": l1["memory_bytes"],
            "l1_evictions": l1["evictions"],
            "l2_connected": l2["connected"],
            "l2_errors": l2["errors"],
            "bus_connected": stats["bus"]["connected"],
            "bus_received": stats["bus"]["received"],
            "bus_published": stats["bus"]["published"],
            "bus_dropped": stats["bus"]["dropped"],
            "l1_p99_ms": stats["latency"]["l1"]["p99_ms"],
            "l2_p99_ms": stats["latency"]["l2"]["p99_ms"],
            "alerts": [],
        }
        alerts: list[tuple[AlertKind, dict[str, Any]]] = []
        below = self.hit_rate_alert_below
        hit_rate = report["l1_hit_rate"]
        if below is not None and hit_rate is not None and hit_rate < below:
            alerts.append(
                (
                    "low_hit_rate",
                    {"hit_rate": hit_rate, "threshold": below, "lookups": l1_lookups},
                )
            )
        above = self.error_rate_alert_above
        if above is not None and errors_per_s > above:
            alerts.append(
                (
                    "high_error_rate",
                    {"errors_per_s": errors_per_s, "threshold": above, "interval_s": elapsed},
                )
            )
        report["alerts"] = [kind for kind, _ in alerts]
        self.reports += 1
        logger = self.manager.log
        logger.info("cache_stats", **report)
        for kind, details in alerts:
            logger.warning("cache_alert", kind=kind, **details)
            if self.on_alert is not None:
                try:
                    result = self.on_alert(kind, details)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    logger.error("monitor_alert_failed", kind=kind, exc_info=exc)
        return report
