"""The bus between managers in one process: origins, what publishes, what does not."""

from __future__ import annotations

import anyio
from redis.asyncio import Redis

from coherent_cache import CacheManager, CacheTier

from .conftest import ManagerFactory


async def wait_gone(cache: CacheManager, key: str) -> None:
    """Wait (bounded) until ``cache``'s L1 no longer serves ``key``."""
    with anyio.fail_after(5):
        while cache.l1.peek(key) is not None:  # noqa: ASYNC110 - L1 state has no event
            await anyio.sleep(0.001)


async def cached_in_l1(writer: CacheManager, reader: CacheManager, key: str) -> None:
    """Write through ``writer`` and read through ``reader`` until its L1 holds the key."""
    await writer.set(key, "v", ttl=60)
    with anyio.fail_after(5):
        while reader.l1.peek(key) is None:
            assert "v" == await reader.get(key)


class TestOrigins:
    async def test_two_managers_in_one_process_apply_each_others_messages(
        self, make_manager: ManagerFactory
    ) -> None:
        """Origins are per manager, not per process: a delete on A evicts B's copy."""
        a = await make_manager()
        b = await make_manager()
        assert a.origin != b.origin
        await cached_in_l1(a, b, "k")
        await a.delete("k")
        await wait_gone(b, "k")

    async def test_origin_prefix(self, make_manager: ManagerFactory) -> None:
        """origin_prefix replaces the host name at the start of the origin id."""
        cache = await make_manager(origin_prefix="billing")
        assert cache.origin.startswith("billing-")


class TestWhatPublishes:
    async def test_tier_l2_write_invalidates_other_instances(
        self, make_manager: ManagerFactory
    ) -> None:
        """A set with tier=L2 still tells other instances to drop their copy."""
        a = await make_manager()
        b = await make_manager()
        await cached_in_l1(a, b, "k")
        await a.set("k", "new", ttl=60, tier=CacheTier.L2)
        await wait_gone(b, "k")
        assert "new" == await b.get("k")

    async def test_tier_l1_operations_publish_nothing(self, make_manager: ManagerFactory) -> None:
        """L1-only writes and deletes stay local and publish no message."""
        a = await make_manager()
        await a.set("k", 1, tier=CacheTier.L1)
        await a.delete("k", tier=CacheTier.L1)
        await a.clear_pattern("x:*", tier=CacheTier.L1)
        assert 0 == (await a.get_stats())["bus"]["published"]

    async def test_every_write_publishes_once(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """set, delete, clear_pattern and clear each publish exactly one message."""
        a = await make_manager()
        await a.set("k", 1)
        await a.delete("k")
        await a.clear_pattern("user:*")
        await a.clear()
        assert 4 == (await a.get_stats())["bus"]["published"]

    async def test_disabled_bus_publishes_and_subscribes_nothing(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """enable_invalidation_bus=False: no subscriber, no PUBLISH, L1 fully trusted."""
        a = await make_manager(enable_invalidation_bus=False)
        await a.set("k", 1)
        channel = f"{namespace}:invalidate"
        assert {channel.encode(): 0} == dict(await raw_redis.pubsub_numsub(channel))
        stats = await a.get_stats()
        assert (False, 0) == (stats["bus"]["enabled"], stats["bus"]["published"])
        assert {"tag_pruner", "monitor", "fleet_reporter"} == set(stats["tasks"])

    async def test_custom_channel(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """invalidation_channel replaces the default channel name on both sides."""
        channel = f"{namespace}-custom-bus"
        a = await make_manager(invalidation_channel=channel)
        b = await make_manager(invalidation_channel=channel)
        assert {channel.encode(): 2} == dict(await raw_redis.pubsub_numsub(channel))
        await cached_in_l1(a, b, "k")
        await a.delete("k")
        await wait_gone(b, "k")
