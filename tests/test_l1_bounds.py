"""An L1 never keeps what L2 no longer holds: after a pattern clear, and past an expiry.

Two instances of one namespace in this process, against a real server. The bus cannot
hide either defect: a pattern that L1 and Redis match differently is wrong on every
instance, and an expiry (and the loader's store that follows it) publishes nothing.
"""

from __future__ import annotations

import anyio
import pytest
from redis.asyncio import Redis

from coherent_cache import CacheManager, InvalidKeyError

from .conftest import FakeClock, ManagerFactory, eventually
from .support.proxy import HoldingProxy

REPLY_DELAY = 0.5
"""Latency the proxy adds to every reply P reads; the L2 entries live for `TTL`."""
TTL = 2.0


class TestPatternClearMatchesRedis:
    async def test_range_from_ascii_to_non_ascii_never_leaves_l1_behind(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """``k:[e-ü]``: Redis on x86 compares range bounds as signed char and matches
        ``k:a``; on ARM it does not. Such a pattern is refused before anything is deleted,
        so neither the clearing instance nor another one keeps a key Redis dropped."""
        a = await make_manager()
        b = await make_manager()
        await a.set("k:a", "old", ttl=60)
        assert "old" == await b.get("k:a")  # B holds an L1 copy
        refused = False
        try:
            await a.clear_pattern("k:[e-ü]")
        except InvalidKeyError:
            refused = True
        in_redis = await raw_redis.exists(f"{namespace}:k:a") == 1
        # What the clearing instance serves right after its call agrees with Redis.
        assert in_redis == (a.l1.peek("k:a") is not None), "A's L1 disagrees with Redis"
        if not in_redis:  # B applies the clear when its bus message arrives
            await eventually(lambda: b.l1.peek("k:a"), expect=None, within=2.0)
        assert refused, "a pattern Redis matches differently by platform must be refused"
        assert in_redis
        assert "old" == await a.get("k:a") == await b.get("k:a")


@pytest.fixture
async def pair(
    proxy: HoldingProxy, make_manager: ManagerFactory
) -> tuple[CacheManager, CacheManager]:
    """(P behind the proxy, Q connected directly), sharing one namespace; P's timeout is
    far above the proxy's delay (a slow reply, not an outage)."""
    return await make_manager(redis_url=proxy.url, operation_timeout=10.0), await make_manager()


async def _after_l2_expiry_q_stores_v2(
    pair: tuple[CacheManager, CacheManager], raw_redis: Redis, namespace: str, keys: list[str]
) -> None:
    """Wait until Redis expired ``keys``, then have Q load and store ``v2`` for each (a
    loader store after a miss publishes nothing), and check that P reads ``v2``."""
    p, q = pair
    names = [f"{namespace}:{key}" for key in keys]
    # Polled: EXISTS expires a key the moment it is due, where a keyspace notification
    # would wait for the server's 10 Hz active expiry.
    await eventually(lambda: raw_redis.exists(*names), expect=0, within=3 * TTL)

    async def v2() -> str:
        return "v2"

    for key in keys:
        assert "v2" == await q.get_or_set(key, v2, ttl=60)
    with anyio.fail_after(5 * REPLY_DELAY + 5):
        for key in keys:
            assert "v2" == await p.get(key), f"P served its L1 copy of {key} after L2 expired"


class TestFillNeverOutlivesL2:
    """The L1 deadline of a fill counts the remaining TTL from when the request was sent,
    so a slow reply does not stretch the L1 copy past the moment Redis expires the key."""

    async def test_single_read(
        self,
        proxy: HoldingProxy,
        pair: tuple[CacheManager, CacheManager],
        raw_redis: Redis,
        namespace: str,
    ) -> None:
        """A read made alone (GET + PTTL on the batcher's own connection)."""
        p, q = pair
        assert q.l2 is not None
        await q.l2.set("k", "v1", ttl=TTL)  # no bus message: none can race with P's fill
        proxy.delay_replies(REPLY_DELAY)
        assert "v1" == await p.get("k")
        assert "v1" == p.l1.peek("k")  # filled
        await _after_l2_expiry_q_stores_v2(pair, raw_redis, namespace, ["k"])

    async def test_auto_pipelined_reads(
        self,
        proxy: HoldingProxy,
        pair: tuple[CacheManager, CacheManager],
        raw_redis: Redis,
        namespace: str,
    ) -> None:
        """Concurrent reads: the first goes alone, the others share a pipeline."""
        p, q = pair
        keys = [f"k{i}" for i in range(4)]
        assert q.l2 is not None
        for key in keys:
            await q.l2.set(key, "v1", ttl=TTL)  # no bus message: none races with P's fills
        proxy.delay_replies(REPLY_DELAY)
        assert p.l2 is not None
        batched = p.l2._reads.batched
        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(p.get, key)
        assert p.l2._reads.batched > batched  # the later reads shared a pipeline
        assert ["v1"] * len(keys) == [p.l1.peek(key) for key in keys]
        await _after_l2_expiry_q_stores_v2(pair, raw_redis, namespace, keys)

    async def test_warm(
        self,
        proxy: HoldingProxy,
        pair: tuple[CacheManager, CacheManager],
        raw_redis: Redis,
        namespace: str,
    ) -> None:
        """A warm installs L1 after its SETs' replies: it counts from before the SETs."""
        p, _q = pair
        proxy.delay_replies(REPLY_DELAY)
        result = await p.warm_cache([("w", "v1")], ttl=TTL)
        assert 1 == result.l1_written
        assert "v1" == p.l1.peek("w")
        await _after_l2_expiry_q_stores_v2(pair, raw_redis, namespace, ["w"])


class TestL1CopiesKeepAClockMargin:
    """Redis expires keys on its wall clock and L1 on this process's monotonic clock; a
    wall clock running fast (0.5 % on the test VM) must not let an L1 copy outlive its L2
    entry: copies live at most `L2_CLOCK_MARGIN` (99 %) of the entry's TTL."""

    async def test_fill_and_own_write(self, make_manager: ManagerFactory, clock: FakeClock) -> None:
        """A fill from L2 and a write to both tiers, each with 100 s left: gone from L1 after
        99.5 s of this process's clock (without the margin they would last 100 s)."""
        p = await make_manager(timer=clock)
        q = await make_manager()
        assert q.l2 is not None
        await q.l2.set("filled", "v1", ttl=100)  # no bus message
        assert "v1" == await p.get("filled")
        assert await p.set("written", "v2", ttl=100)
        assert ["v1", "v2"] == [p.l1.peek("filled"), p.l1.peek("written")]
        clock.tick(99.5)
        assert [None, None] == [p.l1.peek("filled"), p.l1.peek("written")]
