"""The fleet view: every running instance's report in Redis, and the list of live ones.

Each running `CacheManager` with an L2 writes a `FleetReport` every
``fleet_report_interval`` seconds into the hash ``<namespace>#fleet``, one field per
origin. Redis has no portable per-field expiry (``HPEXPIRE`` needs Redis 7.4 or Valkey 9),
so each value carries its own deadline in server time: ``<expires_ms> <report JSON>``.
Readers skip and delete the expired fields; writers prune them every `PRUNE_EVERY`
reports; the whole hash expires when its last instance stops writing. Both scripts touch
the one key (no CROSSSLOT on a cluster) and read the clock with ``TIME`` on the server,
so the hosts' clocks do not matter. A clean ``stop()`` deletes the instance's field.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal, Protocol, TypedDict, final

import anyio
import orjson
from anyio.abc import TaskStatus
from redis import exceptions as redis_errors

from ._backoff import backoff_delay
from ._clients import L2Client
from ._supervisor import Supervisor
from ._telemetry import LatencyStats
from ._version import __version__
from .config import CacheConfig
from .errors import BackendError, BackendTimeoutError, BackendUnavailableError, CacheClosedError
from .l2 import RedisCache
from .monitoring import CacheStats, HealthReport, TrackingStats, check_health

__all__ = [
    "FleetBus",
    "FleetL1",
    "FleetL2",
    "FleetLatency",
    "FleetLoader",
    "FleetReport",
    "FleetReporter",
    "build_report",
    "fleet_key",
    "health_of",
    "read_fleet",
]

EXPIRY_INTERVALS: Final = 3
"""A report expires this many intervals (plus ``operation_timeout``) after it was written."""
PRUNE_EVERY: Final = 12
"""A reporter removes the expired fields of the hash on its first report and every
this many reports after (a reader removes them on every read)."""
_STATUS_ORDER: Final = {"unhealthy": 0, "degraded": 1, "healthy": 2}
_FAILURES: Final = (
    TimeoutError,
    OSError,
    redis_errors.RedisError,
    redis_errors.RedisClusterException,
)

# KEYS[1]: the hash. ARGV: origin, report JSON, time to live (ms), "1" to prune.
_WRITE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local latest = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], latest .. ' ' .. ARGV[2])
if ARGV[4] == '1' then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local expires = tonumber(string.match(all[i + 1], '^%d+'))
    if expires == nil or expires <= now then
      redis.call('HDEL', KEYS[1], all[i])
    elseif expires > latest then
      latest = expires
    end
  end
  redis.call('PEXPIRE', KEYS[1], latest - now)
else
  local left = redis.call('PTTL', KEYS[1])
  if left < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
end
return 1
"""

# KEYS[1]: the hash. Returns the live reports' JSON; deletes the expired fields.
_READ: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local value = all[i + 1]
  local space = string.find(value, ' ', 1, true)
  local expires = space and tonumber(string.sub(value, 1, space - 1))
  if expires == nil or expires <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    live[#live + 1] = string.sub(value, space + 1)
  end
end
return live
"""


class FleetL1(TypedDict):
    """The L1 in a `FleetReport`."""

    size: int
    memory_bytes: int
    """A sampled estimate (``get_stats()["l1_cache"]["memory_bytes"]``)."""
    hit_rate: float
    """Hits / lookups since the start."""


class FleetL2(TypedDict):
    """The L2 in a `FleetReport`."""

    connected: bool
    errors: int
    timeouts: int
    breaker: str


class FleetBus(TypedDict):
    """The invalidation bus in a `FleetReport`."""

    enabled: bool
    connected: bool
    losses: int
    dropped: int
    mailbox_depth: int
    """Invalidations queued for this instance's L1 actor."""


class FleetLoader(TypedDict):
    """``get_or_set`` and decorated calls in a `FleetReport`."""

    loads: int
    errors: int


class FleetLatency(TypedDict):
    """Latency percentiles per tier (as ``get_stats()["latency"]``)."""

    l1: LatencyStats
    l2: LatencyStats


class FleetReport(TypedDict):
    """One instance's report: what `CacheManager.fleet` lists. Never a secret, no key."""

    origin: str
    """`CacheManager.origin`: the instance's id on the bus."""
    host: str
    pid: int
    version: str
    """The coherent-cache version the instance runs."""
    namespace: str
    started_at: float
    """Unix time the instance started."""
    reported_at: float
    """Unix time of this report (the instance's clock)."""
    interval_s: float
    """The instance's ``fleet_report_interval``."""
    status: Literal["healthy", "degraded", "unhealthy"]
    reasons: list[str]
    """As `CacheManager.health`; a failed task's error is its type alone unless
    ``trace_full_keys`` (an error message may quote a key)."""
    l1: FleetL1
    l2: FleetL2 | None
    """``None``: no L2."""
    bus: FleetBus
    tracking: str | None
    """Client tracking: ``connected`` (every tracking connection subscribed) or
    ``disconnected``; ``None`` when the instance runs without it."""
    loader: FleetLoader
    latency: FleetLatency
    report_failures: int
    """Reports of this instance that failed to reach Redis since it started."""


class FleetMember(Protocol):
    """What the fleet reads from a `CacheManager` (its public surface)."""

    config: CacheConfig
    origin: str
    l2: RedisCache | None

    @property
    def running(self) -> bool: ...

    @property
    def log(self) -> Any: ...

    def stats(self) -> CacheStats: ...


def fleet_key(namespace: str) -> str:
    """The Redis hash holding ``namespace``'s reports: ``<namespace>#fleet``."""
    return f"{namespace}#fleet"


_HOST: Final = socket.gethostname()


def _reasons(health: HealthReport, config: CacheConfig) -> list[str]:
    """The health reasons with secrets scrubbed and, unless ``trace_full_keys``, the
    messages of failed tasks' errors cut to their type (they may quote a key)."""
    reasons: list[str] = []
    for reason in health["reasons"]:
        if not config.trace_full_keys and reason.startswith("background task "):
            name, _, error = reason.partition(" failed: ")
            reason = f"{name} failed: {error.partition(':')[0]}"
        for secret in config.secrets():
            reason = reason.replace(secret, "***")
        reasons.append(reason)
    return reasons


def build_report(
    stats: CacheStats,
    health: HealthReport,
    *,
    config: CacheConfig,
    origin: str,
    started_at: float,
    report_failures: int = 0,
) -> FleetReport:
    """The `FleetReport` of an instance from its stats and health."""
    l1, l2, bus = stats["l1_cache"], stats["l2_cache"], stats["bus"]
    return {
        "origin": origin,
        "host": _HOST,
        "pid": os.getpid(),
        "version": __version__,
        "namespace": config.namespace,
        "started_at": round(started_at, 3),
        "reported_at": round(time.time(), 3),
        "interval_s": config.fleet_report_interval,
        "status": health["status"],
        "reasons": _reasons(health, config),
        "l1": {"size": l1["size"], "memory_bytes": l1["memory_bytes"], "hit_rate": l1["hit_rate"]},
        "l2": None
        if not stats["l2_enabled"]
        else {
            "connected": l2["connected"],
            "errors": l2["errors"],
            "timeouts": l2["timeouts"],
            "breaker": l2["breaker"],
        },
        "bus": {
            "enabled": bus["enabled"],
            "connected": bus["connected"],
            "losses": bus["losses"],
            "dropped": bus["dropped"],
            "mailbox_depth": bus["mailbox"]["queued"],
        },
        "tracking": _tracking_state(stats["tracking"]),
        "loader": {"loads": stats["loader"]["loads"], "errors": stats["loader"]["errors"]},
        "latency": {"l1": stats["latency"]["l1"], "l2": stats["latency"]["l2"]},
        "report_failures": report_failures,
    }


async def health_of(stats: CacheStats, *, running: bool, config: CacheConfig) -> HealthReport:
    """`check_health` from ``stats`` alone: the L2 as the cache's own calls last found it
    (``l2_cache["connected"]``), so a report costs no PING and counts no error."""
    l2_connected = stats["l2_cache"]["connected"]

    async def last_seen() -> bool:
        return l2_connected

    return await check_health(
        state="running" if running else "closed",
        ping=last_seen if stats["l2_enabled"] else None,
        bus_connected=stats["bus"]["connected"] if stats["bus"]["enabled"] else None,
        max_stale_on_bus_loss=config.max_stale_on_bus_loss,
        tasks=stats["tasks"],
        tracking_connected=_tracking_connected(stats["tracking"]),
    )


def _tracking_connected(tracking: TrackingStats) -> bool | None:
    return tracking["connected"] if tracking["enabled"] else None


def _tracking_state(tracking: TrackingStats) -> str | None:
    """``connected``/``disconnected``; ``None`` without client tracking."""
    if not tracking["enabled"]:
        return None
    return "connected" if tracking["connected"] else "disconnected"


def _order(report: FleetReport) -> tuple[int, str]:
    return _STATUS_ORDER.get(report["status"], 0), report["origin"]


def _decode(raw: Any, namespace: str) -> FleetReport | None:
    try:
        report = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(report, dict) or not isinstance(report.get("origin"), str):
        return None
    if report.get("namespace") != namespace or not isinstance(report.get("status"), str):
        return None
    return report  # type: ignore[return-value]  # written by build_report


async def read_fleet(client: L2Client, namespace: str, *, within: float) -> list[FleetReport]:
    """The live reports of ``namespace``, the unhealthy first, then the degraded, each
    group by origin. Deletes the expired reports it meets. One Redis call.

    Raises:
        BackendTimeoutError: Redis did not answer within ``within`` seconds.
        BackendUnavailableError: Redis failed or could not be reached.
    """
    try:
        with anyio.fail_after(within):
            raw = await client.eval(_READ, 1, fleet_key(namespace))
    except TimeoutError as exc:
        raise BackendTimeoutError(f"reading the fleet took over {within:g}s") from exc
    except _FAILURES as exc:
        raise BackendUnavailableError(f"reading the fleet failed: {type(exc).__name__}") from exc
    reports = [r for r in (_decode(item, namespace) for item in raw or ()) if r is not None]
    reports.sort(key=_order)
    return reports


@final
class FleetReporter:
    """Writes its manager's report every ``fleet_report_interval`` seconds (supervised
    task ``fleet_reporter``); deletes it when the manager stops.

    A failed write (Redis down, timeout) is counted (``report_failures`` of the next
    report that gets through), logged (``fleet_report_failed``, once per outage) and
    retried after a jittered backoff from one interval up to `EXPIRY_INTERVALS`; it is
    never raised to the caller of a cache operation.
    """

    def __init__(self, manager: FleetMember) -> None:
        assert manager.l2 is not None
        self.manager = manager
        self.client: L2Client = manager.l2.client
        self.config = manager.config
        self.interval = manager.config.fleet_report_interval
        self.ttl_ms = int((EXPIRY_INTERVALS * self.interval + self.config.operation_timeout) * 1000)
        self.started_at = time.time()
        self.reports = 0
        """Reports written."""
        self.failures = 0
        """Reports (and removals) that failed."""
        self._failing = False
        self._since_prune = 0
        self._rng = random.Random()

    async def report(self) -> bool:
        """Write one report now; return whether Redis took it (never raises a Redis error)."""
        m = self.manager
        stats = m.stats()
        body = build_report(
            stats,
            await health_of(stats, running=m.running, config=self.config),
            config=self.config,
            origin=m.origin,
            started_at=self.started_at,
            report_failures=self.failures,
        )
        prune = "1" if self._since_prune % PRUNE_EVERY == 0 else "0"
        self._since_prune += 1
        written = await self._call(
            lambda: self.client.eval(
                _WRITE,
                1,
                fleet_key(self.config.namespace),
                m.origin,
                orjson.dumps(body),
                self.ttl_ms,
                prune,
            )
        )
        self.reports += written
        return written

    async def _call(self, call: Callable[[], Awaitable[Any]]) -> bool:
        # Shielded (and bounded): a stop waits for a write in flight, so the removal that
        # follows cannot be overtaken by it.
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(self.config.operation_timeout):
                await call()
        except (*_FAILURES, BackendError) as exc:
            self.failures += 1
            if not self._failing:  # once per outage
                self.manager.log.warning("fleet_report_failed", error=type(exc).__name__)
            self._failing = True
            self._since_prune = 0  # prune on the next success
            return False
        if self._failing:
            self.manager.log.info("fleet_report_recovered", failures=self.failures)
        self._failing = False
        return True

    async def remove(self) -> bool:
        """Delete this instance's report (bounded by ``operation_timeout``)."""
        key, origin = fleet_key(self.config.namespace), self.manager.origin
        return await self._call(lambda: self.client.hdel(key, origin))

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Report until cancelled, then delete the report (shielded, bounded)."""
        task_status.started()
        streak = 0
        try:
            while True:
                if await self.report():
                    streak, delay = 0, self.interval
                else:
                    streak += 1
                    cap = EXPIRY_INTERVALS * self.interval
                    delay = backoff_delay(streak - 1, base=self.interval, cap=cap, rng=self._rng)
                await anyio.sleep(delay)
        finally:
            with anyio.CancelScope(shield=True):
                await self.remove()


def start_reporter(manager: FleetMember, supervisor: Supervisor) -> FleetReporter | None:
    """Start ``manager``'s reporter under ``supervisor`` when it has an L2 and a positive
    ``fleet_report_interval``; return it (or ``None``)."""
    if manager.l2 is None or manager.config.fleet_report_interval <= 0:
        return None
    reporter = FleetReporter(manager)
    supervisor.start_soon("fleet_reporter", reporter.run)
    return reporter


async def fleet(manager: FleetMember) -> list[FleetReport]:
    """The reports of the live instances of this namespace, the unhealthy first (then the
    degraded; each group by origin). This instance is among them once it has reported
    (``fleet_report_interval`` > 0). Without an L2 nothing is reported: the list is
    empty. One Redis call under ``operation_timeout``.

    Raises:
        CacheClosedError: the manager is not running.
        BackendTimeoutError, BackendUnavailableError: Redis did not answer.
    """
    if not manager.running:
        raise CacheClosedError("the fleet is read from a running CacheManager")
    config = manager.config
    if manager.l2 is None:
        return []
    return await read_fleet(manager.l2.client, config.namespace, within=config.operation_timeout)
