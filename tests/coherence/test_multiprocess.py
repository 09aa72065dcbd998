"""Coherence between instances in separate OS processes, on one real server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import anyio
import pytest
from redis.asyncio import Redis

from ..support.multiproc import MISSING, Worker
from ..support.proxy import HoldingProxy

pytestmark = pytest.mark.anyio

FAST_BUS = {"bus_health_check_interval": 0.2, "operation_timeout": 0.3, "connect_timeout": 0.5}


@pytest.fixture
async def a(redis_url: str, namespace: str) -> AsyncIterator[Worker]:
    """Instance A, in its own process."""
    async with Worker(redis_url=redis_url, namespace=namespace, **FAST_BUS) as worker:
        yield worker


@pytest.fixture
async def b(redis_url: str, namespace: str) -> AsyncIterator[Worker]:
    """Instance B, in its own process."""
    async with Worker(
        redis_url=redis_url, namespace=namespace, max_bus_message_size=1024, **FAST_BUS
    ) as worker:
        yield worker


async def hold_in_l1(writer: Worker, reader: Worker, key: str, value: object) -> None:
    """Write through ``writer`` and make ``reader`` cache the value in its L1.

    The reader's first fill may be dropped on purpose: the writer's invalidation can
    arrive while that fill is in flight (the fill-race guard), so read until it sticks.
    """
    await writer.call("set", key=key, value=value)
    with anyio.fail_after(5):
        while True:
            assert value == await reader.call("get", key=key)
            if value == await reader.call("peek", key=key):
                return


class TestInvalidationReachesOtherProcess:
    async def test_delete(self, a: Worker, b: Worker) -> None:
        """A delete on A stops B's L1 from serving the old value."""
        await hold_in_l1(a, b, "user:1", {"v": 1})
        await a.call("delete", key="user:1")
        assert None is not await b.call("wait_gone", key="user:1", within=5)
        assert MISSING == await b.call("get", key="user:1")

    async def test_set(self, a: Worker, b: Worker) -> None:
        """A set of a new value on A makes B drop the old one and read the new one."""
        await hold_in_l1(a, b, "user:1", {"v": 1})
        await a.call("set", key="user:1", value={"v": 2})
        assert None is not await b.call("wait_gone", key="user:1", within=5)
        assert {"v": 2} == await b.call("get", key="user:1")

    async def test_clear_pattern(self, a: Worker, b: Worker) -> None:
        """A pattern clear on A drops matching keys from B's L1 and keeps the others."""
        for i in range(3):
            await hold_in_l1(a, b, f"user:{i}", i)
        await hold_in_l1(a, b, "order:1", "o")
        await a.call("clear_pattern", pattern="user:*")
        for i in range(3):
            assert None is not await b.call("wait_gone", key=f"user:{i}", within=5)
        assert "o" == await b.call("peek", key="order:1")

    async def test_clear(self, a: Worker, b: Worker) -> None:
        """clear() on A empties B's L1."""
        await hold_in_l1(a, b, "x", 1)
        await a.call("clear")
        assert None is not await b.call("wait_gone", key="x", within=5)

    async def test_own_messages_are_skipped(self, a: Worker, b: Worker) -> None:
        """An instance does not apply its own invalidations a second time."""
        await hold_in_l1(a, b, "k", 1)
        await a.call("delete", key="k")
        await b.call("wait_gone", key="k", within=5)
        a_bus = (await a.call("stats"))["bus"]
        b_bus = (await b.call("stats"))["bus"]
        assert a_bus["own_skipped"] >= 1
        assert 0 == a_bus["applied"]
        assert b_bus["applied"] >= 1
        assert a_bus["published"] >= 2  # the set and the delete

    async def test_fill_publishes_nothing(self, a: Worker, b: Worker) -> None:
        """Reads that fill L1 from L2 publish nothing: a cold start is no broadcast storm."""
        await a.call("set", key="k", value=1)
        before = (await b.call("stats"))["bus"]["published"]
        for _ in range(5):
            await b.call("delete", key="k", tier="l1")
            await b.call("get", key="k")
        assert before == (await b.call("stats"))["bus"]["published"]


class TestForeignPublishers:
    async def test_raw_publish_of_hand_written_json(
        self, a: Worker, b: Worker, raw_redis: Redis, namespace: str
    ) -> None:
        """A plain PUBLISH of a minimal hand-written message invalidates B."""
        await hold_in_l1(a, b, "k", 1)
        receivers = await raw_redis.publish(
            f"{namespace}:invalidate", b'{"v": 1, "op": "delete", "keys": ["k"]}'
        )
        assert receivers >= 2
        assert None is not await b.call("wait_gone", key="k", within=5)

    async def test_survives_malformed_messages(
        self, a: Worker, b: Worker, raw_redis: Redis, namespace: str
    ) -> None:
        """B drops 1,000 malformed messages, counts them, and applies the next valid one."""
        await hold_in_l1(a, b, "k", 1)
        channel = f"{namespace}:invalidate"
        bad = [
            b"not json",
            b"[1, 2]",
            b'{"op": "delete", "keys": ["k"]}',
            b'{"v": 2, "op": "delete", "keys": ["k"]}',
            b'{"v": true, "op": "delete", "keys": ["k"]}',
            b'{"v": 1, "op": "explode"}',
            b'{"v": 1, "op": "delete", "keys": "k"}',
            b'{"v": 1, "op": "delete", "keys": [1]}',
            b'{"v": 1, "op": "clear_pattern", "pattern": "["}',
            b'{"v": 1, "op": "delete", "keys": ["k"], "pad": "' + b"x" * 2000 + b'"}',
        ]
        async with raw_redis.pipeline(transaction=False) as pipe:
            for i in range(1000):
                _ = pipe.publish(channel, bad[i % len(bad)])
            await pipe.execute()
        await raw_redis.publish(channel, b'{"v": 1, "op": "delete", "keys": ["k"]}')
        assert None is not await b.call("wait_gone", key="k", within=10)
        bus = (await b.call("stats"))["bus"]
        assert 1000 == bus["dropped"]
        assert True is bus["connected"]
        assert 0 == bus["losses"]


class TestBusLoss:
    async def test_client_kill_pubsub_flushes_and_resubscribes(
        self, a: Worker, b: Worker, raw_redis: Redis
    ) -> None:
        """Killing B's subscriber server-side makes B flush its L1 and subscribe again."""
        await hold_in_l1(a, b, "k", 1)
        assert await raw_redis.client_kill_filter(_type="pubsub") >= 2
        await b.call("wait_bus", connected=True, recovered=1, within=10)
        bus = (await b.call("stats"))["bus"]
        assert bus["losses"] >= 1
        assert True is bus["connected"]
        assert MISSING == await b.call("peek", key="k")  # flushed on resubscribe
        # Coherent again: a delete on A reaches B.
        await hold_in_l1(a, b, "k2", 2)
        await a.call("delete", key="k2")
        assert None is not await b.call("wait_gone", key="k2", within=5)

    async def test_delete_missed_during_partition_is_not_served_after_the_bound(
        self, a: Worker, redis_url: str, namespace: str
    ) -> None:
        """A delete published while B was cut off is never served by B after max_stale."""
        parts = urlsplit(redis_url)
        assert parts.hostname is not None and parts.port is not None
        max_stale = 1.0
        async with (
            HoldingProxy(parts.hostname, parts.port) as proxy,
            Worker(
                redis_url=proxy.url,
                namespace=namespace,
                max_stale_on_bus_loss=max_stale,
                circuit_breaker_cooldown=0.2,
                **FAST_BUS,
            ) as b,
        ):
            await hold_in_l1(a, b, "k", "old")
            proxy.block()  # B loses Redis: bus and L2
            await b.call("wait_bus", connected=False, within=5)
            lost_at = time.time()
            await a.call("delete", key="k")  # published while B cannot hear it
            # The bound is a time bound: wait it out, then B must not serve "old" again.
            await anyio.sleep(max_stale + 0.2)
            for _ in range(20):
                assert "old" != await b.call("get", key="k")
            stats = (await b.call("stats"))["bus"]
            assert stats["last_loss_at"] is not None
            assert stats["last_loss_at"] <= lost_at
            proxy.unblock()
            await b.call("wait_bus", connected=True, within=10)
            assert MISSING == await b.call("get", key="k")

    async def test_stalled_subscriber_is_detected_by_ping_deadline(
        self, redis_url: str, namespace: str
    ) -> None:
        """A subscriber connection that stops answering (no error, no EOF) counts as lost."""
        parts = urlsplit(redis_url)
        assert parts.hostname is not None and parts.port is not None
        async with (
            HoldingProxy(parts.hostname, parts.port) as proxy,
            Worker(redis_url=proxy.url, namespace=namespace, **FAST_BUS) as b,
        ):
            await b.call("wait_bus", connected=True, within=5)
            proxy.hold()  # the server's replies, PONG included, stop arriving
            await b.call("wait_bus", connected=False, within=5)
            proxy.release()
            await b.call("wait_bus", connected=True, within=10)
            bus = (await b.call("stats"))["bus"]
            assert (1, 1) <= (bus["losses"], bus["recoveries"])

    async def test_bound_counts_from_the_last_reply_not_from_detection(
        self, a: Worker, redis_url: str, namespace: str
    ) -> None:
        """On a silent stall, L1 stops serving max_stale after the bus last answered,
        even though noticing the stall takes longer than that."""
        parts = urlsplit(redis_url)
        assert parts.hostname is not None and parts.port is not None
        max_stale = 0.5
        async with (
            HoldingProxy(parts.hostname, parts.port) as proxy,
            Worker(
                redis_url=proxy.url,
                namespace=namespace,
                max_stale_on_bus_loss=max_stale,
                **FAST_BUS,
            ) as b,
        ):
            await hold_in_l1(a, b, "k", "old")
            proxy.hold()  # B's connections stay open but nothing comes back
            held_at = time.monotonic()
            await a.call("set", key="k", value="new")  # B cannot hear this
            # Detection alone takes up to interval + interval + operation_timeout (0.7 s);
            # the bound is a time bound: wait it out from the moment the replies stopped.
            await anyio.sleep(max(0.0, held_at + max_stale + 0.15 - time.monotonic()))
            assert MISSING == await b.call("peek", key="k")
            proxy.release()
            await b.call("wait_bus", connected=True, within=10)
