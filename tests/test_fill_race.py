"""No stale fill: an L1 fill from L2 that raced with an invalidation of its key is dropped.

Each test forces the interleaving deterministically: a TCP proxy lets the server answer
the reader's GET but holds the reply; the invalidation happens; then the reply is let go.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from coherent_cache import CacheManager, CacheTier

from .conftest import ManagerFactory, eventually, settle
from .support.proxy import HoldingProxy


@pytest.fixture
async def pair(
    proxy: HoldingProxy, make_manager: ManagerFactory
) -> tuple[CacheManager, CacheManager]:
    """(reader behind the proxy, writer connected directly), sharing one namespace."""
    reader = await make_manager(redis_url=proxy.url)
    writer = await make_manager()
    return reader, writer


async def race(
    proxy: HoldingProxy,
    reader: CacheManager,
    key: str,
    invalidate: Callable[[], Awaitable[Any]],
) -> Any:
    """Run reader.get(key) with its L2 reply held, run ``invalidate`` meanwhile, then release.

    Returns what the racing get returned.
    """
    result: dict[str, Any] = {}

    async def read() -> None:
        result["value"] = await reader.get(key)

    async def run_invalidation() -> None:
        await invalidate()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            proxy.hold()
            tg.start_soon(read)
            await proxy.wait_reply_held()  # the server has answered the GET with the old value
            assert key in reader.multi_tier._fills  # the fill is in flight
            tg.start_soon(run_invalidation)
            await wait_all_tasks_blocked()  # the invalidation did its local part
            proxy.release()
    return result["value"]


class TestFillRace:
    async def test_local_set_during_fill_wins(
        self, proxy: HoldingProxy, pair: tuple[CacheManager, CacheManager]
    ) -> None:
        """A set that lands while the fill is in flight is what L1 keeps, not the older read."""
        reader, writer = pair
        await settle(writer.set("k", "v1", ttl=60), reader)
        raced = await race(proxy, reader, "k", lambda: reader.set("k", "v2", ttl=60))
        assert "v1" == raced  # the racing read returns what it read
        assert "v2" == reader.l1.peek("k")
        assert "v2" == await reader.get("k")

    async def test_delete_during_fill_leaves_l1_empty(
        self, proxy: HoldingProxy, pair: tuple[CacheManager, CacheManager]
    ) -> None:
        """A delete that lands while the fill is in flight keeps the old value out of L1."""
        reader, writer = pair
        await settle(writer.set("k", "v1", ttl=60), reader)
        await race(proxy, reader, "k", lambda: reader.delete("k"))
        assert None is reader.l1.peek("k")
        assert None is await reader.get("k")

    async def test_pattern_clear_during_fill_leaves_l1_empty(
        self, proxy: HoldingProxy, pair: tuple[CacheManager, CacheManager]
    ) -> None:
        """A matching clear_pattern during the fill keeps the old value out of L1."""
        reader, writer = pair
        await writer.set("user:1", "v1", ttl=60)
        await race(proxy, reader, "user:1", lambda: reader.clear_pattern("user:*"))
        assert None is reader.l1.peek("user:1")

    async def test_clear_during_fill_leaves_l1_empty(
        self, proxy: HoldingProxy, pair: tuple[CacheManager, CacheManager]
    ) -> None:
        """A clear during the fill keeps the old value out of L1."""
        reader, writer = pair
        await settle(writer.set("k", "v1", ttl=60), reader)
        await race(proxy, reader, "k", reader.clear)
        assert None is reader.l1.peek("k")

    async def test_remote_invalidation_hook_during_fill(
        self, proxy: HoldingProxy, pair: tuple[CacheManager, CacheManager]
    ) -> None:
        """invalidate_local (the hook remote invalidations use) also drops the raced fill."""
        reader, writer = pair
        await settle(writer.set("k", "v1", ttl=60), reader)

        async def remote() -> None:
            reader.multi_tier.invalidate_local("k")

        await race(proxy, reader, "k", remote)
        assert None is reader.l1.peek("k")

    async def test_bus_delete_during_fill_is_applied_inline_and_drops_it(
        self, proxy: HoldingProxy, pair: tuple[CacheManager, CacheManager]
    ) -> None:
        """Another instance's delete reaches the reader over the bus while its fill is in
        flight; the idle L1 actor applies it inline (the fast path) and the fill is dropped."""
        reader, writer = pair
        await settle(writer.set("k", "v1", ttl=60), reader)
        actor = reader._actor
        inline = actor.inline
        result: dict[str, Any] = {}

        async def read() -> None:
            result["value"] = await reader.get("k")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                proxy.hold(subscribers=False)  # the bus keeps flowing
                tg.start_soon(read)
                await proxy.wait_reply_held()
                assert "k" in reader.multi_tier._fills  # the fill is in flight
                await writer.delete("k")
                await eventually(lambda: actor.inline > inline)  # applied, inline
                assert 0 == reader.stats()["bus"]["mailbox"]["queued"]
                proxy.release()
        assert "v1" == result["value"]  # the racing read returns what it read
        assert None is reader.l1.peek("k")  # but did not install it
        assert None is await reader.get("k")

    async def test_unrelated_invalidation_does_not_drop_the_fill(
        self, proxy: HoldingProxy, pair: tuple[CacheManager, CacheManager]
    ) -> None:
        """Invalidating another key (or a non-matching pattern) leaves the fill installed."""
        reader, writer = pair
        await settle(writer.set("k", "v1", ttl=60), reader)

        async def unrelated() -> None:
            reader.multi_tier.invalidate_local("other")
            reader.multi_tier.invalidate_local_pattern("user:*")

        assert "v1" == await race(proxy, reader, "k", unrelated)
        assert "v1" == reader.l1.peek("k")

    async def test_l1_only_write_during_fill(
        self, proxy: HoldingProxy, pair: tuple[CacheManager, CacheManager]
    ) -> None:
        """Even an L1-only set during the fill wins over the older L2 read."""
        reader, writer = pair
        await settle(writer.set("k", "v1", ttl=60), reader)
        await race(proxy, reader, "k", lambda: reader.set("k", "mine", ttl=60, tier=CacheTier.L1))
        assert "mine" == reader.l1.peek("k")


async def warm_pool(cache: CacheManager, connections: int = 3) -> None:
    """Open several pooled connections now, so no handshake waits on a held reply later."""
    async with anyio.create_task_group() as tg:
        for i in range(connections):
            tg.start_soon(cache.get, f"warm:{i}", CacheTier.L2)


class TestOwnInvalidationFence:
    async def test_fill_started_during_own_clear_pattern_is_dropped(
        self, proxy: HoldingProxy, pair: tuple[CacheManager, CacheManager]
    ) -> None:
        """A read that starts after clear_pattern emptied L1, but reaches Redis before the
        keys are removed, reads the old value; it must not stay in L1 once clear_pattern
        returns (the second local clear, after the last UNLINK)."""
        reader, writer = pair
        await writer.set("user:1", "old", ttl=60)
        await warm_pool(reader)
        result: dict[str, Any] = {}

        async def clear() -> None:
            result["removed"] = await reader.clear_pattern("user:*")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                proxy.hold_requests(b"SCAN")  # the sweep (a script on one server) waits
                tg.start_soon(clear)  # L1 cleared; the sweep held before the server
                await proxy.wait_request_held()
                # L1 miss; the GET reaches the server before any UNLINK, and its fill
                # started after the local clear, so it installs the old value...
                assert "old" == await reader.get("user:1")
                assert "old" == reader.l1.peek("user:1")
                proxy.release_requests()
        assert 1 == result["removed"]
        assert None is reader.l1.peek("user:1")  # ...until clear_pattern drops it again


class TestSharedRead:
    """Concurrent misses of one key share one L2 read, unless it may predate a write."""

    async def test_concurrent_misses_share_one_l2_read(
        self, pair: tuple[CacheManager, CacheManager]
    ) -> None:
        """50 tasks missing L1 on one key at once: one L2 read, every task gets the value."""
        reader, writer = pair
        await writer.set("k", {"v": 1}, ttl=60)
        assert reader.l2 is not None
        hits_before = reader.l2.stats()["hits"]
        results: list[Any] = []

        async def read() -> None:
            results.append(await reader.get("k"))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(read)
        assert [{"v": 1}] * 50 == results
        assert 1 == reader.l2.stats()["hits"] - hits_before

    async def test_a_read_made_stale_is_not_joined(
        self, proxy: HoldingProxy, pair: tuple[CacheManager, CacheManager]
    ) -> None:
        """A get that starts after an invalidation does not take the answer of an L2 read
        that started before it (that read may carry the value the write replaced)."""
        reader, writer = pair
        await settle(writer.set("k", "v1", ttl=60), reader)
        await warm_pool(reader)
        result: dict[str, Any] = {}

        async def first() -> None:
            result["first"] = await reader.get("k")

        async def second() -> None:
            result["second"] = await reader.get("k")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                proxy.hold()
                tg.start_soon(first)
                await proxy.wait_reply_held()  # the server answered v1; the reply is held
                await reader.delete("k", CacheTier.L1)  # makes the read in flight stale
                await writer.set("k", "v2", ttl=60)
                tg.start_soon(second)  # must read L2 again, not join the first read
                await wait_all_tasks_blocked()
                proxy.release()
        assert ("v1", "v2") == (result["first"], result["second"])
