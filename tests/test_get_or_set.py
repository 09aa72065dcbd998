"""get_or_set: single-flight, errors, negative caching, stale-while-revalidate, tags."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from coherent_cache import CacheManager, CacheTier, InvalidTTLError
from coherent_cache.l2 import TAG_PRUNE_MIN

from .conftest import FakeClock, ManagerFactory, eventually

# Lock tests check the lock, not timeouts: a loaded 2-core machine can stall a reply past
# the 0.5 s default, which opens the breaker and (by design) runs loaders unlocked.
LOCK_TEST_TIMEOUT = 3.0


class Loader:
    """A loader that counts its calls and can be held until released."""

    def __init__(self, value: Any = "loaded", *, hold: bool = False) -> None:
        self.value = value
        self.calls = 0
        self.started = anyio.Event()
        self.release = anyio.Event()
        if not hold:
            self.release.set()
        self.error: Exception | None = None

    async def __call__(self) -> Any:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.value


class TestSingleFlight:
    async def test_500_concurrent_callers_run_the_loader_once(
        self, make_manager: ManagerFactory
    ) -> None:
        """500 callers of one cold key share a single loader call and its result."""
        cache = await make_manager()
        loader = Loader({"n": 1}, hold=True)
        results: list[Any] = []

        async def call() -> None:
            results.append(await cache.get_or_set("cold", loader, ttl=60))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(500):
                    tg.start_soon(call)
                await loader.started.wait()
                await anyio.wait_all_tasks_blocked()
                loader.release.set()
        assert 1 == loader.calls
        assert [{"n": 1}] * 500 == results
        stats = (await cache.get_stats())["loader"]
        assert (1, 500) == (stats["loads"], stats["misses"])

    async def test_loader_error_reaches_every_caller_and_is_not_cached(
        self, make_manager: ManagerFactory
    ) -> None:
        """A loader exception is raised to every waiting caller; the next call loads again."""
        cache = await make_manager()
        loader = Loader(hold=True)
        loader.error = LookupError("database down")
        errors: list[BaseException] = []

        async def call() -> None:
            try:
                await cache.get_or_set("k", loader, ttl=60)
            except LookupError as exc:
                errors.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(call)
                # Every caller has missed and joined the flight before the loader fails.
                await eventually(lambda: cache.stats()["loader"]["misses"] == 20)
                loader.release.set()
        assert 20 == len(errors)
        assert {"database down"} == {str(e) for e in errors}
        loader.error = None
        assert "loaded" == await cache.get_or_set("k", loader, ttl=60)
        assert 2 == loader.calls
        assert 1 == (await cache.get_stats())["loader"]["errors"]

    async def test_cancelled_caller_does_not_cancel_the_load_for_others(
        self, make_manager: ManagerFactory
    ) -> None:
        """If the first caller gives up, the others still get the loaded value."""
        cache = await make_manager()
        loader = Loader(hold=True)
        got: list[Any] = []

        async def impatient() -> None:
            with anyio.move_on_after(0):
                await cache.get_or_set("k", loader, ttl=60)

        async def patient() -> None:
            got.append(await cache.get_or_set("k", loader, ttl=60))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(patient)
                await loader.started.wait()
                tg.start_soon(impatient)
                await anyio.wait_all_tasks_blocked()
                loader.release.set()
        assert ["loaded"] == got
        assert 1 == loader.calls

    async def test_hit_does_not_call_the_loader(self, make_manager: ManagerFactory) -> None:
        """A cached value is returned without calling the loader; the result reaches L2."""
        cache = await make_manager()
        loader = Loader()
        assert "loaded" == await cache.get_or_set("k", loader, ttl=60)
        assert "loaded" == await cache.get_or_set("k", loader, ttl=60)
        assert 1 == loader.calls
        assert "loaded" == await cache.get("k", tier=CacheTier.L2)

    async def test_loader_results_publish_nothing(self, make_manager: ManagerFactory) -> None:
        """Storing a loader result after a miss sends no bus message (no broadcast storm)."""
        cache = await make_manager()
        for i in range(10):
            await cache.get_or_set(f"k{i}", Loader(), ttl=60)
        assert 0 == (await cache.get_stats())["bus"]["published"]


class TestWhatIsCached:
    async def test_none_is_cached_by_default(self, make_manager: ManagerFactory) -> None:
        """A None result is cached (negative caching): the loader is not called again."""
        cache = await make_manager()
        loader = Loader(None)
        assert None is await cache.get_or_set("k", loader, ttl=60)
        assert None is await cache.get_or_set("k", loader, ttl=60)
        assert 1 == loader.calls

    async def test_cache_none_false(self, make_manager: ManagerFactory) -> None:
        """With cache_none=False, a None result is returned but not cached."""
        cache = await make_manager()
        loader = Loader(None)
        await cache.get_or_set("k", loader, ttl=60, cache_none=False)
        await cache.get_or_set("k", loader, ttl=60, cache_none=False)
        assert 2 == loader.calls

    async def test_should_cache(self, make_manager: ManagerFactory) -> None:
        """should_cache(result) False keeps the result out of the cache."""
        cache = await make_manager()
        loader = Loader({"partial": True})
        for _ in range(2):
            await cache.get_or_set("k", loader, ttl=60, should_cache=lambda v: not v["partial"])
        assert 2 == loader.calls

    async def test_ttl_jitter_spreads_expiry(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """ttl_jitter gives entries written together different TTLs within the fraction."""
        cache = await make_manager()
        for i in range(30):
            await cache.get_or_set(f"j{i}", Loader(), ttl=100, ttl_jitter=0.2)
        ttls = {await raw_redis.pttl(f"{namespace}:j{i}") for i in range(30)}
        assert len(ttls) > 10
        assert all(79_000 <= t <= 120_000 for t in ttls)

    @pytest.mark.parametrize("jitter", [-0.1, 1.0, True])
    async def test_bad_jitter_is_rejected(
        self, make_manager: ManagerFactory, jitter: float
    ) -> None:
        """ttl_jitter outside [0, 1) raises before anything runs."""
        cache = await make_manager()
        loader = Loader()
        with pytest.raises(InvalidTTLError):
            await cache.get_or_set("k", loader, ttl=60, ttl_jitter=jitter)
        assert 0 == loader.calls


class TestStaleWhileRevalidate:
    async def swr_cache(self, make_manager: ManagerFactory, clock: FakeClock) -> CacheManager:
        """An L1-only manager on a fake clock, so freshness is driven by the test."""
        return await make_manager(redis_url=None, timer=clock)

    async def test_stale_value_served_while_one_refresh_runs(
        self, make_manager: ManagerFactory, clock: FakeClock
    ) -> None:
        """After ttl, callers get the stale value at once while a single refresh runs."""
        cache = await self.swr_cache(make_manager, clock)
        await cache.get_or_set("k", Loader("v1"), ttl=10, stale_ttl=60)
        clock.tick(11)
        refresh = Loader("v2", hold=True)
        with anyio.fail_after(5):
            for _ in range(5):
                assert "v1" == await cache.get_or_set("k", refresh, ttl=10, stale_ttl=60)
            await refresh.started.wait()
            refresh.release.set()
            await eventually(lambda: cache.l1.get_entry("k") == ("v2", True))
        assert 1 == refresh.calls
        assert "v2" == await cache.get_or_set("k", refresh, ttl=10, stale_ttl=60)
        assert 5 == (await cache.get_stats())["loader"]["stale_served"]

    async def test_fail_safe_serves_stale_when_the_refresh_fails(
        self, make_manager: ManagerFactory, clock: FakeClock
    ) -> None:
        """A failing refresh keeps the stale value served until stale_ttl ends, then raises."""
        cache = await self.swr_cache(make_manager, clock)
        await cache.get_or_set("k", Loader("v1"), ttl=10, stale_ttl=30)
        clock.tick(15)
        broken = Loader()
        broken.error = ConnectionError("db down")
        with anyio.fail_after(5):
            assert "v1" == await cache.get_or_set("k", broken, ttl=10, stale_ttl=30)
            await eventually(lambda: cache.stats()["loader"]["errors"] >= 1)
            assert "v1" == await cache.get_or_set("k", broken, ttl=10, stale_ttl=30)
        clock.tick(30)
        with pytest.raises(ConnectionError):
            await cache.get_or_set("k", broken, ttl=10, stale_ttl=30)

    async def test_loader_timeout_waits_then_serves_stale(
        self, make_manager: ManagerFactory, clock: FakeClock
    ) -> None:
        """With loader_timeout, a stale hit waits that long for the refresh, then goes stale."""
        cache = await self.swr_cache(make_manager, clock)
        await cache.get_or_set("k", Loader("v1"), ttl=10, stale_ttl=60)
        clock.tick(11)
        slow = Loader("v2", hold=True)
        with anyio.fail_after(5):
            assert "v1" == await cache.get_or_set(
                "k", slow, ttl=10, stale_ttl=60, loader_timeout=0.05
            )
        fast = Loader("v3")
        clock.tick(0)
        slow.release.set()
        with anyio.fail_after(5):
            await eventually(lambda: cache.l1.get_entry("k") == ("v2", True))
        assert 0 == fast.calls

    async def test_loader_timeout_returns_fresh_result_when_fast(
        self, make_manager: ManagerFactory, clock: FakeClock
    ) -> None:
        """A refresh that finishes within loader_timeout is returned to the waiting caller."""
        cache = await self.swr_cache(make_manager, clock)
        await cache.get_or_set("k", Loader("v1"), ttl=10, stale_ttl=60)
        clock.tick(11)
        with anyio.fail_after(5):
            assert "v2" == await cache.get_or_set(
                "k", Loader("v2"), ttl=10, stale_ttl=60, loader_timeout=5
            )

    async def test_stale_entry_round_trips_through_redis(
        self, make_manager: ManagerFactory
    ) -> None:
        """The stale window is stored in L2 too: another instance serves stale and refreshes."""
        writer = await make_manager()
        reader = await make_manager()
        await writer.get_or_set("k", Loader("v1"), ttl=0.05, stale_ttl=30)
        await eventually(
            lambda: writer.multi_tier.read("k", CacheTier.L2, allow_stale=True),
            expect=("v1", False),
        )
        assert None is await reader.get("k")  # plain get never returns stale values
        refresh = Loader("v2")
        assert "v1" == await reader.get_or_set("k", refresh, ttl=30, stale_ttl=30)
        await eventually(lambda: reader.get("k", tier=CacheTier.L2), expect="v2")


class TestTags:
    async def test_invalidate_tags_removes_tagged_entries_everywhere(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """invalidate_tags drops every entry with the tag from L1, L2 and other instances."""
        a = await make_manager()
        b = await make_manager()
        await a.set("user:1", 1, tags=["users", "u1"])
        await a.set("user:2", 2, tags=["users"])
        await a.set("order:1", 3, tags=["orders"])
        for key in ["user:1", "user:2", "order:1"]:
            with anyio.fail_after(5):
                while b.l1.peek(key) is None:
                    await b.get(key)
        assert 2 == await a.invalidate_tags("users")
        assert (None, None) == (a.l1.peek("user:1"), a.l1.peek("user:2"))
        await eventually(lambda: (b.l1.peek("user:1"), b.l1.peek("user:2")) == (None, None))
        assert 3 == b.l1.peek("order:1")
        assert 0 == await raw_redis.exists(f"{namespace}:user:1", f"{namespace}:user:2")
        assert 0 == await raw_redis.exists(f"{namespace}#tag:users")
        assert 1 == await raw_redis.exists(f"{namespace}#tag:orders")

    async def test_get_or_set_tags(self, make_manager: ManagerFactory) -> None:
        """Entries stored by get_or_set carry their tags."""
        cache = await make_manager()
        loader = Loader()
        await cache.get_or_set("p:1", loader, ttl=60, tags=["products"])
        await cache.invalidate_tags("products")
        await cache.get_or_set("p:1", loader, ttl=60, tags=["products"])
        assert 2 == loader.calls

    async def test_tag_index_lives_as_long_as_its_longest_member(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """The tag index expires with its longest-lived entry, so it cannot grow forever."""
        cache = await make_manager()
        await cache.set("a", 1, ttl=50, tags=["t"])
        await cache.set("b", 1, ttl=200, tags=["t"])
        await cache.set("c", 1, ttl=10, tags=["t"])
        assert 199_000 < await raw_redis.pttl(f"{namespace}#tag:t") <= 200_000
        await cache.set("d", 1, ttl=None, tags=["t"])
        assert -1 == await raw_redis.pttl(f"{namespace}#tag:t")

    async def test_prune_drops_dead_members(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """prune_tag removes index members whose entries are gone."""
        cache = await make_manager()
        for i in range(5):
            await cache.set(f"k{i}", i, ttl=60, tags=["t"])
        await raw_redis.delete(f"{namespace}:k1", f"{namespace}:k3")
        assert cache.l2 is not None
        assert 2 == await cache.l2.prune_tag("t")
        assert 3 == await raw_redis.scard(f"{namespace}#tag:t")


async def load_many(
    cache: CacheManager, key: str, loader: Callable[[], Awaitable[Any]], n: int
) -> list[Any]:
    """n concurrent get_or_set calls; their results."""
    results: list[Any] = []

    async def one() -> None:
        results.append(await cache.get_or_set(key, loader, ttl=60, lock=True))

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return results


class TestLockInProcess:
    async def test_lock_with_two_managers_loads_once(self, make_manager: ManagerFactory) -> None:
        """Two instances (one process) with lock=True share one loader call for a cold key."""
        # The lock's semantics, not Redis timeouts: a CPU-starved run must not open the
        # breaker (which runs loaders unlocked on purpose).
        a = await make_manager(operation_timeout=LOCK_TEST_TIMEOUT)
        b = await make_manager(operation_timeout=LOCK_TEST_TIMEOUT)
        calls = 0

        async def slow() -> str:
            nonlocal calls
            calls += 1
            await anyio.sleep(0.2)
            return "v"

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(load_many, a, "k", slow, 50)
                tg.start_soon(load_many, b, "k", slow, 50)
        assert 1 == calls


class TestTagPruning:
    async def test_large_tag_index_is_pruned_in_the_background(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """An index past the prune threshold drops members whose entries are gone."""
        cache = await make_manager()
        index = f"{namespace}#tag:big"
        # Dead members: entries that expired or were deleted behind the index's back.
        await raw_redis.sadd(index, *[f"gone:{i}" for i in range(TAG_PRUNE_MIN)])
        await cache.set("alive:1", 1, ttl=60, tags=["big"])  # pushes the index past the mark
        await eventually(lambda: raw_redis.scard(index), expect=1)
        assert {b"alive:1"} == await raw_redis.smembers(index)


class TestInvalidationDuringALoad:
    async def test_caller_after_an_own_delete_does_not_join_the_older_load(
        self, make_manager: ManagerFactory
    ) -> None:
        """A get_or_set that starts after delete() returned gets a fresh load, not the
        result of a load that started before the delete."""
        cache = await make_manager()
        db = {"v": "v1"}
        release = anyio.Event()
        calls = 0

        async def loader() -> str:
            nonlocal calls
            calls += 1
            value = db["v"]
            if calls == 1:
                await release.wait()
            return value

        results: list[str] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def early() -> None:
                    results.append(await cache.get_or_set("k", loader, ttl=60))

                tg.start_soon(early)
                await eventually(lambda: calls == 1)
                db["v"] = "v2"
                await cache.delete("k")
                assert "v2" == await cache.get_or_set("k", loader, ttl=60)
                release.set()
        assert ["v1"] == results  # the early caller gets what it asked for before the delete
        assert "v2" == await cache.get_or_set("k", loader, ttl=60)
        assert 1 == (await cache.get_stats())["loader"]["discarded"]
