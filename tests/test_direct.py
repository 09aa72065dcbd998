"""Issue 20's send and read paths against a real server: a write and its bus message on
the instance's own connection (the pool when it is busy), batched reads that keep each
caller's deadline without a timer per caller."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from coherent_cache import BusMessage, CacheConfig, CacheManager, RedisCache

from .conftest import ManagerFactory, eventually
from .support.proxy import HoldingProxy


async def subscribed(raw_redis: Redis, channel: str) -> PubSub:
    """A raw subscriber of ``channel``, its subscription confirmed by the server."""
    pubsub = raw_redis.pubsub()
    await pubsub.subscribe(channel)
    with anyio.fail_after(5):
        while await pubsub.get_message(timeout=1) is None:
            pass
    return pubsub


class TestWritesAndTheirMessages:
    async def test_every_write_sends_its_message_alone_or_concurrently(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """Sets and deletes made one at a time (own connection) and 50 at once (the pool
        when it is busy) each store or remove the key and publish one message naming it."""
        cache = await make_manager(operation_timeout=5.0)  # no timeout on a loaded machine
        pubsub = await subscribed(raw_redis, cache.config.channel)
        try:
            assert await cache.set("alone", 1, ttl=60)
            assert await cache.delete("alone")
            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(cache.set, f"c{i}", i, 60)
            results: list[bool] = []

            async def delete(i: int) -> None:
                results.append(await cache.delete(f"c{i}"))

            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(delete, i)
            assert [True] * 50 == results
            assert 0 == await raw_redis.exists(*[f"{namespace}:c{i}" for i in range(50)])
            keys: list[str] = []
            with anyio.fail_after(10):
                while len(keys) < 102:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None:
                        keys += BusMessage.decode(message["data"]).keys
            expected = ["alone", "alone"] + [f"c{i}" for i in range(50)] * 2
            assert sorted(expected) == sorted(keys)
            assert cache.l2 is not None
            assert (102, 0) == (cache.l2.published, cache.l2.stats()["errors"])
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def test_write_alone_survives_a_connection_the_server_closed(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """A write made after the server closed every client connection (a restart, an
        idle timeout) retries once on a fresh connection: written, no error counted."""
        cache = await make_manager(operation_timeout=5.0)
        assert await cache.set("k", "v1", ttl=60)
        await raw_redis.client_kill_filter(_type="normal", skipme=True)
        assert await cache.set("k", "v2", ttl=60)
        await raw_redis.client_kill_filter(_type="normal", skipme=True)
        assert await cache.delete("k")
        assert 0 == await raw_redis.exists(f"{namespace}:k")
        assert cache.l2 is not None
        assert (0, 0) == (cache.l2.stats()["errors"], cache.l2.stats()["dropped_writes"])

    async def test_a_write_that_times_out_leaves_the_connection_usable(
        self, proxy: HoldingProxy, namespace: str, raw_redis: Redis
    ) -> None:
        """A write whose reply does not come within operation_timeout is dropped (counted)
        and the next write, once replies flow again, succeeds: no reply of the timed-out
        write is read as the next one's."""
        config = CacheConfig(redis_url=proxy.url, namespace=namespace, operation_timeout=0.3)
        async with CacheManager(config) as cache:
            assert await cache.set("k", "v1", ttl=60)
            proxy.hold(subscribers=False)
            assert not await cache.set("k", "v2", ttl=60)
            assert cache.l2 is not None
            assert 1 == cache.l2.stats()["dropped_writes"]
            proxy.release()
            # the breaker lets a probe through after its cooldown: then the delete lands
            await eventually(lambda: cache.delete("k"), within=10)
            assert 0 == await raw_redis.exists(f"{namespace}:k")


class TestBatchedReadDeadlines:
    @pytest.fixture
    async def held(self, proxy: HoldingProxy, namespace: str) -> AsyncIterator[RedisCache]:
        """A RedisCache through the proxy, ``operation_timeout=0.3``, 100 keys stored."""
        config = CacheConfig(redis_url=proxy.url, namespace=namespace, operation_timeout=0.3)
        async with RedisCache(config) as l2:
            for i in range(100):
                assert await l2.set(f"k{i}", i, 60)
            yield l2

    async def test_every_caller_ends_by_its_deadline_when_no_reply_comes(
        self, held: RedisCache, proxy: HoldingProxy
    ) -> None:
        """100 concurrent reads (one alone, the rest in batches) while the server's replies
        are held: each returns its default within about operation_timeout, counted as a
        timeout; once replies flow, the same reads hit."""
        proxy.hold(subscribers=False)
        results: dict[int, object] = {}

        async def read(i: int) -> None:
            results[i] = await held.get(f"k{i}", "default")

        started = time.monotonic()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(read, i)
        elapsed = time.monotonic() - started
        assert dict.fromkeys(range(100), "default") == results
        assert elapsed < 0.3 + 2.0  # bounded by the deadline (a loose margin: a shared machine)
        assert 100 == held.stats()["timeouts"]
        proxy.release()
        await eventually(lambda: held.get("k0"), expect=0, within=10)  # the breaker closed
        found: dict[int, object] = {}

        async def read_again(i: int) -> None:
            found[i] = await held.get(f"k{i}")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(read_again, i)
        assert {i: i for i in range(100)} == found
