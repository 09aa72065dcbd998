"""The W-TinyLFU policy and the byte bound of the L1 (issue 17).

TinyLFU: scans do not flush a hot set, frequency beats recency where it should, TTLs win
over frequency, and on a slice of the ARC OLTP trace it beats LRU. The byte bound: on
every policy the accounted bytes never exceed it and match the entries held, entries too
large for it are not kept (and still go to L2), the stats count size evictions apart, and
the traced memory of a bounded L1 stays within the documented factor of the bound.
"""

from __future__ import annotations

import gc
import gzip
import random
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from coherent_cache import CacheConfig, CacheStrategy, CacheTier, InMemoryCache
from coherent_cache._l1store import ENTRY_COST, entry_cost
from coherent_cache.l1 import OVERSIZE_FRACTION

from .conftest import FakeClock, ManagerFactory

ALL_STRATEGIES = list(CacheStrategy)
TRACE_SLICE = Path(__file__).parent / "data" / "oltp-50k.gz"
"""The first 50,000 accesses of the ARC OLTP trace (benchmarks/traces/README.md)."""
MEMORY_FACTOR = 3.0
"""Documented bound on traced L1 memory / ``max_bytes`` for JSON-like records."""


def tiny(clock: FakeClock, maxsize: int = 100, ttl: float | None = None) -> InMemoryCache:
    return InMemoryCache(maxsize, ttl, CacheStrategy.TINYLFU, timer=clock)


def access(cache: InMemoryCache, key: str) -> bool:
    """A get; on a miss, a set. Returns whether it was a hit."""
    if key in cache and cache.get(key) is not None:
        return True
    cache.set(key, key)
    return False


class TestTinyLFU:
    def test_one_time_scan_does_not_flush_the_hot_set(self, clock: FakeClock) -> None:
        """50 keys used often, then 2,000 keys once each: TinyLFU keeps the hot keys
        (LRU, given the same sequence, keeps none of them)."""
        hot = [f"hot:{i}" for i in range(50)]
        kept = {}
        for strategy in (CacheStrategy.TINYLFU, CacheStrategy.LRU):
            cache = InMemoryCache(100, None, strategy, timer=clock)
            for _ in range(20):
                for key in hot:
                    access(cache, key)
            for i in range(2_000):
                access(cache, f"scan:{i}")
            kept[strategy] = sum(key in cache for key in hot)
        assert kept[CacheStrategy.TINYLFU] >= 45
        assert kept[CacheStrategy.LRU] == 0

    def test_frequency_beats_recency(self, clock: FakeClock) -> None:
        """A key used 10 times survives 200 newer keys used once (LRU, given the same
        sequence, evicts it after 20); the count bound holds throughout."""
        held = {}
        for strategy in (CacheStrategy.TINYLFU, CacheStrategy.LRU):
            cache = InMemoryCache(20, None, strategy, timer=clock)
            for i in range(20):
                access(cache, f"k:{i}")
            for _ in range(10):
                access(cache, "k:0")
            for i in range(200):
                access(cache, f"new:{i}")
                assert len(cache) <= 20
            held[strategy] = "k:0" in cache
            assert f"new:{199}" in cache  # the newest key is always admitted (window)
        assert held == {CacheStrategy.TINYLFU: True, CacheStrategy.LRU: False}

    def test_recency_still_counts_in_the_window(self, clock: FakeClock) -> None:
        """The most recent key is always held (the window admits every new key)."""
        cache = tiny(clock, maxsize=10)
        for i in range(100):
            cache.set(f"k:{i}", i)
            assert i == cache.get(f"k:{i}")
        assert len(cache) == 10

    def test_ttl_wins_over_frequency(self, clock: FakeClock) -> None:
        """A key used 50 times still expires at its TTL."""
        cache = tiny(clock)
        cache.set("hot", 1, ttl=5)
        for _ in range(50):
            assert 1 == cache.get("hot")
        clock.tick(5)
        assert None is cache.get("hot")
        assert "hot" not in cache

    def test_per_entry_ttl_and_cache_ttl(self, clock: FakeClock) -> None:
        """Each entry expires at its own TTL, capped by the cache's."""
        cache = tiny(clock, ttl=30)
        cache.set("short", 1, ttl=1)
        cache.set("long", 2, ttl=10)
        cache.set("capped", 3, ttl=3_600)
        clock.tick(1)
        assert (None, 2, 3) == (cache.get("short"), cache.get("long"), cache.get("capped"))
        clock.tick(9)
        assert (None, 3) == (cache.get("long"), cache.get("capped"))
        clock.tick(20)
        assert None is cache.get("capped")
        assert 0 == cache.expire() + len(cache)

    def test_stale_entries_and_deletes(self, clock: FakeClock) -> None:
        """stale_for, delete, delete_pattern and clear work as on every policy."""
        cache = tiny(clock)
        cache.set("a:1", 1, ttl=1, stale_for=5)
        cache.set("a:2", 2)
        cache.set("b:1", 3)
        clock.tick(2)
        assert (None, (1, False)) == (cache.get("a:1"), cache.get_entry("a:1"))
        assert 2 == cache.delete_pattern("a:*")
        assert cache.delete("b:1")
        assert 0 == len(cache)
        cache.set("c", 1)
        cache.clear()
        assert 0 == len(cache) == cache.get_stats()["size"]

    def test_count_bound_holds_under_random_operations(self, clock: FakeClock) -> None:
        """Whatever the mix of reads, writes, deletes and expiries, at most maxsize
        entries are held and every held key is in exactly one segment."""
        rng = random.Random(7)
        cache = tiny(clock, maxsize=30)
        for _ in range(5_000):
            key = f"k:{int(rng.paretovariate(1.0)) % 200}"
            op = rng.random()
            if op < 0.6:
                access(cache, key)
            elif op < 0.9:
                cache.set(key, 1, ttl=rng.choice([None, 1, 10]))
            elif op < 0.97:
                cache.delete(key)
            else:
                clock.tick(1)
            assert len(cache) <= 30
        store: Any = cache._data
        segments = [*store.window, *store.probation, *store.protected]
        assert sorted(segments) == sorted(store.data)

    def test_beats_lru_on_an_oltp_slice(self) -> None:
        """On the first 50,000 accesses of the ARC OLTP trace (a get, a set on a miss),
        TinyLFU's hit ratio is well above LRU's at 250 entries (the full traces are
        replayed by benchmarks/standalone/traces.py)."""
        blocks: list[str] = []
        with gzip.open(TRACE_SLICE, "rt") as rows:
            for row in rows:
                start, count = (int(f) for f in row.split()[:2])
                blocks.extend(str(b) for b in range(start, start + count))
                if len(blocks) >= 50_000:
                    break
        ratios = {}
        for strategy in (CacheStrategy.TINYLFU, CacheStrategy.LRU):
            cache = InMemoryCache(250, None, strategy)
            for key in blocks:
                if cache.get(key) is None:
                    cache.set(key, key)
            ratios[strategy] = cache.hits / len(blocks)
        assert ratios[CacheStrategy.TINYLFU] > ratios[CacheStrategy.LRU] + 0.04, ratios


@pytest.fixture(params=ALL_STRATEGIES, ids=[s.value for s in ALL_STRATEGIES])
def strategy(request: pytest.FixtureRequest) -> CacheStrategy:
    value: CacheStrategy = request.param
    return value


class TestByteBound:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        strategy=st.sampled_from(ALL_STRATEGIES),
        max_bytes=st.integers(2_000, 20_000),
        ops=st.lists(
            st.tuples(
                st.integers(0, 40),  # key
                st.integers(0, 3_000),  # value length
                st.sampled_from([None, 1.0, 5.0]),  # ttl
                st.sampled_from(["set", "set", "set", "get", "delete", "tick", "stale"]),
            ),
            max_size=120,
        ),
    )
    def test_accounted_bytes_never_exceed_the_bound(
        self,
        strategy: CacheStrategy,
        max_bytes: int,
        ops: list[tuple[int, int, float | None, str]],
    ) -> None:
        """After every operation: accounted bytes ≤ the bound, equal to the sum of the
        held entries' costs; nothing above 1/8 of the bound is held; count ≤ maxsize."""
        clock = FakeClock()
        cache = InMemoryCache(25, 60, strategy, timer=clock, max_bytes=max_bytes)
        held: dict[str, int] = {}
        for k, length, ttl, op in ops:
            key, value = f"k:{k}", "x" * length
            if op == "set":
                kept = cache.set(key, value, ttl)
                cost = entry_cost(key, value, None)
                assert kept == (cost * OVERSIZE_FRACTION <= max_bytes)
                assert kept == (key in cache)
                held[key] = cost
            elif op == "stale":
                cache.set_stale(key, value, 2.0, size=length + 2)
                held[key] = len(key) + length + 2 + ENTRY_COST
            elif op == "get":
                cache.get(key)
            elif op == "delete":
                cache.delete(key)
            else:
                clock.tick(2.0)
                cache.expire()
            stats = cache.get_stats()
            assert stats["memory_bytes"] <= max_bytes
            assert stats["memory_max_bytes"] == max_bytes
            assert stats["memory_bytes"] == sum(held[key] for key in cache.keys())
            assert len(cache) <= 25

    def test_size_evictions_are_counted_apart(
        self, strategy: CacheStrategy, clock: FakeClock
    ) -> None:
        """Entries evicted for bytes count in ``size_evictions``, not ``evictions``; an
        oversize write counts in ``oversize_skipped`` and drops the key's older entry."""
        cost = entry_cost("k:00", "x" * 760, None)
        assert cost == 4 + 762 + ENTRY_COST
        cache = InMemoryCache(1_000, None, strategy, timer=clock, max_bytes=10 * cost)
        for i in range(25):
            cache.set(f"k:{i:02}", "x" * 760)
        stats = cache.get_stats()
        assert (10, 10 * cost, 15, 0) == (
            stats["size"],
            stats["memory_bytes"],
            stats["size_evictions"],
            stats["evictions"],
        )
        kept = next(iter(cache.keys()))
        assert False is cache.set(kept, "y" * 2 * cost)  # above 1/8 of the bound
        assert kept not in cache
        assert 1 == cache.get_stats()["oversize_skipped"]
        assert 9 * cost == cache.get_stats()["memory_bytes"]

    def test_without_a_bound_nothing_changes(self, strategy: CacheStrategy) -> None:
        """No bound: a large value is kept, and memory_bytes is the sampled estimate."""
        cache = InMemoryCache(10, None, strategy)
        cache.set("big", "x" * 1_000_000)
        stats = cache.get_stats()
        assert ("x" * 1_000_000, None, 0) == (
            cache.get("big"),
            stats["memory_max_bytes"],
            stats["size_evictions"],
        )
        assert stats["memory_bytes"] > 1_000_000

    def test_bad_bound_refused(self) -> None:
        """A bound that is not a positive int is refused."""
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ValueError, match="max_bytes"):
                InMemoryCache(10, max_bytes=bad)  # type: ignore[arg-type]

    def test_traced_memory_stays_within_the_documented_factor(
        self, strategy: CacheStrategy
    ) -> None:
        """6,000 decoded JSON records (small users, lists of ints, strings up to 2 KB,
        nested dicts) into an L1 bounded at 150 KB: what tracemalloc sees allocated by the
        whole L1 (entries, tables, index, sketch, values) stays under 3 times the bound."""
        rng = random.Random(1)
        records: list[Any] = []
        for i in range(6_000):
            shape = i % 4
            if shape == 0:
                record: Any = {"id": i, "name": f"user-{i}", "active": True}
            elif shape == 1:
                record = [rng.randrange(10**6) for _ in range(rng.randrange(1, 50))]
            elif shape == 2:
                record = "x" * rng.randrange(10, 2_000)
            else:
                record = {"id": i, "tags": ["a", "b"], "score": 0.5, "nested": {"a": [1.5]}}
            records.append(orjson.dumps(record))
        bound = 150_000
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            cache = InMemoryCache(100_000, None, strategy, max_bytes=bound)
            for i, raw in enumerate(records):
                cache.set(f"user:{i}", orjson.loads(raw), size=len(raw))
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert cache.get_stats()["memory_bytes"] <= bound
        assert len(cache) > 150
        assert used <= MEMORY_FACTOR * bound, used / bound


class TestManagerByteBound:
    async def test_config_env_and_encoded_size(self, make_manager: ManagerFactory) -> None:
        """``memory_cache_max_bytes`` (and its env variable) bounds the manager's L1, which
        accounts the serializer's uncompressed encoded size of what is written."""
        environ = {"COHERENT_CACHE_MEMORY_CACHE_MAX_BYTES": "40000"}
        assert 40_000 == CacheConfig.from_env(environ).memory_cache_max_bytes
        manager = await make_manager(memory_cache_max_bytes=20_000)
        value = {"name": "x" * 1_000}  # compressible: the L2 payload is far smaller
        await manager.set("k", value, ttl=60)
        l1 = (await manager.get_stats())["l1_cache"]
        encoded = len(orjson.dumps(value))
        assert (20_000, len("k") + encoded + ENTRY_COST) == (
            l1["memory_max_bytes"],
            l1["memory_bytes"],
        )

    async def test_oversize_value_goes_to_l2_only(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """A value above 1/8 of the bound is not kept in L1 but is written to L2 and read
        back from there (and a read does not install it in L1 either)."""
        manager = await make_manager(memory_cache_max_bytes=8_000)
        big = "x" * 2_000
        assert await manager.set("big", big, ttl=60)
        assert None is manager.l1.peek("big")
        assert 1 == await raw_redis.exists(f"{namespace}:big")
        assert big == await manager.get("big")
        assert None is manager.l1.peek("big")
        assert (await manager.get_stats())["l1_cache"]["oversize_skipped"] >= 2

    async def test_l1_only_oversize_write_reports_false(self, make_manager: ManagerFactory) -> None:
        """Without an L2 write, a value L1 does not keep makes ``set`` return False (it is
        stored nowhere); a value within the bound returns True."""
        manager = await make_manager(memory_cache_max_bytes=8_000)
        assert False is await manager.set("big", "x" * 2_000, ttl=60, tier=CacheTier.L1)
        assert True is await manager.set("small", "x" * 20, ttl=60, tier=CacheTier.L1)
        alone = await make_manager(redis_url=None, memory_cache_max_bytes=8_000)
        assert False is await alone.set("big", "x" * 2_000, ttl=60)
        assert None is await alone.get("big")
        assert True is await alone.set("small", "x" * 20, ttl=60)


class TestTTLExpiryFiling:
    """The TTL policy files keys by expiry second instead of a heap of tuples."""

    def test_expire_matches_a_full_scan(self, clock: FakeClock) -> None:
        """Under random sets (fractional TTLs, stale periods, overwrites), deletes and
        clock steps, `expire()` removes exactly the expired entries and an insert never
        evicts a live entry while one expired a second ago or more is held."""
        rng = random.Random(3)
        cache = InMemoryCache(40, 30, CacheStrategy.TTL, timer=clock)
        values: dict[str, float] = {}  # key -> expiry, as the test computes it
        for step in range(3_000):
            key = f"k:{rng.randrange(60)}"
            op = rng.random()
            if op < 0.6:
                ttl = rng.choice([0.3, 0.9, 1.5, 4.0, None])
                stale = rng.choice([0.0, 0.0, 2.0])
                long_expired = [k for k, e in values.items() if e + 1 <= clock.now]
                full = len(values) >= 40 and key not in values
                cache.set(key, step, ttl, stale_for=stale)
                if full and long_expired:  # an insert drops those before evicting
                    for gone in long_expired:
                        assert gone not in set(cache.keys())
                held = set(cache.keys())
                values = {k: e for k, e in values.items() if k in held}
                life = min(30.0, ttl) if ttl is not None else 30.0
                values[key] = clock.now + (min(30.0, life + stale) if stale else life)
            elif op < 0.7:
                cache.delete(key)
                values.pop(key, None)
            elif op < 0.9:
                clock.tick(rng.choice([0.1, 0.5, 1.0]))
            else:
                expected = sum(e <= clock.now for e in values.values())
                assert expected == cache.expire()
                values = {k: e for k, e in values.items() if e > clock.now}
                assert set(values) == set(cache.keys())

    def test_overwrites_do_not_grow_the_filing(self, clock: FakeClock) -> None:
        """Overwriting one key 10,000 times keeps the filed keys bounded."""
        cache = InMemoryCache(10, 300, CacheStrategy.TTL, timer=clock)
        for i in range(10_000):
            cache.set("k", i, ttl=rng_ttl(i))
            clock.tick(0.01)
        store: Any = cache._data
        assert store.filed <= 2 * len(cache) + 64 + 1
        assert sum(len(bucket) for bucket in store.buckets.values()) == store.filed
        assert 9_999 == cache.get("k")


def rng_ttl(i: int) -> float:
    return 1.0 + (i * 7919 % 100)
