"""CacheManager against a real server: tiers, L1 fill from L2, lifecycle, bad input, stats."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from coherent_cache import (
    USE_DEFAULT,
    CacheClosedError,
    CacheConfig,
    CacheManager,
    CacheTier,
    InvalidKeyError,
    InvalidTTLError,
    SerializationError,
    ValueTooLargeError,
    create_cache_manager,
)

from .conftest import FakeClock, ManagerFactory, settle


class Unencodable:
    """A type orjson cannot encode."""


@pytest.fixture(params=["l1_only", "l2_only", "multi_tier"])
async def tier_cache(
    request: pytest.FixtureRequest, make_manager: ManagerFactory
) -> tuple[CacheManager, CacheTier]:
    """One contract, every tier: a started manager and the tier to address."""
    if request.param == "l1_only":
        return await make_manager(redis_url=None), CacheTier.BOTH
    tier = CacheTier.L2 if request.param == "l2_only" else CacheTier.BOTH
    return await make_manager(), tier


class TestContractOnEveryTier:
    async def test_set_then_get(self, tier_cache: tuple[CacheManager, CacheTier]) -> None:
        """Read-your-writes: a set value is returned by the next get on the same instance."""
        cache, tier = tier_cache
        assert await cache.set("k", {"v": [1, 2]}, ttl=60, tier=tier)
        assert {"v": [1, 2]} == await cache.get("k", tier=tier)

    async def test_overwrite(self, tier_cache: tuple[CacheManager, CacheTier]) -> None:
        """A second set replaces the first value."""
        cache, tier = tier_cache
        await cache.set("k", 1, ttl=60, tier=tier)
        await cache.set("k", 2, ttl=60, tier=tier)
        assert 2 == await cache.get("k", tier=tier)

    async def test_delete(self, tier_cache: tuple[CacheManager, CacheTier]) -> None:
        """delete removes the key and reports whether it existed."""
        cache, tier = tier_cache
        await cache.set("k", 1, ttl=60, tier=tier)
        assert True is await cache.delete("k", tier=tier)
        assert None is await cache.get("k", tier=tier)
        assert False is await cache.delete("k", tier=tier)

    async def test_missing_key_returns_default(
        self, tier_cache: tuple[CacheManager, CacheTier]
    ) -> None:
        """A miss returns None, or the default given."""
        cache, tier = tier_cache
        assert None is await cache.get("absent", tier=tier)
        assert "d" == await cache.get("absent", tier=tier, default="d")

    async def test_none_is_a_storable_value(
        self, tier_cache: tuple[CacheManager, CacheTier]
    ) -> None:
        """A cached None is distinguishable from a miss through `default`."""
        cache, tier = tier_cache
        await cache.set("n", None, ttl=60, tier=tier)
        assert None is await cache.get("n", tier=tier, default="miss")

    async def test_clear_pattern(self, tier_cache: tuple[CacheManager, CacheTier]) -> None:
        """clear_pattern removes matching keys and keeps the others."""
        cache, tier = tier_cache
        for i in range(5):
            await cache.set(f"user:{i}", i, ttl=60, tier=tier)
        await cache.set("order:1", "o", ttl=60, tier=tier)
        assert 5 == await cache.clear_pattern("user:*", tier=tier)
        assert None is await cache.get("user:3", tier=tier)
        assert "o" == await cache.get("order:1", tier=tier)

    async def test_unserialisable_value_is_rejected_and_nothing_written(
        self, tier_cache: tuple[CacheManager, CacheTier]
    ) -> None:
        """SerializationError names the type, and no tier holds the key afterwards."""
        cache, tier = tier_cache
        await cache.set("k", "old", ttl=60, tier=tier)
        with pytest.raises(SerializationError, match="Unencodable") as info:
            await cache.set("k", {"nested": [Unencodable()]}, ttl=60, tier=tier)
        assert Unencodable is info.value.value_type
        assert "old" == await cache.get("k", tier=tier)

    async def test_invalid_key_and_ttl_raise(
        self, tier_cache: tuple[CacheManager, CacheTier]
    ) -> None:
        """Bad keys and TTLs raise typed errors and change nothing."""
        cache, tier = tier_cache
        with pytest.raises(InvalidKeyError):
            await cache.set("", 1, tier=tier)
        with pytest.raises(InvalidKeyError):
            await cache.get(42, tier=tier)  # type: ignore[call-overload]
        with pytest.raises(InvalidTTLError):
            await cache.set("k", 1, ttl=0, tier=tier)
        with pytest.raises(InvalidTTLError):
            await cache.set("k", 1, ttl=-5, tier=tier)
        assert None is await cache.get("k", tier=tier)


class TestMultiTier:
    async def test_set_writes_both_tiers(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """A BOTH write lands in L1 and in Redis under the namespace."""
        cache = await make_manager()
        await cache.set("k", "v", ttl=60)
        assert "v" == cache.l1.peek("k")
        assert 1 == await raw_redis.exists(f"{namespace}:k")

    async def test_tier_selection_for_writes(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """tier=L1 writes only memory; tier=L2 writes only Redis."""
        cache = await make_manager()
        await cache.set("only1", 1, ttl=60, tier=CacheTier.L1)
        await cache.set("only2", 2, ttl=60, tier=CacheTier.L2)
        assert 0 == await raw_redis.exists(f"{namespace}:only1")
        assert None is cache.l1.peek("only2")
        assert 1 == await cache.get("only1", tier=CacheTier.L1)
        assert None is await cache.get("only1", tier=CacheTier.L2)
        assert None is await cache.get("only2", tier=CacheTier.L1)
        assert 2 == await cache.get("only2", tier=CacheTier.L2)

    async def test_l2_only_write_drops_stale_l1_copy(self, make_manager: ManagerFactory) -> None:
        """After set(tier=L2) the instance's BOTH reads see the new value, not an old L1 copy."""
        cache = await make_manager()
        await cache.set("k", "old", ttl=60)
        await cache.set("k", "new", ttl=60, tier=CacheTier.L2)
        assert "new" == await cache.get("k")

    async def test_l1_filled_from_l2_with_remaining_ttl(
        self, make_manager: ManagerFactory, clock: FakeClock
    ) -> None:
        """An L1 miss that hits L2 fills L1 for the entry's remaining L2 TTL, never longer."""
        writer = await make_manager()
        reader = await make_manager(timer=clock)
        await settle(writer.set("k", "v", ttl=2), reader)
        assert None is reader.l1.peek("k")
        assert "v" == await reader.get("k")
        assert "v" == reader.l1.peek("k")
        clock.tick(1.5)
        assert "v" == reader.l1.peek("k")
        clock.tick(0.6)
        assert None is reader.l1.peek("k")

    async def test_l1_fill_is_capped_by_memory_cache_ttl(
        self, make_manager: ManagerFactory, clock: FakeClock
    ) -> None:
        """A long-lived L2 entry stays in L1 at most memory_cache_ttl seconds."""
        writer = await make_manager()
        reader = await make_manager(timer=clock, memory_cache_ttl=10)
        await settle(writer.set("k", "v", ttl=None), reader)
        assert "v" == await reader.get("k")
        clock.tick(9.9)
        assert "v" == reader.l1.peek("k")
        clock.tick(0.2)
        assert None is reader.l1.peek("k")

    async def test_l2_only_read_does_not_fill_l1(self, make_manager: ManagerFactory) -> None:
        """get(tier=L2) reads Redis and leaves L1 alone."""
        cache = await make_manager()
        await cache.set("k", "v", ttl=60, tier=CacheTier.L2)
        assert "v" == await cache.get("k", tier=CacheTier.L2)
        assert None is cache.l1.peek("k")

    async def test_l1_holds_decoded_copy_not_the_callers_object(
        self, make_manager: ManagerFactory
    ) -> None:
        """Mutating the object passed to set does not change the cached value on any tier."""
        cache = await make_manager()
        value = {"items": [1]}
        await cache.set("k", value, ttl=60)
        value["items"].append(2)
        assert {"items": [1]} == await cache.get("k")
        assert {"items": [1]} == await cache.get("k", tier=CacheTier.L2)

    async def test_tuple_reads_back_as_list_on_every_tier(
        self, make_manager: ManagerFactory
    ) -> None:
        """Every tier returns the same JSON form of a value (a tuple comes back as a list)."""
        cache = await make_manager()
        await cache.set("t", (1, 2), ttl=60)
        assert [1, 2] == await cache.get("t", tier=CacheTier.L1)
        assert [1, 2] == await cache.get("t", tier=CacheTier.L2)

    async def test_default_ttl_applies(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """A set without ttl uses default_ttl; ttl=None stores without expiry."""
        cache = await make_manager(default_ttl=120)
        await cache.set("d", 1)
        await cache.set("e", 1, ttl=USE_DEFAULT)
        await cache.set("n", 1, ttl=None)
        assert 119_000 < await raw_redis.pttl(f"{namespace}:d") <= 120_000
        assert 119_000 < await raw_redis.pttl(f"{namespace}:e") <= 120_000
        assert -1 == await raw_redis.pttl(f"{namespace}:n")

    async def test_too_large_value_is_rejected_everywhere(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """A value above max_value_size raises ValueTooLargeError and writes no tier."""
        cache = await make_manager(max_value_size=1024, enable_compression=False)
        with pytest.raises(ValueTooLargeError) as info:
            await cache.set("big", "x" * 5000, ttl=60)
        assert 1024 == info.value.limit
        assert None is cache.l1.peek("big")
        assert 0 == await raw_redis.exists(f"{namespace}:big")

    async def test_unserialisable_value_writes_neither_tier(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """A rejected value leaves both L1 and Redis without the key."""
        cache = await make_manager()
        with pytest.raises(SerializationError):
            await cache.set("bad", {"x": object()}, ttl=60)
        assert None is cache.l1.peek("bad")
        assert 0 == await raw_redis.exists(f"{namespace}:bad")

    async def test_corrupt_l2_entry_is_a_miss_and_counted(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """Foreign bytes under our key read as a miss through the manager, never an error."""
        cache = await make_manager()
        await raw_redis.set(f"{namespace}:k", b"\x80\x04pickle-ish")
        assert "miss" == await cache.get("k", default="miss")
        stats = await cache.get_stats()
        assert 1 == stats["l2_cache"]["rejected_payloads"]
        assert 1 == stats["total_misses"]

    async def test_clear_pattern_reaches_l1_and_l2(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """A pattern clear drops matching L1 entries at once and the L2 keys."""
        cache = await make_manager()
        await cache.set("p:1", 1, ttl=60)
        await cache.set("q:1", 1, ttl=60)
        assert 1 == await cache.clear_pattern("p:*")
        assert None is cache.l1.peek("p:1")
        assert 0 == await raw_redis.exists(f"{namespace}:p:1")
        assert 1 == cache.l1.peek("q:1")

    async def test_clear(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """clear empties both tiers of this namespace."""
        cache = await make_manager()
        await cache.set("a", 1, ttl=60)
        await cache.set("b", 2, ttl=60)
        assert 2 == await cache.clear()
        assert 0 == len(cache.l1)
        assert 0 == await raw_redis.exists(f"{namespace}:a", f"{namespace}:b")


class TestStats:
    async def test_seed_shape_and_counts(self, make_manager: ManagerFactory) -> None:
        """get_stats returns the seed's keys with counts of this instance's operations."""
        writer = await make_manager()
        cache = await make_manager()
        await settle(writer.set("k", 1, ttl=60), cache)
        await cache.get("k")  # L1 miss, L2 hit, fill
        await cache.get("k")  # L1 hit
        await cache.get("none")  # miss everywhere
        await cache.set("x", 1, ttl=60)
        stats = await cache.get_stats()
        l1, l2 = stats["l1_cache"], stats["l2_cache"]
        assert {"hits", "misses", "hit_rate", "size"} <= set(l1)
        assert {"hits", "misses", "hit_rate", "connected", "errors"} <= set(l2)
        assert (1, 2) == (l1["hits"], l1["misses"])
        assert (1, 1, True, 0) == (l2["hits"], l2["misses"], l2["connected"], l2["errors"])
        assert (2, 1, 1) == (stats["total_hits"], stats["total_misses"], stats["total_sets"])
        assert 2 == l1["size"]

    async def test_l1_only_reports_not_connected(self, make_manager: ManagerFactory) -> None:
        """With redis_url=None the L2 block says connected: false and L2 is disabled."""
        cache = await make_manager(redis_url=None)
        stats = await cache.get_stats()
        assert (False, False) == (stats["l2_cache"]["connected"], stats["l2_enabled"])

    async def test_enable_multi_tier_false_is_l1_only(self, make_manager: ManagerFactory) -> None:
        """enable_multi_tier=False ignores redis_url and never touches Redis."""
        cache = await make_manager(enable_multi_tier=False)
        assert cache.l2 is None
        await cache.set("k", 1)
        assert 1 == await cache.get("k")


class TestLifecycle:
    async def test_calls_before_start_raise(self, redis_url: str, namespace: str) -> None:
        """Using a manager that was never started raises CacheClosedError saying what to do."""
        cache = create_cache_manager(CacheConfig(redis_url=redis_url, namespace=namespace))
        with pytest.raises(CacheClosedError, match="start"):
            await cache.get("k")
        with pytest.raises(CacheClosedError):
            await cache.set("k", 1)

    async def test_calls_after_stop_raise_and_stop_is_idempotent(
        self, redis_url: str, namespace: str
    ) -> None:
        """After stop(), operations raise; a second stop() is a no-op; restart is refused."""
        cache = create_cache_manager(CacheConfig(redis_url=redis_url, namespace=namespace))
        await cache.start()
        await cache.stop()
        await cache.stop()
        with pytest.raises(CacheClosedError, match="stopped"):
            await cache.delete("k")
        with pytest.raises(CacheClosedError):
            await cache.start()

    async def test_async_with(self, redis_url: str, namespace: str) -> None:
        """`async with create_cache_manager(cfg) as cache` starts and stops the manager."""
        async with create_cache_manager(
            CacheConfig(redis_url=redis_url, namespace=namespace)
        ) as cache:
            assert cache.running
            await cache.set("k", 1)
            assert 1 == await cache.get("k")
            await cache.delete("k")
        assert not cache.running

    async def test_stop_leaves_no_connection_behind(
        self, redis_url: str, namespace: str, raw_redis: Redis
    ) -> None:
        """After stop(), the server lists no client of this manager."""
        name = f"coherent_cache:{namespace}"
        cache = create_cache_manager(CacheConfig(redis_url=redis_url, namespace=namespace))
        await cache.start()
        await cache.set("k", 1)
        assert any(c.get("name") == name for c in await raw_redis.client_list())
        await cache.stop()
        assert not any(c.get("name") == name for c in await raw_redis.client_list())

    async def test_start_twice_is_harmless(self, make_manager: ManagerFactory) -> None:
        """start() on a running manager returns without changing anything."""
        cache = await make_manager()
        await cache.set("k", 1)
        await cache.start()
        assert 1 == await cache.get("k")

    def test_repr_hides_password(self) -> None:
        """The manager's repr shows the URL without its password."""
        cache = CacheManager(CacheConfig(redis_url="redis://user:hunter2@127.0.0.1:1/0"))
        assert "hunter2" not in repr(cache)
        assert "***" in repr(cache)
