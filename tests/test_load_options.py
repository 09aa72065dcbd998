"""Issue 19's load options: loader_hard_timeout, refresh_ahead, a TTL chosen by the
result, none_ttl (fake clock for the TTL logic, a real server for both tiers)."""

from __future__ import annotations

import random
import time
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from coherent_cache import (
    USE_DEFAULT,
    CacheConfig,
    CacheManager,
    CacheTier,
    InvalidTTLError,
    LoaderTimeoutError,
)
from coherent_cache._loader import LoadPolicy

from .conftest import FakeClock, ManagerFactory, eventually

pytestmark = pytest.mark.anyio


class Gate:
    """A loader that counts its calls and blocks until released (or returns at once)."""

    def __init__(self, value: Any = "v", *, blocked: bool = True) -> None:
        self.value = value
        self.calls = 0
        self.finished = 0
        self.cancelled = False
        self.release = anyio.Event()
        if not blocked:
            self.release.set()

    async def __call__(self) -> Any:
        self.calls += 1
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        self.finished += 1
        return self.value if not callable(self.value) else self.value(self.calls)


class NoJitter(random.Random):
    """A random source whose jitter is always 0."""

    def uniform(self, a: float, b: float) -> float:
        return 0.0


class TestPolicy:
    @pytest.mark.parametrize(
        "options",
        [
            {"refresh_ahead": 0},
            {"refresh_ahead": 1},
            {"refresh_ahead": True},
            {"refresh_ahead": "0.8"},
            {"loader_hard_timeout": 0},
            {"loader_hard_timeout": float("nan")},
            {"none_ttl": -1},
        ],
    )
    def test_bad_values_raise(self, options: dict[str, object]) -> None:
        """Each new option is checked when the policy is built."""
        with pytest.raises(InvalidTTLError):
            LoadPolicy(ttl=10, **options)  # type: ignore[arg-type]

    def test_refresh_ahead_needs_a_ttl_and_l1(self) -> None:
        """Without expiry, or on the L2 tier alone, there is nothing to refresh ahead of."""
        assert LoadPolicy(ttl=None, refresh_ahead=0.8).refresh_ahead is None
        assert LoadPolicy(ttl=5, tier=CacheTier.L2, refresh_ahead=0.8).refresh_ahead is None
        assert 0.8 == LoadPolicy(ttl=5, refresh_ahead=0.8).refresh_ahead
        assert 0.8 == LoadPolicy(ttl=lambda v: 5, refresh_ahead=0.8).refresh_ahead

    def test_config_defaults_and_env(self) -> None:
        """CacheConfig holds the defaults (env variables too); USE_DEFAULT takes them."""
        config = CacheConfig.from_env(
            {
                "COHERENT_CACHE_REDIS_URL": "none",
                "COHERENT_CACHE_LOADER_HARD_TIMEOUT": "0.5",
                "COHERENT_CACHE_REFRESH_AHEAD": "0.8",
            }
        )
        assert (0.5, 0.8) == (config.loader_hard_timeout, config.refresh_ahead)
        base = {
            "ttl": 10,
            "tier": CacheTier.BOTH,
            "tags": (),
            "lock": None,
            "stale_ttl": None,
            "loader_timeout": None,
            "cache_none": True,
            "should_cache": None,
            "ttl_jitter": 0.0,
        }
        policy = LoadPolicy.of_call(
            config,
            **base,  # type: ignore[arg-type]
            loader_hard_timeout=USE_DEFAULT,
            refresh_ahead=USE_DEFAULT,
            none_ttl=USE_DEFAULT,
        )
        assert (0.5, 0.8) == (policy.loader_hard_timeout, policy.refresh_ahead)
        policy = LoadPolicy.of_call(
            config,
            **base,  # type: ignore[arg-type]
            loader_hard_timeout=None,
            refresh_ahead=None,
            none_ttl=3,
        )
        assert (None, None, 3.0) == (
            policy.loader_hard_timeout,
            policy.refresh_ahead,
            policy.none_ttl,
        )
        with pytest.raises(ValueError, match="refresh_ahead"):
            CacheConfig(redis_url=None, refresh_ahead=1.5)


class TestHardTimeout:
    async def test_caller_gets_the_error_and_the_load_fills_both_tiers(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """The caller stops waiting at the hard timeout; later callers join the same load,
        which stores in L1 and L2 when it ends."""
        cache = await make_manager()
        gate = Gate({"n": 1})
        started = time.monotonic()
        with pytest.raises(LoaderTimeoutError) as caught:
            await cache.get_or_set("k", gate, ttl=60, loader_hard_timeout=0.05)
        assert gate.finished == 0  # answered while the loader was still blocked
        assert (caught.value.key, caught.value.timeout) == ("k", 0.05)
        assert isinstance(caught.value, TimeoutError)
        assert time.monotonic() - started < 5  # a bound for a starved CI box, not speed
        assert 0 == await raw_redis.exists(f"{namespace}:k")

        async def join() -> Any:
            return await cache.get_or_set("k", gate, ttl=60)

        async with anyio.create_task_group() as tg:
            tg.start_soon(join)
            await anyio.wait_all_tasks_blocked()
            gate.release.set()
        assert 1 == gate.calls  # the second caller joined the background load
        await eventually(lambda: cache.l1.peek("k"), expect={"n": 1})
        assert 1 == await raw_redis.exists(f"{namespace}:k")
        assert 0 < await raw_redis.pttl(f"{namespace}:k") <= 60_000
        stats = (await cache.get_stats())["loader"]
        assert (1, 1) == (stats["hard_timeouts"], stats["loads"])

    async def test_config_default_applies_and_none_overrides(
        self, make_manager: ManagerFactory
    ) -> None:
        """loader_hard_timeout from CacheConfig; None per call waits for the loader."""
        cache = await make_manager(redis_url=None, loader_hard_timeout=0.02)
        gate = Gate()
        with pytest.raises(LoaderTimeoutError):
            await cache.get_or_set("k", gate)
        async with anyio.create_task_group() as tg:

            async def unbounded() -> None:
                assert "v" == await cache.get_or_set("k", gate, loader_hard_timeout=None)

            tg.start_soon(unbounded)
            await anyio.wait_all_tasks_blocked()
            gate.release.set()
        assert 1 == gate.calls

    async def test_decorated_function(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """cached(loader_hard_timeout=...) the same: the error, then the filled tiers."""
        cache = await make_manager()
        release = anyio.Event()
        calls: list[int] = []

        @cache.cached(key_prefix="slow", ttl=60, loader_hard_timeout=0.05)
        async def slow(x: int) -> int:
            calls.append(x)
            await release.wait()
            return x * 2

        with pytest.raises(LoaderTimeoutError):
            await slow(21)
        release.set()
        await eventually(lambda: cache.l1.peek("slow:21"), expect=42)
        assert 1 == await raw_redis.exists(f"{namespace}:slow:21")
        assert 42 == await slow(21)
        assert [21] == calls

    async def test_stop_cancels_the_background_load_and_writes_nothing(
        self, redis_url: str, raw_redis: Redis, namespace: str
    ) -> None:
        """stop() during a background load cancels it; L2 holds no key of it after."""
        cache = CacheManager(CacheConfig(redis_url=redis_url, namespace=namespace))
        await cache.start()
        gate = Gate()
        try:
            with pytest.raises(LoaderTimeoutError):
                await cache.get_or_set("k", gate, ttl=60, loader_hard_timeout=0.02)
            assert 1 == gate.calls
        finally:
            await cache.stop()
        assert gate.cancelled
        gate.release.set()
        keys = [key async for key in raw_redis.scan_iter(match=f"{namespace}*")]
        assert [] == keys


class TestRefreshAhead:
    async def test_hit_past_the_fraction_refreshes_once_in_the_background(
        self, make_manager: ManagerFactory, clock: FakeClock
    ) -> None:
        """Before 80 % of the TTL: plain hits. After: the old value at once, one refresh."""
        cache = await make_manager(redis_url=None, timer=clock)
        gate = Gate(lambda n: f"v{n}", blocked=False)
        assert "v1" == await cache.get_or_set("k", gate, ttl=10, refresh_ahead=0.8)
        clock.tick(7.9)
        assert "v1" == await cache.get_or_set("k", gate, ttl=10, refresh_ahead=0.8)
        assert 1 == gate.calls
        gate.release = anyio.Event()  # hold the refresh
        clock.tick(0.2)
        for _ in range(50):  # every hit answers at once with the value held
            assert "v1" == await cache.get_or_set("k", gate, ttl=10, refresh_ahead=0.8)
        await eventually(lambda: gate.calls, expect=2)
        gate.release.set()
        await eventually(lambda: cache.l1.peek("k"), expect="v2")
        assert 2 == gate.calls  # one refresh for the 50 hits
        assert 1 == (await cache.get_stats())["loader"]["refreshes"]
        clock.tick(9)  # past the first entry's expiry: the refreshed one serves
        assert "v2" == await cache.get_or_set("k", gate, ttl=10, refresh_ahead=0.8)

    async def test_off_by_default_and_per_call_none(
        self, make_manager: ManagerFactory, clock: FakeClock
    ) -> None:
        """No refresh without the option; the config default turns it on, None off."""
        plain = await make_manager(redis_url=None, timer=clock)
        on = await make_manager(redis_url=None, timer=clock, refresh_ahead=0.5)
        gate = Gate(lambda n: n, blocked=False)
        for cache in (plain, on):
            await cache.get_or_set("k", gate, ttl=10)
        clock.tick(6)
        assert 1 == await plain.get_or_set("k", gate, ttl=10)
        assert 2 == await on.get_or_set("k", gate, ttl=10, refresh_ahead=None)
        await anyio.wait_all_tasks_blocked()
        assert 2 == gate.calls
        assert 2 == await on.get_or_set("k", gate, ttl=10)
        await eventually(lambda: gate.calls, expect=3)

    async def test_decorated_function_refreshes_both_tiers(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str, clock: FakeClock
    ) -> None:
        """cached(refresh_ahead=...): the hit returns at once; the refresh rewrites L2."""
        cache = await make_manager(timer=clock)
        calls: list[int] = []

        @cache.cached(key_prefix="f", ttl=100, refresh_ahead=0.5)
        async def f(x: int) -> int:
            calls.append(x)
            return len(calls)

        assert 1 == await f(1)
        await raw_redis.pexpire(f"{namespace}:f:1", 40_000)  # L2 as if 60 s old
        clock.tick(60)
        assert 1 == await f(1)
        await eventually(lambda: cache.l1.peek("f:1"), expect=2)
        assert 2 == len(calls)
        assert 90_000 < await raw_redis.pttl(f"{namespace}:f:1") <= 100_000

    @pytest.mark.parametrize(("l2_left_ms", "loads"), [(40_000, 2), (95_000, 1)])
    async def test_locked_refresh_reloads_only_when_l2_is_due(
        self,
        make_manager: ManagerFactory,
        raw_redis: Redis,
        namespace: str,
        clock: FakeClock,
        l2_left_ms: int,
        loads: int,
    ) -> None:
        """lock=True: the lock holder reloads unless L2's entry is no longer due (another
        instance refreshed it); either way the hit answered at once."""
        cache = await make_manager(timer=clock)
        gate = Gate(lambda n: n, blocked=False)
        options: dict[str, Any] = {"ttl": 100, "refresh_ahead": 0.5, "lock": True}
        assert 1 == await cache.get_or_set("k", gate, **options)
        await raw_redis.pexpire(f"{namespace}:k", l2_left_ms)
        clock.tick(60)
        assert 1 == await cache.get_or_set("k", gate, **options)
        await eventually(lambda: cache.stats()["loader"]["refreshes"], expect=1)
        await eventually(lambda: not cache.load_engine.in_flight("k"))
        assert loads == gate.calls
        assert 0 == await raw_redis.exists(f"{namespace}#lock:k")  # released

    async def test_lock_loser_adopts_the_refreshed_entry_before_its_own_expires(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str, clock: FakeClock
    ) -> None:
        """lock=True: A refreshes; B, finding the lock held, copies A's new entry from L2
        into its L1 in the background, its loader never called and its entry never gone."""
        a = await make_manager(timer=clock)
        b = await make_manager(timer=clock)
        gate_a, gate_b = Gate(lambda n: f"a{n}", blocked=False), Gate("b")
        options: dict[str, Any] = {"ttl": 100, "refresh_ahead": 0.5, "lock": True}
        assert "a1" == await a.get_or_set("k", gate_a, **options)
        assert "a1" == await b.get_or_set("k", gate_b, **options)  # from L2
        await raw_redis.pexpire(f"{namespace}:k", 40_000)  # L2 as if 60 s old
        clock.tick(60)
        gate_a.release = anyio.Event()  # hold A's refresh while B looks
        assert "a1" == await a.get_or_set("k", gate_a, **options)
        await eventually(lambda: gate_a.calls, expect=2)  # A holds the lock and loads
        assert "a1" == await b.get_or_set("k", gate_b, **options)
        await eventually(lambda: b.stats()["loader"]["refreshes"], expect=1)
        assert b.load_engine.in_flight("k")  # B polls L2 for A's result
        gate_a.release.set()
        await eventually(lambda: b.l1.peek("k"), expect="a2")
        assert 0 == gate_b.calls
        window = b.l1.fresh_window("k")
        assert window is not None and window[1] - clock() > 90  # the new entry's TTL

    async def test_holder_with_a_late_copy_reloads_when_l2_is_due_by_the_ttl(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str, clock: FakeClock
    ) -> None:
        """lock=True: B's L1 copy was read from L2 late, so it is shorter than the TTL. When
        B refreshes holding the lock and L2's entry has half the TTL left or less, B loads:
        it does not take the old entry for one refreshed elsewhere (which, copy after
        shorter copy, left the key to expire fleet-wide with nobody loading)."""
        a = await make_manager(timer=clock)
        b = await make_manager(timer=clock)
        gate_a, gate_b = Gate("a"), Gate("b", blocked=False)
        gate_a.release.set()
        options: dict[str, Any] = {"ttl": 100, "refresh_ahead": 0.5, "lock": True}
        assert "a" == await a.get_or_set("k", gate_a, **options)
        await raw_redis.pexpire(f"{namespace}:k", 60_000)  # as if 40 s old
        assert "a" == await b.get_or_set("k", gate_b, **options)  # a ~59 s copy
        clock.tick(30)
        await raw_redis.pexpire(f"{namespace}:k", 30_000)  # 70 s old: due by the TTL
        assert "a" == await b.get_or_set("k", gate_b, **options)  # served, refresh started
        await eventually(lambda: b.stats()["loader"]["refreshes"], expect=1)
        await eventually(lambda: not b.load_engine.in_flight("k"))
        assert 1 == gate_b.calls
        assert "b" == b.l1.peek("k")
        assert 90_000 < await raw_redis.pttl(f"{namespace}:k") <= 100_000

    async def test_holder_measures_a_none_against_none_ttl(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str, clock: FakeClock
    ) -> None:
        """lock=True with none_ttl: B refreshes a cached None (stored for none_ttl); A's
        refresh right after finds L2 not due by none_ttl and copies it: one load per
        window, not one per instance (measured against ``ttl`` it looked due)."""
        a = await make_manager(timer=clock)
        b = await make_manager(timer=clock)
        gate_a, gate_b = Gate(None, blocked=False), Gate(None, blocked=False)
        options: dict[str, Any] = {
            "ttl": 100, "none_ttl": 10, "refresh_ahead": 0.5, "lock": True,
        }  # fmt: skip
        assert None is await a.get_or_set("k", gate_a, **options)
        assert None is await b.get_or_set("k", gate_b, **options)  # from L2
        await raw_redis.pexpire(f"{namespace}:k", 4_000)  # as if 6 s old
        clock.tick(6)
        assert None is await b.get_or_set("k", gate_b, **options)  # B refreshes: loads
        await eventually(lambda: gate_b.calls, expect=1)
        await eventually(lambda: not b.load_engine.in_flight("k"))
        assert 9_000 < await raw_redis.pttl(f"{namespace}:k")  # B's new None, 10 s
        assert None is await a.get_or_set("k", gate_a, **options)  # A's refresh: copies
        await eventually(lambda: a.stats()["loader"]["refreshes"], expect=1)
        await eventually(lambda: not a.load_engine.in_flight("k"))
        assert (1, 1) == (gate_a.calls, gate_b.calls)

    async def test_holder_allows_for_ttl_jitter(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str, clock: FakeClock
    ) -> None:
        """lock=True with ttl_jitter=0.6: an entry another instance just stored may live
        only 40 % of ttl; the holder finds 45 s of a 100 s ttl not due and copies it."""
        cache = await make_manager(timer=clock)
        cache.load_engine._random = NoJitter()  # this instance stores exactly ttl
        gate = Gate(lambda n: n, blocked=False)
        options: dict[str, Any] = {
            "ttl": 100, "ttl_jitter": 0.6, "refresh_ahead": 0.5, "lock": True,
        }  # fmt: skip
        assert 1 == await cache.get_or_set("k", gate, **options)  # stored for exactly 100 s
        clock.tick(60)
        await raw_redis.pexpire(f"{namespace}:k", 45_000)  # as if stored elsewhere, 45 s
        assert 1 == await cache.get_or_set("k", gate, **options)
        await eventually(lambda: cache.stats()["loader"]["refreshes"], expect=1)
        await eventually(lambda: not cache.load_engine.in_flight("k"))
        assert 1 == gate.calls
        await raw_redis.pexpire(f"{namespace}:k", 15_000)  # now due even for the shortest
        clock.tick(25)
        assert 1 == await cache.get_or_set("k", gate, **options)
        await eventually(lambda: gate.calls, expect=2)

    async def test_lock_loser_loads_when_the_holder_leaves_without_refreshing(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str, clock: FakeClock
    ) -> None:
        """lock=True: B finds the lock held and polls L2; the holder goes away (its lock is
        released) without storing a new entry, so B's next poll takes the lock and loads
        rather than serve the old entry until it expires."""
        a = await make_manager(timer=clock)
        b = await make_manager(timer=clock)
        gate_a, gate_b = Gate("a", blocked=False), Gate("b", blocked=False)
        options: dict[str, Any] = {"ttl": 100, "refresh_ahead": 0.5, "lock": True}
        assert "a" == await a.get_or_set("k", gate_a, **options)
        assert "a" == await b.get_or_set("k", gate_b, **options)  # from L2
        lock = f"{namespace}#lock:k"
        assert await raw_redis.set(lock, "a-gone", px=60_000, nx=True)
        await raw_redis.pexpire(f"{namespace}:k", 40_000)  # as if 60 s old
        clock.tick(60)
        assert "a" == await b.get_or_set("k", gate_b, **options)
        await eventually(lambda: b.stats()["loader"]["refreshes"], expect=1)
        assert b.load_engine.in_flight("k")  # B polls L2 while the lock is held
        assert 0 == gate_b.calls
        await raw_redis.delete(lock)
        await eventually(lambda: b.l1.peek("k"), expect="b")
        await eventually(lambda: not b.load_engine.in_flight("k"))
        assert (1, 1) == (gate_a.calls, gate_b.calls)
        assert 0 == await raw_redis.exists(lock)


class TestTtlOfResult:
    async def test_callable_ttl_on_both_tiers(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str, clock: FakeClock
    ) -> None:
        """ttl=callable(value): its seconds in L1 and L2; None = no expiry."""
        cache = await make_manager(timer=clock)

        def ttl_of(value: dict[str, Any]) -> float | None:
            return value["ttl"]  # type: ignore[no-any-return]

        async def short() -> dict[str, Any]:
            return {"ttl": 30}

        async def forever() -> dict[str, Any]:
            return {"ttl": None}

        await cache.get_or_set("short", short, ttl=ttl_of)
        await cache.get_or_set("forever", forever, ttl=ttl_of)
        window = cache.l1.fresh_window("short")
        # L1 keeps a copy of an L2 entry 99 % of its TTL (multitier.L2_CLOCK_MARGIN)
        assert window is not None and 30 * 0.99 == pytest.approx(window[1] - window[0])
        assert 29_000 < await raw_redis.pttl(f"{namespace}:short") <= 30_000
        assert -1 == await raw_redis.pttl(f"{namespace}:forever")
        clock.tick(31)
        assert cache.l1.peek("short") is None  # L1 expired it after the result's TTL
        assert {"ttl": None} == cache.l1.peek("forever")

    @pytest.mark.parametrize("bad", [lambda v: 0, lambda v: "10", lambda v: 1 / 0])
    async def test_bad_callable_result_still_reaches_the_caller(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str, bad: Any
    ) -> None:
        """A callable that raises or returns no valid TTL: the value is returned, not cached."""
        cache = await make_manager()

        async def load() -> str:
            return "value"

        assert "value" == await cache.get_or_set("k", load, ttl=bad)
        assert cache.l1.peek("k") is None
        assert 0 == await raw_redis.exists(f"{namespace}:k")
        assert 1 == (await cache.get_stats())["loader"]["ttl_errors"]

    async def test_decorator_callable_ttl(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """cached(ttl=callable) too."""
        cache = await make_manager()

        @cache.cached(key_prefix="g", ttl=lambda v: 5 if v else 50)
        async def g(x: int) -> int:
            return x

        await g(0)
        await g(1)
        assert 49_000 < await raw_redis.pttl(f"{namespace}:g:0") <= 50_000
        assert 4_000 < await raw_redis.pttl(f"{namespace}:g:1") <= 5_000


class TestNoneTtl:
    async def test_none_gets_its_own_ttl(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str, clock: FakeClock
    ) -> None:
        """none_ttl: a cached None lives that long in both tiers; found values keep ttl."""
        cache = await make_manager(timer=clock)

        async def nothing() -> None:
            return None

        async def something() -> int:
            return 1

        await cache.get_or_set("none", nothing, ttl=600, none_ttl=5)
        await cache.get_or_set("one", something, ttl=600, none_ttl=5)
        assert 4_000 < await raw_redis.pttl(f"{namespace}:none") <= 5_000
        assert 599_000 < await raw_redis.pttl(f"{namespace}:one") <= 600_000
        window = cache.l1.fresh_window("none")
        assert window is not None and 5 * 0.99 == pytest.approx(window[1] - window[0])  # margin

        @cache.cached(key_prefix="d", ttl=600, none_ttl=7)
        async def d(x: int) -> None:
            return None

        await d(1)
        assert 6_000 < await raw_redis.pttl(f"{namespace}:d:1") <= 7_000
