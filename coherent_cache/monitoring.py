"""CacheMonitor: a periodic ``cache_stats`` log event and alert hooks over the stats."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, TypedDict, final

import anyio
import structlog
from anyio.abc import TaskStatus

from ._supervisor import TaskState
from .errors import CacheClosedError

if TYPE_CHECKING:
    from ._supervisor import Supervisor
    from .manager import CacheManager, CacheStats

__all__ = ["AlertHook", "AlertKind", "CacheMonitor", "MonitorReport"]

log = structlog.get_logger("coherent_cache")

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
        manager: CacheManager,
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
        supervisor = self.manager._supervisor
        if supervisor is None or not self.manager.running:
            raise CacheClosedError("start the CacheManager before its monitor")
        await self._launch(supervisor)

    async def _launch(self, supervisor: Supervisor) -> None:
        """Start the loop under ``supervisor`` (the manager's, also while it starts)."""
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
