"""The L1 actor's mailbox and the L1's bus-loss distrust, in process."""

from __future__ import annotations

from collections.abc import Iterable

import anyio
import pytest

from coherent_cache import CacheStrategy, InMemoryCache
from coherent_cache.l1 import (
    INLINE_MAX_KEYS,
    PATTERN_CHUNK,
    FlushAll,
    InvalidateKeys,
    InvalidatePattern,
    InvalidateTags,
    L1Actor,
)

from .conftest import FakeClock


class Owner:
    """A minimal L1 owner recording what the actor asked for."""

    def __init__(self, l1: InMemoryCache) -> None:
        self._l1 = l1
        self.stale_patterns: list[str] = []
        self.flushes = 0

    @property
    def l1(self) -> InMemoryCache:
        return self._l1

    def invalidate_local(self, key: str) -> bool | None:
        return self._l1.delete(key)

    def invalidate_local_all(self) -> None:
        self.flushes += 1
        self._l1.clear()

    def stale_fills_matching(self, pattern: str) -> None:
        self.stale_patterns.append(pattern)

    def invalidate_local_tags(self, tags: Iterable[str]) -> int:
        return self._l1.delete_tagged(tags)


async def drain(actor: L1Actor) -> None:
    """Wait (bounded) until the actor has applied everything queued."""
    with anyio.fail_after(5):
        while actor.stats()["queued"]:  # noqa: ASYNC110 - the mailbox exposes counts only
            await anyio.sleep(0.001)
    await anyio.wait_all_tasks_blocked()


class TestActor:
    async def test_commands_are_applied_in_order(self) -> None:
        """Deletes, pattern clears and flushes queued to the mailbox are all applied."""
        l1 = InMemoryCache(100)
        for key in ["a", "b", "user:1", "user:2", "order:1"]:
            l1.set(key, key)
        owner = Owner(l1)
        actor = L1Actor(owner, mailbox_size=10)
        async with anyio.create_task_group() as tg:
            await tg.start(actor.run)
            actor.submit(InvalidateKeys(("a",)))
            actor.submit(InvalidatePattern("user:*"))
            await drain(actor)
            assert ["b", "order:1"] == sorted(l1.keys())
            assert ["user:*"] == owner.stale_patterns
            actor.submit(FlushAll())
            await drain(actor)
            assert 0 == len(l1)
            assert 3 == actor.stats()["applied"]
            tg.cancel_scope.cancel()
        await actor.aclose()

    async def test_full_mailbox_flushes_instead_of_dropping(self) -> None:
        """When the mailbox is full, L1 is flushed at once and the overflow is counted."""
        l1 = InMemoryCache(100)
        owner = Owner(l1)
        actor = L1Actor(owner, mailbox_size=2)
        async with anyio.create_task_group() as tg:
            await tg.start(actor.run)
            l1.set("victim", 1)
            # No checkpoint between submits: the actor cannot run, the mailbox fills (a
            # tag drop is never applied inline, so the key drop queues behind it).
            actor.submit(InvalidateTags(("x",)))
            actor.submit(InvalidateKeys(("y",)))
            assert 1 == l1.peek("victim")
            actor.submit(InvalidateKeys(("victim-not-queued",)))
            assert None is l1.peek("victim")
            assert (1, 1) == (actor.stats()["overflows"], owner.flushes)
            tg.cancel_scope.cancel()
        await actor.aclose()

    async def test_submit_before_start_flushes(self) -> None:
        """An invalidation with no running mailbox is never lost: L1 is flushed."""
        l1 = InMemoryCache(10)
        l1.set("k", 1)
        actor = L1Actor(Owner(l1), mailbox_size=2)
        actor.submit(InvalidateKeys(("other",)))
        assert 0 == len(l1)

    async def test_large_pattern_clear_yields_to_the_event_loop(self) -> None:
        """A pattern clear over many keys lets other tasks run between chunks."""
        size = PATTERN_CHUNK * 8
        l1 = InMemoryCache(size + 10, strategy=CacheStrategy.LRU)
        for i in range(size):
            l1.set(f"user:{i}", i)
        actor = L1Actor(Owner(l1), mailbox_size=4)
        progress: list[int] = []

        async def other_request() -> None:
            while len(l1):
                progress.append(len(l1))
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            await tg.start(actor.run)
            actor.submit(InvalidatePattern("user:*"))
            tg.start_soon(other_request)
            await drain(actor)
            tg.cancel_scope.cancel()
        await actor.aclose()
        assert 0 == len(l1)
        assert len({p for p in progress if 0 < p < size}) >= 2  # ran while the clear ran


class TestDistrust:
    @pytest.mark.parametrize("strategy", list(CacheStrategy))
    def test_entries_expire_max_stale_after_loss(
        self, clock: FakeClock, strategy: CacheStrategy
    ) -> None:
        """After a loss, older entries are served max_stale seconds more, then not at all."""
        l1 = InMemoryCache(10, strategy=strategy, timer=clock)
        l1.set("old", 1)
        clock.tick(100)
        l1.distrust(clock(), 5.0)
        clock.tick(4.9)
        assert 1 == l1.get("old")
        clock.tick(0.2)
        assert None is l1.get("old")
        assert None is l1.peek("old")

    def test_writes_during_loss_live_max_stale_after_their_own_write(
        self, clock: FakeClock
    ) -> None:
        """An entry written during the loss is served up to max_stale after its write."""
        l1 = InMemoryCache(10, timer=clock)
        l1.distrust(clock(), 5.0)
        clock.tick(10)
        l1.set("fresh", 1)
        clock.tick(4.9)
        assert 1 == l1.get("fresh")
        clock.tick(0.2)
        assert None is l1.get("fresh")

    def test_trust_restores_normal_ttl(self, clock: FakeClock) -> None:
        """After trust(), entries live their normal TTL again."""
        l1 = InMemoryCache(10, ttl=300, timer=clock)
        l1.distrust(clock(), 1.0)
        l1.trust()
        l1.set("k", 1)
        clock.tick(100)
        assert (1, False) == (l1.get("k"), l1.distrusted)

    def test_zero_max_stale_serves_nothing(self, clock: FakeClock) -> None:
        """max_stale_on_bus_loss=0 stops serving L1 the moment the bus is lost."""
        l1 = InMemoryCache(10, timer=clock)
        l1.set("k", 1)
        l1.distrust(clock(), 0.0)
        assert None is l1.get("k")


class TestActorDown:
    async def test_submit_flushes_when_the_actor_is_not_running(self) -> None:
        """After the actor loop ended (crashed or given up), an invalidation flushes L1."""
        l1 = InMemoryCache(10)
        actor = L1Actor(Owner(l1), mailbox_size=4)
        async with anyio.create_task_group() as tg:
            await tg.start(actor.run)
            tg.cancel_scope.cancel()
        l1.set("k", 1)
        actor.submit(InvalidateKeys(("other",)))
        assert 0 == len(l1)
        await actor.aclose()


class TestInline:
    """The fast path: a cheap command submitted to an idle actor is applied in `submit`."""

    async def test_idle_actor_applies_a_key_drop_and_a_flush_inline(self) -> None:
        """No await between submit and the check: the drop already happened; stats add up."""
        l1 = InMemoryCache(100)
        for key in ["a", "b", "c"]:
            l1.set(key, key)
        owner = Owner(l1)
        actor = L1Actor(owner, mailbox_size=4)
        tallies: list[int] = []
        async with anyio.create_task_group() as tg:
            await tg.start(actor.run)
            await anyio.wait_all_tasks_blocked()
            actor.submit(InvalidateKeys(("a", "zz"), tallies.append))
            assert ["b", "c"] == sorted(l1.keys())
            assert [1] == tallies  # the tally callback ran, counting live keys only
            actor.submit(FlushAll())
            assert 0 == len(l1)
            assert 1 == owner.flushes
            stats = actor.stats()
            assert (0, 2, 0) == (stats["queued"], stats["applied"], stats["overflows"])
            assert 2 == actor.inline
            tg.cancel_scope.cancel()
        await actor.aclose()

    async def test_big_key_drops_tags_and_patterns_go_through_the_mailbox(self) -> None:
        """Only a few keys, a pattern with a few candidates or a flush go inline; the rest
        is applied by the actor's loop."""
        keys = tuple(f"k{i}" for i in range(INLINE_MAX_KEYS + 1))
        users = [f"user:{i}" for i in range(INLINE_MAX_KEYS + 1)]
        l1 = InMemoryCache(100)
        for key in keys:
            l1.set(key, key, tags=("t",) if key == "k0" else ())
        for key in users:
            l1.set(key, 1)
        actor = L1Actor(Owner(l1), mailbox_size=8)
        async with anyio.create_task_group() as tg:
            await tg.start(actor.run)
            await anyio.wait_all_tasks_blocked()
            actor.submit(InvalidatePattern("user:1*"))  # 17 candidates: the user: keys
            actor.submit(InvalidateTags(("t",)))
            actor.submit(InvalidateKeys(keys))
            assert len(keys) + len(users) == len(l1)  # nothing applied yet
            await drain(actor)
            assert sorted(k for k in users if not k.startswith("user:1")) == sorted(l1.keys())
            assert (3, 0) == (actor.stats()["applied"], actor.inline)
            tg.cancel_scope.cancel()
        await actor.aclose()

    async def test_a_pattern_with_few_candidates_goes_inline(self) -> None:
        """A pattern clear whose first segment holds at most INLINE_MAX_KEYS keys is applied
        in `submit`, matching fills made stale, other segments untouched."""
        l1 = InMemoryCache(100)
        for i in range(INLINE_MAX_KEYS):
            l1.set(f"user:{i}", i)
        for i in range(INLINE_MAX_KEYS * 4):
            l1.set(f"order:{i}", i)
        owner = Owner(l1)
        actor = L1Actor(owner, mailbox_size=4)
        async with anyio.create_task_group() as tg:
            await tg.start(actor.run)
            await anyio.wait_all_tasks_blocked()
            actor.submit(InvalidatePattern("user:1*"))
            assert [] == [k for k in l1.keys() if k.startswith("user:1")]
            assert INLINE_MAX_KEYS - 7 + INLINE_MAX_KEYS * 4 == len(l1)  # user:1, 10-15 gone
            assert ["user:1*"] == owner.stale_patterns
            assert (1, 1) == (actor.stats()["applied"], actor.inline)
            tg.cancel_scope.cancel()
        await actor.aclose()

    async def test_key_drop_queues_behind_a_command_handed_to_the_loop(self) -> None:
        """A command handed straight to the waiting loop (the buffer stays empty) is still
        pending: a later key drop waits for it rather than overtaking it."""
        l1 = InMemoryCache(100)
        l1.set("a", 1)
        actor = L1Actor(Owner(l1), mailbox_size=4)
        async with anyio.create_task_group() as tg:
            await tg.start(actor.run)
            await anyio.wait_all_tasks_blocked()  # the loop waits in receive
            actor.submit(InvalidateTags(("t",)))
            actor.submit(InvalidateKeys(("a",)))
            assert 1 == l1.peek("a")  # queued, not applied inline
            await drain(actor)
            assert None is l1.peek("a")
            assert (2, 0) == (actor.stats()["applied"], actor.inline)
            tg.cancel_scope.cancel()
        await actor.aclose()

    async def test_key_drop_during_a_chunked_pattern_clear_is_queued_behind_it(self) -> None:
        """While a pattern clear is between chunks (mailbox empty, actor busy), a key drop
        is queued and applied after the clear, never inline in the middle of it."""
        size = PATTERN_CHUNK * 8
        l1 = InMemoryCache(size + 10, strategy=CacheStrategy.LRU)
        for i in range(size):
            l1.set(f"user:{i}", i)
        l1.set("order:1", 1)
        actor = L1Actor(Owner(l1), mailbox_size=4)
        seen: dict[str, object] = {}

        async def drop_mid_clear() -> None:
            with anyio.fail_after(5):
                while len(l1) > size - PATTERN_CHUNK:  # the clear has done a chunk or more
                    await anyio.lowlevel.checkpoint()
            seen["left"] = len(l1)
            seen["queued"] = actor.stats()["queued"]
            actor.submit(InvalidateKeys(("order:1",)))
            seen["order:1 right after"] = l1.peek("order:1")

        async with anyio.create_task_group() as tg:
            await tg.start(actor.run)
            actor.submit(InvalidatePattern("user:*"))
            tg.start_soon(drop_mid_clear)
            with anyio.fail_after(5):
                while "order:1 right after" not in seen:
                    await anyio.lowlevel.checkpoint()
            await drain(actor)
            tg.cancel_scope.cancel()
        await actor.aclose()
        assert 1 < int(str(seen["left"])) < size  # the clear was in the middle
        assert 0 == seen["queued"]  # the mailbox itself was empty
        assert 1 == seen["order:1 right after"]  # queued, not applied inline
        assert 0 == len(l1)
        assert (2, 0) == (actor.stats()["applied"], actor.inline)

    async def test_a_failing_inline_drop_flushes_l1(self) -> None:
        """As when the loop fails on a command: the drop may be lost, so L1 is flushed."""

        class Failing(Owner):
            def invalidate_local(self, key: str) -> bool | None:
                raise RuntimeError("boom")

        l1 = InMemoryCache(10)
        l1.set("k", 1)
        owner = Failing(l1)
        actor = L1Actor(owner, mailbox_size=4)
        async with anyio.create_task_group() as tg:
            await tg.start(actor.run)
            await anyio.wait_all_tasks_blocked()
            actor.submit(InvalidateKeys(("k",)))
            assert (0, 1) == (len(l1), owner.flushes)
            assert (0, 0) == (actor.stats()["applied"], actor.inline)
            tg.cancel_scope.cancel()
        await actor.aclose()
