"""Cache warming against a real server: batches, bad items, outages, background work."""

from __future__ import annotations

import ast
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from redis.asyncio import Redis

from coherent_cache import (
    CacheManager,
    CacheTier,
    CacheWarmer,
    WarmHandle,
    WarmResult,
)
from coherent_cache.testing import RedisServer
from coherent_cache.warming import WarmItem

from .conftest import ManagerFactory, eventually, l1_applied

DOC = Path(__file__).resolve().parent.parent / "docs" / "warming.md"


def count_calls(manager: CacheManager, monkeypatch: pytest.MonkeyPatch, op: str) -> list[str]:
    """Record every guarded Redis call named ``op`` that ``manager``'s L2 makes."""
    assert manager.l2 is not None
    real = manager.l2._call
    seen: list[str] = []

    async def counting(name: str, func: Callable[[], Awaitable[Any]], *rest: Any) -> Any:
        if name == op:
            seen.append(name)
        return await real(name, func, *rest)

    monkeypatch.setattr(manager.l2, "_call", counting)
    return seen


async def numbered(n: int, prefix: str = "item") -> AsyncIterator[WarmItem]:
    """``n`` items from an async generator, as a database cursor would stream them."""
    for i in range(n):
        yield (f"{prefix}:{i}", {"id": i})


class TestSeedExample:
    async def test_seed_example_runs_as_written(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """The seed's Cache Warming block (quoted in docs/warming.md) stores every user."""
        cache_manager = await make_manager()
        users = [{"id": i, "name": f"user {i}"} for i in range(250)]

        async def get_frequently_accessed_users() -> list[dict[str, Any]]:
            return users

        block = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)[0]
        scope: dict[str, Any] = {
            "cache_manager": cache_manager,
            "get_frequently_accessed_users": get_frequently_accessed_users,
        }
        exec(compile(block, "warming.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT), scope)
        await scope["warm_user_cache"]()

        assert {"id": 7, "name": "user 7"} == cache_manager.l1.get("user:7")
        assert {"id": 249, "name": "user 249"} == await cache_manager.get("user:249", CacheTier.L2)
        assert 1 == await raw_redis.exists(f"{namespace}:user:0")

    async def test_cache_warmer_signature(self, make_manager: ManagerFactory) -> None:
        """CacheWarmer(manager).warm_cache(data_source, batch_size) returns a WarmResult."""
        cache = await make_manager()

        async def data_source() -> list[tuple[str, Any]]:
            return [(f"user:{i}", {"id": i}) for i in range(10)]

        result = await CacheWarmer(cache).warm_cache(data_source, 4)

        assert isinstance(result, WarmResult)
        assert (10, [], 0, 3, 10) == (
            result.written,
            result.skipped,
            result.failed,
            result.batches,
            result.l1_written,
        )
        assert {"id": 3} == await cache.get("user:3", CacheTier.L2)

    async def test_warming_publishes_nothing(self, make_manager: ManagerFactory) -> None:
        """A warm is a fill: no bus message, and no change to total_sets."""
        cache = await make_manager()
        result = await cache.warm_cache([(f"k:{i}", i) for i in range(300)])

        stats = cache.stats()
        assert 300 == result.written
        assert 0 == stats["bus"]["published"]
        assert 0 == stats["total_sets"]

    async def test_not_running(self, make_manager: ManagerFactory) -> None:
        """Warming a stopped manager raises CacheClosedError; bad arguments raise early."""
        from coherent_cache import CacheClosedError, InvalidTTLError

        cache = await make_manager()
        with pytest.raises(ValueError, match="batch_size"):
            await cache.warm_cache([("k", 1)], 0)
        with pytest.raises(InvalidTTLError):
            await cache.warm_cache([("k", 1)], ttl=-1)
        with pytest.raises(TypeError, match="data_source"):
            await cache.warm_cache(42)  # type: ignore[arg-type]
        await cache.stop()
        with pytest.raises(CacheClosedError):
            await cache.warm_cache([("k", 1)])
        with pytest.raises(CacheClosedError):
            cache.warm_in_background([("k", 1)])


class TestLargeWarm:
    @pytest.mark.timeout(30)
    async def test_100k_items_from_an_async_iterator(
        self,
        make_manager: ManagerFactory,
        private_server: RedisServer,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """100,000 streamed items land in L2 in ceil(n / batch_size) pipelined round trips,
        and the first memory_cache_size of them in L1."""
        n, batch_size = 100_000, 500
        # Batching is the point, not timeouts: a loaded machine may take over 0.5 s per batch.
        cache = await make_manager(
            redis_url=private_server.url,
            memory_cache_size=1000,
            operation_timeout=5.0,
            fleet_report_interval=0,  # the test counts the keys in the database
        )
        round_trips = count_calls(cache, monkeypatch, "SET*")

        result = await cache.warm_cache(numbered(n), batch_size, ttl=600)

        assert n == result.written
        assert [] == result.skipped
        assert 0 == result.failed
        assert math.ceil(n / batch_size) == result.batches == len(round_trips)
        assert 1000 == result.l1_written == len(cache.l1)
        assert {"id": 0} == cache.l1.peek("item:0")
        assert {"id": 999} == cache.l1.peek("item:999")
        assert None is cache.l1.peek("item:1000")
        async with Redis.from_url(private_server.url) as raw:
            assert n == await raw.dbsize()
            assert 0 < await raw.pttl(f"{cache.config.namespace}:item:{n - 1}") <= 600_000
        assert {"id": 54321} == await cache.get("item:54321")

    async def test_l1_only_and_l2_only(self, make_manager: ManagerFactory) -> None:
        """tier=L1 writes this instance only; tier=L2 writes Redis only and drops L1 copies."""
        cache = await make_manager()
        await cache.set("b:1", "old", tier=CacheTier.L1)

        only_l1 = await cache.warm_cache([("a:1", 1), ("a:2", 2)], tier=CacheTier.L1)
        only_l2 = await cache.warm_cache([("b:1", "new")], tier=CacheTier.L2)

        assert (2, 2) == (only_l1.written, only_l1.l1_written)
        assert None is await cache.get("a:1", CacheTier.L2)
        assert 1 == cache.l1.get("a:1")
        assert (1, 0) == (only_l2.written, only_l2.l1_written)
        assert None is cache.l1.peek("b:1")
        assert "new" == await cache.get("b:1")


class TestItems:
    async def test_bad_items_are_skipped_and_reported(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """Invalid keys and TTLs, unserialisable or oversized values and malformed items are
        skipped with a reason; the good items of the same batch are written."""
        cache = await make_manager(max_value_size=1024, enable_compression=False)
        items: list[Any] = [
            ("good:1", 1),
            ("", "empty key"),
            (5, "not a str key"),
            ("bad:value", object()),
            ("bad:size", "x" * 5000),
            ("bad:ttl", 1, -3),
            ("lonely",),
            "not a tuple",
            ("good:2", 2, 60),
        ]
        with structlog.testing.capture_logs() as logs:
            result = await cache.warm_cache(items, batch_size=100)

        assert 2 == result.written
        assert 1 == result.batches
        reasons = dict(result.skipped)
        assert ["", "5", "bad:value", "bad:size", "bad:ttl", "<item 6>", "<item 7>"] == [
            key for key, _ in result.skipped
        ]
        assert reasons["bad:value"].startswith("SerializationError: cannot serialize")
        assert "object" in reasons["bad:value"]
        assert reasons["bad:size"].startswith("ValueTooLargeError")
        assert reasons["bad:ttl"].startswith("InvalidTTLError")
        assert reasons[""].startswith("InvalidKeyError")
        assert reasons["<item 6>"].startswith("_BadItem: expected a (key, value)")
        assert 2 == await raw_redis.exists(f"{namespace}:good:1", f"{namespace}:good:2")
        assert 0 == await raw_redis.exists(f"{namespace}:bad:value", f"{namespace}:bad:size")
        skipped_logs = [e for e in logs if e["event"] == "warm_item_skipped"]
        assert 7 == len(skipped_logs)
        assert "bad" == skipped_logs[2]["key_prefix"]  # the prefix only, never the full key

    async def test_per_item_ttl(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """(key, value, ttl) keeps its own TTL; (key, value) gets the warm's; None: none."""
        cache = await make_manager()
        items: list[WarmItem] = [("t:own", 1, 30), ("t:default", 2), ("t:never", 3, None)]

        await cache.warm_cache(items, ttl=600)

        own = await raw_redis.pttl(f"{namespace}:t:own")
        default = await raw_redis.pttl(f"{namespace}:t:default")
        assert 29_000 < own <= 30_000
        assert 599_000 < default <= 600_000
        assert -1 == await raw_redis.pttl(f"{namespace}:t:never")

    async def test_data_source_forms(self, make_manager: ManagerFactory) -> None:
        """An async generator function, a sync iterable and an async function all work."""
        cache = await make_manager()

        async def gen() -> AsyncIterator[WarmItem]:
            for i in range(5):
                yield (f"g:{i}", i)

        async def returns_generator() -> Any:
            return ((f"s:{i}", i) for i in range(5))

        assert 5 == (await cache.warm_cache(gen, 2)).written
        assert 5 == (await cache.warm_cache(returns_generator)).written
        assert 3 == (await cache.warm_cache(iter([("i:1", 1), ("i:2", 2), ("i:3", 3)]))).written
        assert 0 == (await cache.warm_cache([])).batches
        assert 4 == await cache.get("g:4", CacheTier.L2)


class TestProgress:
    async def test_progress_callback_and_log_events(self, make_manager: ManagerFactory) -> None:
        """progress() sees each batch's result so far; warm_progress and warm_done are logged."""
        cache = await make_manager()
        seen: list[WarmResult] = []

        async def on_progress(result: WarmResult) -> None:
            seen.append(result)

        with structlog.testing.capture_logs() as logs:
            result = await cache.warm_cache(
                numbered(250), batch_size=100, progress=on_progress, name="users"
            )

        assert [100, 200, 250] == [r.written for r in seen]
        assert [1, 2, 3] == [r.batches for r in seen]
        assert seen[-1].written == result.written
        events = [e for e in logs if e["event"].startswith("warm_")]
        assert "warm_progress" == events[0]["event"]  # the first batch is always logged
        assert {"warmer": "users", "batches": 1, "written": 100} == {
            k: events[0][k] for k in ("warmer", "batches", "written")
        }
        done = events[-1]
        assert "warm_done" == done["event"]
        assert ("users", 3, 250, 0, 0) == (
            done["warmer"],
            done["batches"],
            done["written"],
            done["skipped"],
            done["failed"],
        )

    async def test_sync_progress_callback(self, make_manager: ManagerFactory) -> None:
        """A plain function works as a progress callback too."""
        cache = await make_manager()
        seen: list[WarmResult] = []
        await cache.warm_cache(numbered(30), 10, progress=seen.append)
        assert [10, 20, 30] == [r.written for r in seen]


@pytest.mark.faults
class TestOutage:
    async def test_redis_killed_mid_warm(
        self, make_manager: ManagerFactory, private_server: RedisServer
    ) -> None:
        """Killing Redis mid-warm raises nothing: later batches are reported failed, their
        L1 part is still written, and the manager keeps serving."""
        cache = await make_manager(
            redis_url=private_server.url,
            operation_timeout=0.2,
            connect_timeout=0.2,
            circuit_breaker_cooldown=0.5,
        )

        async def source() -> AsyncIterator[WarmItem]:
            for i in range(500):
                if i == 100:
                    private_server.kill()  # batch 1 is written, the rest is not
                yield (f"o:{i}", i)

        with structlog.testing.capture_logs() as logs, anyio.fail_after(10):
            result = await cache.warm_cache(source, batch_size=100)

        assert (100, 400, 5, 500) == (
            result.written,
            result.failed,
            result.batches,
            result.l1_written,
        )
        assert 499 == await cache.get("o:499")  # from L1
        failures = [e for e in logs if e["event"] == "warm_batch_failed"]
        assert 1 == len(failures)  # logged once for the whole run of failed batches
        assert 2 == failures[0]["batch"]
        assert "warm_done" == [e for e in logs if e["event"].startswith("warm_")][-1]["event"]


class TestFillRace:
    async def test_invalidation_during_the_batch_is_not_undone(
        self, make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A key deleted by another instance while its batch is in flight does not come
        back into this instance's L1; keys of the batch not invalidated do."""
        warmer = await make_manager()
        other = await make_manager()
        assert warmer.l2 is not None
        real = warmer.l2.set_payloads
        applied = l1_applied(warmer)

        async def racing(items: Any, *, raise_errors: bool = False) -> bool:
            ok = await real(items, raise_errors=raise_errors)
            await other.delete("race:1")  # lands after the warm's SET, before L1 install
            await eventually(lambda: l1_applied(warmer) > applied)  # its L1 mailbox applied it
            return ok

        monkeypatch.setattr(warmer.l2, "set_payloads", racing)
        result = await warmer.warm_cache([("race:1", "v1"), ("race:2", "v2")])

        assert 2 == result.written
        assert 1 == result.l1_written
        assert None is warmer.l1.peek("race:1")
        assert "v2" == warmer.l1.peek("race:2")
        assert None is await warmer.get("race:1")  # gone everywhere, as the delete wanted

    async def test_local_write_during_the_batch_wins_in_l1(
        self, make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A local set() racing with the batch keeps its value in L1."""
        cache = await make_manager()
        assert cache.l2 is not None
        real = cache.l2.set_payloads

        async def racing(items: Any, *, raise_errors: bool = False) -> bool:
            ok = await real(items, raise_errors=raise_errors)
            await cache.set("race:k", "newer")
            return ok

        monkeypatch.setattr(cache.l2, "set_payloads", racing)
        result = await cache.warm_cache([("race:k", "warmed")])

        assert 0 == result.l1_written
        assert "newer" == cache.l1.peek("race:k")


class TestBackground:
    async def test_result_through_the_handle(self, make_manager: ManagerFactory) -> None:
        """warm_in_background returns at once; wait() gives the WarmResult."""
        cache = await make_manager()
        handle = cache.warm_in_background(numbered(300), batch_size=100, name="bg")

        assert isinstance(handle, WarmHandle)
        result = await handle.wait()
        assert (300, 3, False) == (result.written, result.batches, result.cancelled)
        assert handle.done and not handle.cancelled and handle.error is None
        assert result is handle.result is handle.progress()

    async def test_cancel_midway(self, make_manager: ManagerFactory) -> None:
        """Cancelling mid-way stops the warm: what was written stays, the rest is not
        written, the handle reports the cancellation, the manager keeps working."""
        cache = await make_manager()
        reached = anyio.Event()

        async def source() -> AsyncIterator[WarmItem]:
            for i in range(1000):
                if i == 300:
                    reached.set()
                    await anyio.sleep_forever()  # a slow database
                yield (f"c:{i}", i)

        handle = cache.warm_in_background(source, batch_size=100)
        with anyio.fail_after(5):
            await reached.wait()
            await eventually(lambda: handle.progress().batches == 3)
            handle.cancel()
            result = await handle.wait()

        assert True is result.cancelled is handle.cancelled
        assert (300, 3) == (result.written, result.batches)
        assert None is await cache.get("c:300")
        assert 299 == await cache.get("c:299", CacheTier.L2)
        assert await cache.set("after", 1)
        assert "healthy" == (await cache.health())["status"]

    async def test_crashing_data_source(self, make_manager: ManagerFactory) -> None:
        """A data source that raises is reported by the handle; the manager stays healthy."""
        cache = await make_manager()

        async def source() -> AsyncIterator[WarmItem]:
            yield ("ok:1", 1)
            raise RuntimeError("database went away")

        with structlog.testing.capture_logs() as logs:
            handle = cache.warm_in_background(source, name="crashy")
            with pytest.raises(RuntimeError, match="database went away"):
                await handle.wait()

        assert isinstance(handle.error, RuntimeError)
        assert None is handle.result
        assert not handle.cancelled
        assert "crashy" == next(e for e in logs if e["event"] == "warm_failed")["warmer"]
        assert "healthy" == (await cache.health())["status"]
        assert await cache.set("still", "works")
        assert "works" == await cache.get("still")

    async def test_stopping_the_manager_cancels_background_warms(
        self, make_manager: ManagerFactory
    ) -> None:
        """stop() cancels a background warm; its handle resolves as cancelled."""
        cache = await make_manager()

        async def endless() -> AsyncIterator[WarmItem]:
            i = 0
            while True:
                yield (f"e:{i}", i)
                i += 1
                if i % 50 == 0:
                    await anyio.sleep(0.001)

        handle = cache.warm_in_background(endless, batch_size=50)
        await eventually(lambda: handle.progress().batches >= 2)
        with anyio.fail_after(5):
            await cache.stop()
            result = await handle.wait()
        assert result.cancelled
        assert result.written >= 100


class TestScheduled:
    async def test_runs_repeatedly_and_stops_when_cancelled(
        self, make_manager: ManagerFactory
    ) -> None:
        """schedule_warming re-reads its source every period, shows as a task, and stops."""
        cache = await make_manager()
        calls = 0

        async def refresh() -> list[WarmItem]:
            nonlocal calls
            calls += 1
            return [("sched:counter", calls)]

        schedule = cache.schedule_warming(refresh, every=0.02, name="counter")

        await eventually(lambda: schedule.runs >= 3)
        assert "running" == cache.stats()["tasks"]["warm:counter"]["state"]
        assert schedule.last_result is not None and 1 == schedule.last_result.written
        assert calls >= 3 and await cache.get("sched:counter", CacheTier.L2) >= 3
        schedule.cancel()
        await eventually(lambda: cache.stats()["tasks"]["warm:counter"]["state"] == "stopped")
        runs = schedule.runs
        await anyio.sleep(0.1)
        assert runs == schedule.runs
        assert "healthy" == (await cache.health())["status"]

    async def test_failing_runs_are_counted_and_the_schedule_goes_on(
        self, make_manager: ManagerFactory
    ) -> None:
        """A run that raises is counted in failures; later runs still happen."""
        cache = await make_manager()
        calls = 0

        async def flaky() -> list[WarmItem]:
            nonlocal calls
            calls += 1
            if calls % 2:
                raise RuntimeError("flaky")
            return [("flaky", calls)]

        schedule = cache.schedule_warming(flaky, every=0.01)
        await eventually(lambda: schedule.runs >= 2 and schedule.failures >= 2)
        assert isinstance(schedule.last_error, RuntimeError)
        assert "running" == cache.stats()["tasks"][schedule.task]["state"]
        assert 0 == cache.stats()["tasks"][schedule.task]["restarts"]
        assert "healthy" == (await cache.health())["status"]

    async def test_registered_before_start_runs_on_start(
        self, redis_url: str, namespace: str, raw_redis: Redis
    ) -> None:
        """A warmer registered before start() warms once the manager runs (on_start)."""
        from coherent_cache import CacheConfig

        cache = CacheManager(CacheConfig(redis_url=redis_url, namespace=namespace))

        async def boot() -> list[WarmItem]:
            return [("boot:1", "ready")]

        schedule = cache.warm_when(boot, hit_rate_below=None, on_start=True)
        assert 0 == schedule.runs
        async with cache:
            await eventually(lambda: schedule.runs == 1)
            assert "ready" == cache.l1.get("boot:1")
            await eventually(lambda: cache.stats()["tasks"]["warm:boot"]["state"] == "stopped")

    def test_bad_schedules(self) -> None:
        """An iterator source, a bad period or no trigger at all raise at once."""
        cache = CacheManager()

        async def src() -> list[WarmItem]:
            return []

        with pytest.raises(TypeError, match="iterator"):
            cache.schedule_warming(numbered(3), every=1)
        with pytest.raises(ValueError, match="every"):
            cache.schedule_warming(src, every=0)
        with pytest.raises(ValueError, match="nothing would trigger"):
            cache.warm_when(src, hit_rate_below=None)
        with pytest.raises(ValueError, match="hit_rate_below"):
            cache.warm_when(src, hit_rate_below=1.5)
        first = cache.schedule_warming(src, every=1)
        second = cache.schedule_warming(src, every=1)
        assert ("src", "src-2") == (first.name, second.name)
        with pytest.raises(ValueError, match="already scheduled"):
            cache.schedule_warming(src, every=1, name="src")


class TestConditional:
    async def test_warms_when_the_l1_hit_rate_drops(self, make_manager: ManagerFactory) -> None:
        """warm_when stays idle while the hit rate is high and warms once it drops below
        the threshold over at least min_requests lookups."""
        cache = await make_manager()
        await cache.set("hot", 1)

        async def catalog() -> list[WarmItem]:
            return [(f"cat:{i}", i) for i in range(20)]

        schedule = cache.warm_when(
            catalog, hit_rate_below=0.5, check_every=0.02, min_requests=20, name="catalog"
        )
        assert "warm:catalog" == schedule.task
        for _ in range(40):  # 100 % hits
            assert 1 == await cache.get("hot", CacheTier.L1)
        await anyio.sleep(0.1)  # several checks
        assert 0 == schedule.runs

        for i in range(5):  # too few lookups: no verdict yet
            await cache.get(f"cat:{i}", CacheTier.L1)
        await anyio.sleep(0.1)
        assert 0 == schedule.runs

        with structlog.testing.capture_logs() as logs:
            for i in range(5, 20):  # 20 misses in the window
                assert None is await cache.get(f"cat:{i}", CacheTier.L1)
            await eventually(lambda: schedule.runs == 1)
        triggered = next(e for e in logs if e["event"] == "warm_triggered")
        assert 0.0 == triggered["hit_rate"]
        assert 19 == await cache.get("cat:19", CacheTier.L1)  # warmed into L1
        assert 1 == schedule.runs
