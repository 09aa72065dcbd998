"""Tests of InMemoryCache, the L1: operations, stats, eviction policies and TTLs."""

from __future__ import annotations

import random

import pytest

from coherent_cache import CacheStrategy, InMemoryCache, InvalidTTLError
from coherent_cache.keys import compile_pattern

from .conftest import FakeClock

ALL_STRATEGIES = list(CacheStrategy)


@pytest.fixture(params=ALL_STRATEGIES, ids=[s.value for s in ALL_STRATEGIES])
def strategy(request: pytest.FixtureRequest) -> CacheStrategy:
    """Each eviction policy in turn."""
    value: CacheStrategy = request.param
    return value


def make(
    strategy: CacheStrategy, clock: FakeClock, *, maxsize: int = 100, ttl: float | None = 300
) -> InMemoryCache:
    """An InMemoryCache driven by the fake clock."""
    return InMemoryCache(maxsize, ttl, strategy, timer=clock)


def fill(cache: InMemoryCache, *keys: str) -> None:
    """Set each key to its own name."""
    for key in keys:
        cache.set(key, key)


class TestOperations:
    """get / set / delete / clear on every policy."""

    def test_set_get(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """A stored value is returned by get; set returns True."""
        cache = make(strategy, clock)
        assert True is cache.set("k", {"v": [1, 2]})
        assert {"v": [1, 2]} == cache.get("k")

    def test_get_missing_default(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """A missing key returns the default (None unless given)."""
        cache = make(strategy, clock)
        assert (None, "dflt") == (cache.get("nope"), cache.get("nope", "dflt"))

    def test_none_value_is_a_hit(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """A stored None is returned and counted as a hit, not a miss."""
        cache = make(strategy, clock)
        cache.set("k", None)
        assert None is cache.get("k", "dflt")
        assert (1, 0) == (cache.get_stats()["hits"], cache.get_stats()["misses"])

    def test_overwrite(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """Setting an existing key replaces its value without growing the cache."""
        cache = make(strategy, clock)
        cache.set("k", 1)
        cache.set("k", 2)
        assert (2, 1) == (cache.get("k"), len(cache))

    def test_value_returned_as_is(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """The L1 stores objects without copying."""
        cache = make(strategy, clock)
        value = [1, 2]
        cache.set("k", value)
        assert value is cache.get("k")

    def test_delete(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """delete removes a live key and says so; a missing key gives False."""
        cache = make(strategy, clock)
        cache.set("k", 1)
        assert (True, False, None) == (cache.delete("k"), cache.delete("k"), cache.get("k"))

    def test_delete_expired(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """Deleting an expired entry reports False (nothing live was removed)."""
        cache = make(strategy, clock)
        cache.set("k", 1, ttl=1)
        clock.tick(2)
        assert False is cache.delete("k")

    def test_clear(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """clear empties the cache and returns True."""
        cache = make(strategy, clock)
        fill(cache, "a", "b", "c")
        assert True is cache.clear()
        assert (0, None) == (len(cache), cache.get("a"))

    def test_contains(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """`in` is true for live str keys only."""
        cache = make(strategy, clock)
        cache.set("k", 1, ttl=1)
        assert (True, False, False) == ("k" in cache, "x" in cache, 1 in cache)
        clock.tick(1)
        assert "k" not in cache

    def test_keys(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """keys() lists the keys held."""
        cache = make(strategy, clock)
        fill(cache, "a", "b")
        assert ["a", "b"] == sorted(cache.keys())

    @pytest.mark.parametrize("maxsize", [0, -1, True, 1.5])
    def test_invalid_maxsize(self, maxsize: int) -> None:
        """maxsize must be a positive int."""
        with pytest.raises(ValueError, match="maxsize"):
            InMemoryCache(maxsize)


class TestStats:
    """get_stats reports hits, misses, hit rate, size, capacity, evictions and policy."""

    def test_keys_and_initial_values(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """A fresh cache reports zeros, its capacity and its policy."""
        expected = {
            "hits": 0,
            "misses": 0,
            "hit_rate": 0.0,
            "size": 0,
            "maxsize": 10,
            "evictions": 0,
            "strategy": strategy.value,
            "memory_bytes": 0,
            "memory_max_bytes": None,
            "size_evictions": 0,
            "oversize_skipped": 0,
        }
        assert expected == make(strategy, clock, maxsize=10).get_stats()

    def test_counts(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """Hits and misses are counted and give the hit rate."""
        cache = make(strategy, clock, maxsize=10)
        fill(cache, "a", "b")
        cache.get("a")
        cache.get("a")
        cache.get("b")
        cache.get("missing")
        stats = cache.get_stats()
        assert (3, 1, 0.75, 2) == (
            stats["hits"],
            stats["misses"],
            stats["hit_rate"],
            stats["size"],
        )

    def test_expired_get_is_miss(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """Reading an expired entry counts a miss."""
        cache = make(strategy, clock)
        cache.set("k", 1, ttl=1)
        clock.tick(1)
        assert None is cache.get("k")
        assert (0, 1) == (cache.get_stats()["hits"], cache.get_stats()["misses"])

    def test_evictions_counted(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """Every entry dropped for lack of room counts as an eviction."""
        cache = make(strategy, clock, maxsize=3)
        fill(cache, "a", "b", "c", "d", "e")
        stats = cache.get_stats()
        assert (2, 3) == (stats["evictions"], stats["size"])

    def test_delete_and_expiry_are_not_evictions(
        self, strategy: CacheStrategy, clock: FakeClock
    ) -> None:
        """Deleted and expired entries do not count as evictions."""
        cache = make(strategy, clock, maxsize=3)
        fill(cache, "a", "b")
        cache.set("c", "c", ttl=1)
        cache.delete("a")
        clock.tick(2)
        cache.expire()
        fill(cache, "x", "y")
        assert 0 == cache.get_stats()["evictions"]

    def test_peek_does_not_count(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """peek returns the value without counting a hit or a miss."""
        cache = make(strategy, clock)
        cache.set("k", 1)
        assert (1, None, "d") == (cache.peek("k"), cache.peek("x"), cache.peek("x", "d"))
        assert (0, 0) == (cache.get_stats()["hits"], cache.get_stats()["misses"])

    def test_peek_hides_expired(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """peek does not return an expired value."""
        cache = make(strategy, clock)
        cache.set("k", 1, ttl=1)
        clock.tick(1)
        assert None is cache.peek("k")


class TestEviction:
    """Which entry each policy evicts when the cache is full."""

    @pytest.mark.parametrize("strategy", [CacheStrategy.LRU, CacheStrategy.TTL])
    def test_lru(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """LRU (and TTL, a time-aware LRU) evict the least recently used entry."""
        cache = make(strategy, clock, maxsize=3)
        fill(cache, "a", "b", "c")
        cache.get("a")
        cache.set("d", "d")
        assert ["a", "c", "d"] == sorted(cache.keys())

    def test_lfu(self, clock: FakeClock) -> None:
        """LFU evicts the least frequently used entry even if it was used last."""
        cache = make(CacheStrategy.LFU, clock, maxsize=3)
        fill(cache, "a", "b", "c")
        for key in ["a", "a", "a", "b", "b", "c"]:
            cache.get(key)
        cache.set("d", "d")
        assert ["a", "b", "d"] == sorted(cache.keys())

    def test_fifo(self, clock: FakeClock) -> None:
        """FIFO evicts the oldest insertion even if it was just read."""
        cache = make(CacheStrategy.FIFO, clock, maxsize=3)
        fill(cache, "a", "b", "c")
        cache.get("a")
        cache.get("a")
        cache.set("d", "d")
        assert ["b", "c", "d"] == sorted(cache.keys())

    @pytest.mark.parametrize("strategy", [CacheStrategy.LRU, CacheStrategy.TTL, CacheStrategy.LFU])
    def test_peek_does_not_touch_order(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """peek does not make an entry recently or frequently used."""
        cache = make(strategy, clock, maxsize=3)
        fill(cache, "a", "b", "c")
        cache.get("b")
        cache.get("c")
        cache.peek("a")
        cache.set("d", "d")
        assert ["b", "c", "d"] == sorted(cache.keys())

    def test_ttl_evicts_expired_first(self, clock: FakeClock) -> None:
        """The TTL policy drops an expired entry before a live least recently used one."""
        cache = make(CacheStrategy.TTL, clock, maxsize=3)
        fill(cache, "a")
        cache.set("b", "b", ttl=1)
        fill(cache, "c")
        clock.tick(2)
        cache.set("d", "d")
        assert ["a", "c", "d"] == sorted(cache.keys())


class TestTTL:
    """Entry lifetimes, on every policy."""

    def test_memory_ttl_expires_entries(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """An entry without its own TTL lives for the cache's ttl."""
        cache = make(strategy, clock, ttl=10)
        cache.set("k", 1)
        clock.tick(9.9)
        assert 1 == cache.get("k")
        clock.tick(0.1)
        assert None is cache.get("k")

    def test_per_entry_ttl(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """An entry set with ttl=5 lives 5 seconds whatever the policy."""
        cache = make(strategy, clock)
        cache.set("k", "v", ttl=5)
        clock.tick(4.9)
        assert "v" == cache.get("k")
        clock.tick(0.2)
        assert None is cache.get("k")

    def test_per_entry_ttl_capped(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """A per-entry ttl longer than the cache's ttl is cut to the cache's ttl."""
        cache = make(strategy, clock, ttl=10)
        cache.set("k", "v", ttl=100)
        clock.tick(9.9)
        assert "v" == cache.get("k")
        clock.tick(0.2)
        assert None is cache.get("k")

    def test_no_expiry(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """With ttl=None on the cache and the entry, the entry never expires."""
        cache = make(strategy, clock, ttl=None)
        cache.set("k", "v")
        clock.tick(10**9)
        assert "v" == cache.get("k")

    def test_per_entry_ttl_without_cache_ttl(
        self, strategy: CacheStrategy, clock: FakeClock
    ) -> None:
        """Without a cache ttl, an entry's own ttl still applies."""
        cache = make(strategy, clock, ttl=None)
        cache.set("k", "v", ttl=5)
        clock.tick(5)
        assert None is cache.get("k")

    def test_overwrite_resets_ttl(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """Setting a key again starts a new lifetime."""
        cache = make(strategy, clock)
        cache.set("k", 1, ttl=5)
        clock.tick(4)
        cache.set("k", 2, ttl=5)
        clock.tick(4)
        assert 2 == cache.get("k")

    @pytest.mark.parametrize("ttl", [0, -1, -0.5, "5", True, False, float("inf"), float("nan")])
    def test_invalid_ttl(self, strategy: CacheStrategy, clock: FakeClock, ttl: object) -> None:
        """A ttl that is not a positive finite number (or None) raises InvalidTTLError."""
        cache = make(strategy, clock)
        with pytest.raises(InvalidTTLError) as info:
            cache.set("k", 1, ttl=ttl)  # type: ignore[arg-type]
        assert ttl is info.value.ttl
        assert None is cache.get("k")

    @pytest.mark.parametrize("ttl", [0, -1, "5"])
    def test_invalid_cache_ttl(self, ttl: object) -> None:
        """An invalid cache ttl raises InvalidTTLError at construction."""
        with pytest.raises(InvalidTTLError):
            InMemoryCache(10, ttl)  # type: ignore[arg-type]

    def test_expire_purges(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """expire() drops every expired entry and returns how many."""
        cache = make(strategy, clock)
        fill(cache, "live")
        cache.set("a", 1, ttl=1)
        cache.set("b", 2, ttl=2)
        clock.tick(3)
        assert 2 == cache.expire()
        assert (["live"], 1) == (list(cache.keys()), len(cache))

    def test_expire_nothing(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """expire() with no expired entries removes nothing."""
        cache = make(strategy, clock)
        fill(cache, "a", "b")
        assert (0, 2) == (cache.expire(), len(cache))


class TestDeletePattern:
    """delete_pattern removes keys matching a Redis glob."""

    @pytest.mark.parametrize(
        ("pattern", "removed", "left"),
        [
            ("user:*", 3, ["order:1", "user"]),
            ("user:?", 2, ["order:1", "user", "user:10"]),
            ("user:[12]", 2, ["order:1", "user", "user:10"]),
            ("user:[^1]", 1, ["order:1", "user", "user:1", "user:10"]),
            ("*", 5, []),
            ("nomatch*", 0, ["order:1", "user", "user:1", "user:10", "user:2"]),
            ("user", 1, ["order:1", "user:1", "user:10", "user:2"]),
        ],
    )
    def test_globs(
        self,
        strategy: CacheStrategy,
        clock: FakeClock,
        pattern: str,
        removed: int,
        left: list[str],
    ) -> None:
        """Matching keys go, the count of live removed entries is returned."""
        cache = make(strategy, clock)
        fill(cache, "user:1", "user:2", "user:10", "user", "order:1")
        assert removed == cache.delete_pattern(pattern)
        assert left == sorted(cache.keys())

    @pytest.mark.parametrize("seed", range(5))
    def test_agrees_with_a_full_scan_after_any_history(
        self, strategy: CacheStrategy, clock: FakeClock, seed: int
    ) -> None:
        """Whatever sets, overwrites, deletes, evictions, expiries and clears came before,
        delete_pattern (which visits only the first segment's keys for ``a:*``-like
        patterns) removes exactly the keys a full scan with the glob finds."""
        rng = random.Random(seed)
        cache = make(strategy, clock, maxsize=40)
        keys = [f"{p}{i}" for p in ("a:", "a:b:", "ab:", "b:", "a", "a*:", "é:") for i in range(9)]
        patterns = ["a:*", "a:b:*", "a:1", "a*", "*:1", "a?:*", "a\\*:*", "é:*", "[ab]:*", "b:*"]
        for _ in range(400):
            op = rng.random()
            if op < 0.6:
                cache.set(rng.choice(keys), 1, ttl=rng.choice([None, 1, 5]))
            elif op < 0.8:
                cache.delete(rng.choice(keys))
            elif op < 0.95:
                clock.tick(rng.choice([0.5, 2]))
                if rng.random() < 0.3:
                    cache.expire()
            elif op < 0.97:
                cache.clear()
            else:
                pattern = rng.choice(patterns)
                match = compile_pattern(pattern)
                expected = sorted(k for k in cache.keys() if not match(k))
                cache.delete_pattern(pattern)
                assert expected == sorted(cache.keys()), pattern
            # The index holds exactly the keys held that have a segment (no leak).
            indexed = set().union(*cache._data.index.buckets.values())
            assert {k for k in cache.keys() if ":" in k} == indexed
        for pattern in patterns:
            match = compile_pattern(pattern)
            expected = sorted(k for k in cache.keys() if not match(k))
            cache.delete_pattern(pattern)
            assert expected == sorted(cache.keys()), pattern

    def test_escaped_glob(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """An escaped '*' matches only a literal '*'."""
        cache = make(strategy, clock)
        fill(cache, "a*", "ab")
        assert 1 == cache.delete_pattern("a\\*")
        assert ["ab"] == list(cache.keys())

    def test_expired_not_counted(self, strategy: CacheStrategy, clock: FakeClock) -> None:
        """Expired matching entries are removed but not counted."""
        cache = make(strategy, clock)
        cache.set("k:1", 1, ttl=1)
        cache.set("k:2", 2)
        clock.tick(2)
        assert 1 == cache.delete_pattern("k:*")
        assert 0 == len(cache)
