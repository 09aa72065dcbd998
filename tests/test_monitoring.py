"""CacheMonitor (cache_stats events, alerts), latency percentiles, memory estimate."""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Callable, MutableMapping
from typing import Any

import pytest
import structlog

from coherent_cache import CacheConfig, CacheManager, CacheMonitor, CacheTier, InMemoryCache
from coherent_cache.errors import CacheClosedError
from coherent_cache.testing import RedisServer

from .conftest import FakeClock, ManagerFactory, eventually


def stats_events(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """The captured ``cache_stats`` events."""
    return [entry for entry in logs if entry["event"] == "cache_stats"]


class TestMonitorLoop:
    """enable_monitoring runs a supervised monitor that logs cache_stats."""

    async def test_logs_cache_stats_every_interval(self, make_manager: ManagerFactory) -> None:
        """A cache_stats event per interval, with hit rates, sizes, errors and bus figures,
        bound to the manager's namespace and origin; the task is visible in stats."""
        with structlog.testing.capture_logs() as logs:
            cache = await make_manager(monitoring_interval=0.02)
            await cache.set("k", 1)
            await cache.get("k")
            await eventually(lambda: len(stats_events(logs)) >= 2)
        event = stats_events(logs)[-1]
        for field in (
            "l1_hit_rate",
            "l2_hit_rate",
            "l1_size",
            "l1_memory_bytes",
            "l2_connected",
            "l2_errors",
            "bus_connected",
            "bus_received",
            "bus_published",
            "bus_dropped",
            "l1_p99_ms",
        ):
            assert field in event
        assert "info" == event["log_level"]
        assert cache.config.namespace == event["namespace"]
        assert cache.origin == event["origin"]
        assert 1 == event["l1_size"]
        assert event["l2_connected"] is True
        tasks = (await cache.get_stats())["tasks"]
        assert "running" == tasks["monitor"]["state"]

    async def test_disabled(self, make_manager: ManagerFactory) -> None:
        """enable_monitoring=False: no monitor task."""
        cache = await make_manager(enable_monitoring=False)
        assert cache.monitor is None
        assert "monitor" not in (await cache.get_stats())["tasks"]

    async def test_start_and_stop_a_second_monitor(self, make_manager: ManagerFactory) -> None:
        """A user's monitor runs beside the automatic one and stops on request."""
        cache = await make_manager()
        monitor = CacheMonitor(cache, interval=0.01)
        await monitor.start_monitoring()
        await monitor.start_monitoring()  # idempotent
        assert "monitor-2" == monitor.name
        assert monitor.running
        await eventually(lambda: monitor.reports >= 2)
        await monitor.stop_monitoring()
        await monitor.stop_monitoring()
        assert not monitor.running
        tasks = (await cache.get_stats())["tasks"]
        assert "stopped" == tasks["monitor-2"]["state"]
        assert "running" == tasks["monitor"]["state"]

    async def test_needs_a_running_manager(self) -> None:
        """Starting a monitor of a manager that is not running raises."""
        monitor = CacheMonitor(CacheManager(CacheConfig(redis_url=None)))
        with pytest.raises(CacheClosedError):
            await monitor.start_monitoring()
        with pytest.raises(ValueError, match="interval"):
            CacheMonitor(CacheManager(CacheConfig(redis_url=None)), interval=0)


class TestAlerts:
    """Alerts fire from the figures of the last interval, deterministically."""

    async def test_low_hit_rate(self, clock: FakeClock) -> None:
        """An L1 hit rate under the threshold over the interval alerts; no lookups, none."""
        alerts: list[tuple[str, dict[str, Any]]] = []
        config = CacheConfig(redis_url=None, enable_monitoring=False)
        async with CacheManager(config) as cache:
            monitor = CacheMonitor(
                cache,
                hit_rate_alert_below=0.5,
                on_alert=lambda kind, details: alerts.append((kind, details)),
                timer=clock,
            )
            await monitor.check()  # baseline
            clock.tick(10)
            assert [] == (await monitor.check())["alerts"]  # no lookups at all
            await cache.set("a", 1)
            await cache.get("a")
            for n in range(3):
                await cache.get(f"missing{n}")
            clock.tick(10)
            with structlog.testing.capture_logs() as logs:
                report = await monitor.check()
            assert ["low_hit_rate"] == report["alerts"]
            assert 0.25 == report["l1_hit_rate"]
            assert [("low_hit_rate", {"hit_rate": 0.25, "threshold": 0.5, "lookups": 4})] == (
                alerts
            )
            assert ["cache_stats", "cache_alert"] == [entry["event"] for entry in logs]
            await cache.get("a")
            clock.tick(10)
            assert [] == (await monitor.check())["alerts"]  # 100 % over the last interval
            assert 1 == len(alerts)

    async def test_high_error_rate_with_async_hook(
        self, private_server: RedisServer, namespace: str, clock: FakeClock
    ) -> None:
        """Redis errors per second above the threshold alert; an async hook is awaited."""
        alerts: list[str] = []

        async def on_alert(kind: str, details: dict[str, Any]) -> None:
            alerts.append(kind)

        config = CacheConfig(
            redis_url=private_server.url,
            namespace=namespace,
            enable_monitoring=False,
            enable_invalidation_bus=False,
            circuit_breaker_threshold=100,
        )
        async with CacheManager(config) as cache:
            monitor = CacheMonitor(
                cache, error_rate_alert_above=0.5, on_alert=on_alert, timer=clock
            )
            await monitor.check()
            private_server.kill()
            for n in range(4):
                await cache.get(f"k{n}")
            clock.tick(2)
            report = await monitor.check()
        assert 2.0 == report["l2_errors_per_s"]
        assert ["high_error_rate"] == alerts

    async def test_failing_hook_is_logged(self, clock: FakeClock) -> None:
        """A hook that raises is logged; the check still returns its report."""

        def on_alert(kind: str, details: dict[str, Any]) -> None:
            raise RuntimeError("pager down")

        config = CacheConfig(redis_url=None, enable_monitoring=False)
        async with CacheManager(config) as cache:
            monitor = CacheMonitor(cache, hit_rate_alert_below=1.0, on_alert=on_alert, timer=clock)
            await monitor.check()
            await cache.get("nothing")
            clock.tick(1)
            with structlog.testing.capture_logs() as logs:
                report = await monitor.check()
        assert ["low_hit_rate"] == report["alerts"]
        assert "monitor_alert_failed" in [entry["event"] for entry in logs]


class TestStatsAdditions:
    """Latency percentiles per tier and the L1 memory estimate."""

    async def test_latency_percentiles(self, make_manager: ManagerFactory) -> None:
        """Both tiers report counts and ordered, plausible p50 <= p99 (milliseconds)."""
        cache = await make_manager(enable_monitoring=False)
        await cache.set("k", {"v": 1})
        for _ in range(200):
            await cache.get("k")
        for n in range(20):
            await cache.get(f"cold{n}")
        latency = (await cache.get_stats())["latency"]
        l1, l2 = latency["l1"], latency["l2"]
        assert l1["count"] >= 200 // 64
        assert l2["count"] >= 21
        for tier in (l1, l2):
            p50, p99, top = tier["p50_ms"], tier["p99_ms"], tier["max_ms"]
            assert p50 is not None and p99 is not None and top is not None
            assert 0 <= p50 <= p99 <= top
        assert l1["p50_ms"] is not None and l2["p50_ms"] is not None
        assert l1["p50_ms"] < 1.0  # an L1 lookup is well under a millisecond
        assert l1["p50_ms"] < l2["p50_ms"]

    def test_memory_estimate_grows_with_entries(self) -> None:
        """More (and bigger) entries, a larger estimate; empty is zero."""
        cache = InMemoryCache(10_000, ttl=None)
        assert 0 == cache.get_stats()["memory_bytes"]
        for n in range(100):
            cache.set(f"user:{n}", {"name": "x" * 100, "tags": ["a", "b"]})
        hundred = cache.get_stats()["memory_bytes"]
        for n in range(100, 1000):
            cache.set(f"user:{n}", {"name": "x" * 100, "tags": ["a", "b"]})
        thousand = cache.get_stats()["memory_bytes"]
        assert 100 * 100 < hundred < thousand
        assert 8 < thousand / hundred < 12

    async def test_memory_estimate_in_manager_stats(self, make_manager: ManagerFactory) -> None:
        """get_stats()["l1_cache"]["memory_bytes"] follows the L1."""
        cache = await make_manager(enable_monitoring=False)
        before = (await cache.get_stats())["l1_cache"]["memory_bytes"]
        for n in range(50):
            await cache.set(f"k{n}", "v" * 1000, tier=CacheTier.L1)
        after = (await cache.get_stats())["l1_cache"]["memory_bytes"]
        assert 0 == before
        assert 50 * 1000 < after


HEALTH_EXAMPLE = """
@app.get("/health/cache")
async def cache_health_check():
    stats = await cache_manager.get_stats()

    l1_healthy = stats["l1_cache"]["hit_rate"] > 0.1
    l2_healthy = stats["l2_cache"]["connected"] and stats["l2_cache"]["errors"] < 10

    return {
        "status": "healthy" if (l1_healthy and l2_healthy) else "unhealthy",
        "l1_cache": {"status": "healthy" if l1_healthy else "unhealthy"},
        "l2_cache": {"status": "healthy" if l2_healthy else "unhealthy"}
    }
"""
"""The seed's health-check example, verbatim (but for trailing spaces on blank lines)."""


class _App:
    """Just enough of a FastAPI app for the example's decorator."""

    def get(self, path: str) -> Callable[[Any], Any]:
        return lambda func: func


class TestSeedHealthExample:
    """The seed's ``/health/cache`` endpoint works as written."""

    async def test_example_runs_as_written(self, make_manager: ManagerFactory) -> None:
        """Healthy after hits on a connected L2; unhealthy L1 after misses only."""
        cache_manager = await make_manager()
        scope: dict[str, Any] = {"app": _App(), "cache_manager": cache_manager}
        exec(compile(ast.parse(textwrap.dedent(HEALTH_EXAMPLE)), "seed", "exec"), scope)
        await cache_manager.set("k", 1)
        for _ in range(5):
            await cache_manager.get("k")
        assert {
            "status": "healthy",
            "l1_cache": {"status": "healthy"},
            "l2_cache": {"status": "healthy"},
        } == await scope["cache_health_check"]()

    async def test_example_on_a_cold_cache(self, make_manager: ManagerFactory) -> None:
        """No hits yet: the example's own rule says L1 unhealthy."""
        cache_manager = await make_manager()
        scope: dict[str, Any] = {"app": _App(), "cache_manager": cache_manager}
        exec(compile(ast.parse(textwrap.dedent(HEALTH_EXAMPLE)), "seed", "exec"), scope)
        await cache_manager.get("missing")
        result = await scope["cache_health_check"]()
        assert "unhealthy" == result["l1_cache"]["status"]
        assert "healthy" == result["l2_cache"]["status"]
