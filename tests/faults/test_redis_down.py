"""Redis down never breaks the caller: real server killed, paused and restarted."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from coherent_cache import CacheConfig, CacheManager, CacheTier, create_cache_manager
from coherent_cache.testing import RedisServer, free_port

pytestmark = pytest.mark.faults


def fast_config(url: str, namespace: str) -> CacheConfig:
    """Short timeouts and cooldown, so faults are detected and recovered from quickly."""
    return CacheConfig(
        redis_url=url,
        namespace=namespace,
        operation_timeout=0.2,
        connect_timeout=0.2,
        circuit_breaker_cooldown=0.5,
    )


async def wait_connected(cache: CacheManager, *, within: float) -> None:
    """Issue reads until the L2 reports connected again, failing after ``within`` seconds."""
    with anyio.fail_after(within):
        while not (await cache.get_stats())["l2_cache"]["connected"]:
            await cache.get("probe")
            await anyio.sleep(0.05)


@pytest.fixture
async def cache(private_server: RedisServer) -> AsyncIterator[CacheManager]:
    """A started manager on a server this test may kill."""
    async with create_cache_manager(fast_config(private_server.url, "faults")) as manager:
        yield manager


class TestServerStopped:
    async def test_get_and_set_keep_working_from_l1(
        self, cache: CacheManager, private_server: RedisServer
    ) -> None:
        """With Redis killed, get/set serve from L1, raise nothing, report connected: false."""
        await cache.set("before", "v1", ttl=60)
        private_server.kill()

        with anyio.fail_after(5):  # every call is bounded by the timeouts, never a hang
            assert False is await cache.set("during", "v2", ttl=60)
            assert "v2" == await cache.get("during")
            assert "v1" == await cache.get("before")
            assert None is await cache.get("never-set")
            assert True is await cache.delete("during")
            assert 0 == await cache.clear_pattern("x:*")
            for i in range(50):
                await cache.get(f"miss:{i}")

        stats = await cache.get_stats()
        assert False is stats["l2_cache"]["connected"]
        assert stats["l2_cache"]["errors"] >= 1
        assert "open" == stats["l2_cache"]["breaker"]
        assert stats["l2_cache"]["short_circuited"] > 0  # the breaker stopped the hammering
        # The set, the delete and the clear_pattern never reached Redis: dropped, counted.
        assert stats["l2_cache"]["dropped_writes"] >= 3

    async def test_reconnects_by_itself_after_restart(
        self, cache: CacheManager, private_server: RedisServer
    ) -> None:
        """A restarted server (data gone) is used again without restarting the manager."""
        await cache.set("k", "v", ttl=60)
        private_server.kill()
        await cache.get("nope")
        private_server.start()
        await wait_connected(cache, within=5)
        assert await cache.set("after", "x", ttl=60)
        assert "x" == await cache.get("after", tier=CacheTier.L2)


class TestStartWithoutRedis:
    async def test_start_succeeds_and_reconnects_later(self) -> None:
        """start() against a dead port returns, runs on L1, and picks Redis up once it appears."""
        port = free_port()
        config = fast_config(f"redis://127.0.0.1:{port}/0", "late")
        with anyio.fail_after(3):
            cache = create_cache_manager(config)
            await cache.start()
        try:
            assert False is (await cache.get_stats())["l2_cache"]["connected"]
            await cache.set("k", "v")
            assert "v" == await cache.get("k")
            with RedisServer(port=port):
                await wait_connected(cache, within=5)
                assert await cache.set("k2", "v2")
                assert "v2" == await cache.get("k2", tier=CacheTier.L2)
        finally:
            await cache.stop()


class TestServerFrozen:
    async def test_operations_are_bounded_and_breaker_opens(
        self, cache: CacheManager, private_server: RedisServer
    ) -> None:
        """A server that stops answering costs at most operation_timeout per call, then nothing."""
        await cache.set("k", "v", ttl=60)
        private_server.pause()
        try:
            with anyio.fail_after(3):
                assert "v" == await cache.get("k")  # L1 hit: Redis not involved
                for i in range(20):
                    assert None is await cache.get(f"cold:{i}")
            stats = (await cache.get_stats())["l2_cache"]
            assert stats["timeouts"] >= 1
            assert stats["short_circuited"] >= 1
        finally:
            private_server.resume()
        await wait_connected(cache, within=5)
