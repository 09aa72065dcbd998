"""Background tasks: supervision, lifecycle from any task, stats and health."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import TaskStatus
from redis.asyncio import Redis
from structlog.testing import capture_logs

from coherent_cache import CacheClosedError, CacheConfig, CacheManager, create_cache_manager
from coherent_cache._supervisor import Supervisor
from coherent_cache.l1 import InvalidateTags
from coherent_cache.testing import RedisServer

from .conftest import FakeClock, ManagerFactory


class TestSupervisor:
    async def test_crashed_task_is_restarted(self) -> None:
        """A loop that raises is restarted with backoff; its restarts are counted."""
        runs: list[int] = []
        settled = anyio.Event()

        async def flaky(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            runs.append(len(runs))
            if len(runs) <= 2:
                raise RuntimeError(f"crash {len(runs)}")
            task_status.started()
            settled.set()
            await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            supervisor = Supervisor(tg, backoff_max=0.05)
            await supervisor.start("flaky", flaky)  # returns even though run 1 crashed
            with anyio.fail_after(5):
                await settled.wait()
            info = supervisor.tasks["flaky"]
            assert ("running", 2, "RuntimeError: crash 2") == (
                info["state"],
                info["restarts"],
                info["last_error"],
            )
            tg.cancel_scope.cancel()

    async def test_task_is_given_up_after_max_restarts(self) -> None:
        """A loop that keeps crashing is marked failed after max_restarts crashes."""

        async def broken(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            raise ValueError("always")

        async with anyio.create_task_group() as tg:
            supervisor = Supervisor(tg, backoff_max=0.01, max_restarts=3)
            await supervisor.start("broken", broken)
        assert "failed" == supervisor.tasks["broken"]["state"]
        assert 4 == supervisor.tasks["broken"]["restarts"]
        assert ["broken"] == supervisor.failed()


class TestLifecycle:
    async def test_start_and_stop_from_different_tasks_and_scopes(
        self, redis_url: str, namespace: str
    ) -> None:
        """start() inside a cancel scope and stop() from another task both work."""
        cache = create_cache_manager(CacheConfig(redis_url=redis_url, namespace=namespace))
        with anyio.fail_after(5):
            await cache.start()
        assert cache.running
        assert True is (await cache.get_stats())["bus"]["connected"]
        async with anyio.create_task_group() as tg:
            tg.start_soon(cache.stop)
        assert not cache.running

    async def test_started_manager_is_subscribed_and_stop_closes_everything(
        self, redis_url: str, namespace: str, raw_redis: Redis
    ) -> None:
        """start() returns subscribed; stop() leaves no connection and no running task."""
        cache = CacheManager(CacheConfig(redis_url=redis_url, namespace=namespace))
        await cache.start()
        channel = f"{namespace}:invalidate"
        assert {channel.encode(): 1} == dict(await raw_redis.pubsub_numsub(channel))
        with anyio.fail_after(5):
            await cache.stop()
        names = [c.get("name", "") for c in await raw_redis.client_list()]
        assert [] == [n for n in names if namespace in n]
        states = {info["state"] for info in (await cache.get_stats())["tasks"].values()}
        assert {"stopped"} == states


class TestStatsAndHealth:
    async def test_stats_include_bus_and_tasks(self, make_manager: ManagerFactory) -> None:
        """get_stats reports the bus (connected, channel, origin, counters) and task states."""
        cache = await make_manager()
        stats = await cache.get_stats()
        bus = stats["bus"]
        assert (True, True) == (bus["enabled"], bus["connected"])
        assert cache.origin == bus["origin"]
        assert bus["channel"].endswith(":invalidate")
        assert {"l1_actor", "bus_listener", "tag_pruner", "monitor", "fleet_reporter"} == set(
            stats["tasks"]
        )
        assert {"running"} == {t["state"] for t in stats["tasks"].values()}

    async def test_healthy_when_everything_is_up(self, make_manager: ManagerFactory) -> None:
        """A started manager against a live server is healthy with no reasons."""
        cache = await make_manager()
        report = await cache.health()
        assert ("healthy", [], True, True) == (
            report["status"],
            report["reasons"],
            report["l2_connected"],
            report["bus_connected"],
        )

    async def test_l1_only_manager_is_healthy(self, make_manager: ManagerFactory) -> None:
        """Without Redis configured there is nothing to be unhealthy about."""
        cache = await make_manager(redis_url=None)
        report = await cache.health()
        assert ("healthy", None, None) == (
            report["status"],
            report["l2_connected"],
            report["bus_connected"],
        )

    async def test_stopped_manager_is_unhealthy(self, redis_url: str, namespace: str) -> None:
        """After stop(), health says unhealthy and why."""
        cache = create_cache_manager(CacheConfig(redis_url=redis_url, namespace=namespace))
        await cache.start()
        await cache.stop()
        report = await cache.health()
        assert "unhealthy" == report["status"]
        assert any("closed" in reason for reason in report["reasons"])

    @pytest.mark.faults
    async def test_redis_down_is_degraded_then_healthy_again(
        self, private_server: RedisServer
    ) -> None:
        """Redis down makes health degraded; after a restart it turns healthy by itself."""
        config = CacheConfig(
            redis_url=private_server.url,
            namespace="health",
            operation_timeout=0.2,
            connect_timeout=0.2,
            circuit_breaker_cooldown=0.3,
            bus_health_check_interval=0.2,
            reconnect_backoff_max=0.2,
        )
        async with create_cache_manager(config) as cache:
            private_server.kill()
            with anyio.fail_after(5):
                while (report := await cache.health())["status"] != "degraded":  # noqa: ASYNC110 - health is polled, as a load balancer would
                    await anyio.sleep(0.05)
            assert False is report["l2_connected"]
            assert any("redis unreachable" in r for r in report["reasons"])
            private_server.start()
            with anyio.fail_after(10):
                while (report := await cache.health())["status"] != "healthy":  # noqa: ASYNC110 - polled like a health endpoint
                    await anyio.sleep(0.05)
            assert [] == report["reasons"]
            assert (await cache.get_stats())["bus"]["recoveries"] >= 1


class TestBoundLogs:
    async def test_background_events_carry_namespace_and_origin(
        self, make_manager: ManagerFactory, namespace: str
    ) -> None:
        """Supervisor and mailbox events name the instance they come from."""
        cache = await make_manager(l1_mailbox_size=1)
        assert cache._supervisor is not None
        with capture_logs() as events:
            # One to the waiting actor, one buffered, one overflows (tag drops are never
            # applied inline).
            for _ in range(3):
                cache._actor.submit(InvalidateTags(("nothing",)))
            cache._supervisor.log.error("task_crashed", task="probe")
        overflow = next(e for e in events if e["event"] == "l1_mailbox_overflow")
        crashed = next(e for e in events if e["event"] == "task_crashed")
        for event in (overflow, crashed):
            assert (namespace, cache.origin) == (event["namespace"], event["origin"])


class TestStopInsideAsyncWith:
    async def test_stop_inside_the_block_closes_and_the_block_still_exits(
        self, redis_url: str, namespace: str, raw_redis: Redis
    ) -> None:
        """stop() inside `async with` refuses later operations; the block exits cleanly
        and releases every connection."""
        async with create_cache_manager(
            CacheConfig(redis_url=redis_url, namespace=namespace)
        ) as cache:
            await cache.set("k", 1)
            with anyio.CancelScope():
                await cache.stop()
            await cache.stop()
            with pytest.raises(CacheClosedError):
                await cache.get("k")
        names = [c.get("name", "") for c in await raw_redis.client_list()]
        assert [] == [n for n in names if namespace in n]


class TestUnconfirmedWrites:
    @pytest.mark.faults
    async def test_l1_copy_of_a_failed_l2_write_is_served_briefly(
        self, private_server: RedisServer, clock: FakeClock
    ) -> None:
        """A write whose L2 SET failed (bus still up) lives in L1 at most
        max_stale_on_bus_loss, since no other instance and no L2 has it."""
        config = CacheConfig(
            redis_url=private_server.url, namespace="oom", max_stale_on_bus_loss=2.0
        )
        async with CacheManager(config, timer=clock) as cache:  # L1 lifetimes by hand
            admin = Redis.from_url(private_server.url)
            try:
                await admin.config_set("maxmemory-policy", "noeviction")
                await admin.config_set("maxmemory", "1")  # every write is refused (OOM)
                assert False is await cache.set("k", "v", ttl=300)
                assert True is cache.stats()["bus"]["connected"]
                assert "v" == await cache.get("k")  # read-your-writes, for now
                clock.tick(2.1)
                assert None is cache.l1.peek("k")
            finally:
                await admin.config_set("maxmemory", "0")
                await admin.aclose()
