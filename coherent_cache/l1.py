"""InMemoryCache: the per-instance L1 over cachetools, with per-entry TTL on every policy."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Final, TypedDict, final

from cachetools import Cache, FIFOCache, LFUCache, LRUCache, TLRUCache

from .config import CacheStrategy
from .errors import InvalidTTLError
from .keys import compile_pattern

__all__ = ["InMemoryCache", "L1Stats"]

_MISSING: Final[Any] = object()


class L1Stats(TypedDict):
    """Statistics of an `InMemoryCache` (the seed's ``l1_cache`` block, plus extras)."""

    hits: int
    misses: int
    hit_rate: float
    size: int
    maxsize: int
    evictions: int
    strategy: str


@final
class _Entry:
    __slots__ = ("expires", "value")

    def __init__(self, value: Any, expires: float) -> None:
        self.value = value
        self.expires = expires


class _LRU(LRUCache[str, _Entry]):
    evictions = 0

    def popitem(self) -> tuple[str, _Entry]:
        item = super().popitem()
        self.evictions += 1
        return item


class _LFU(LFUCache[str, _Entry]):
    evictions = 0

    def popitem(self) -> tuple[str, _Entry]:
        item = super().popitem()
        self.evictions += 1
        return item


class _FIFO(FIFOCache[str, _Entry]):
    evictions = 0

    def popitem(self) -> tuple[str, _Entry]:
        item = super().popitem()
        self.evictions += 1
        return item


class _TLRU(TLRUCache[str, _Entry]):
    evictions = 0

    def popitem(self) -> tuple[str, _Entry]:
        item = super().popitem()
        self.evictions += 1
        return item


def _entry_expiry(_key: str, entry: _Entry, _now: float) -> float:
    return entry.expires


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_ttl(ttl: object) -> float | None:
    """Return ``ttl`` as seconds if it is ``None`` or a positive finite number, else raise."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < float("inf"):
        raise InvalidTTLError(
            f"ttl must be a positive number of seconds or None, got {ttl!r}", ttl=ttl
        )
    return float(ttl)


@final
class InMemoryCache:
    """A bounded in-process cache with one of four eviction policies.

    Every entry expires after its own TTL, capped by ``ttl``, whatever the policy: the
    policy only decides which live entry is evicted when the cache is full. Values are kept
    as Python objects and returned as they are, without copying: mutating a returned object
    mutates the cached entry (the `CacheManager` stores the decoded form of what it writes
    to Redis, so a caller's later change to the object it passed to ``set`` never leaks in).

    Not thread-safe: use it from one event loop (the one of its `CacheManager`).

    Args:
        maxsize: most entries kept.
        ttl: default lifetime in seconds of an entry, and the upper bound of any entry's
            lifetime; ``None`` for no default expiry.
        strategy: which entry to evict when full.
        timer: the clock, in seconds (injectable for tests).
    """

    __slots__ = ("_data", "_hits", "_misses", "_timer", "maxsize", "strategy", "ttl")

    def __init__(
        self,
        maxsize: int = 1000,
        ttl: float | None = 300,
        strategy: CacheStrategy = CacheStrategy.TTL,
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if not _is_positive_int(maxsize):
            raise ValueError(f"maxsize must be a positive int, got {maxsize!r}")
        self.maxsize = maxsize
        self.ttl = check_ttl(ttl)
        self.strategy = CacheStrategy(strategy)
        self._timer = timer
        self._hits = 0
        self._misses = 0
        self._data: _LRU | _LFU | _FIFO | _TLRU
        if self.strategy is CacheStrategy.TTL:
            self._data = _TLRU(maxsize, ttu=_entry_expiry, timer=timer)
        elif self.strategy is CacheStrategy.LRU:
            self._data = _LRU(maxsize)
        elif self.strategy is CacheStrategy.LFU:
            self._data = _LFU(maxsize)
        else:
            self._data = _FIFO(maxsize)

    def _lifetime(self, ttl: float | None) -> float:
        if ttl is None:
            return float("inf") if self.ttl is None else self.ttl
        return ttl if self.ttl is None else min(ttl, self.ttl)

    def get(self, key: str, default: Any = None) -> Any:
        """Return the live value of ``key``, or ``default`` (counts a hit or a miss)."""
        entry = self._data.get(key)
        if entry is not None:
            if entry.expires > self._timer():
                self._hits += 1
                return entry.value
            self._data.pop(key, None)
        self._misses += 1
        return default

    def peek(self, key: str, default: Any = None) -> Any:
        """Like `get`, but without counting or touching the eviction order."""
        try:
            # Cache.__getitem__ skips the subclasses' recency / frequency bookkeeping.
            entry: _Entry = Cache.__getitem__(self._data, key)
        except KeyError:
            return default
        if entry.expires <= self._timer():
            return default
        return entry.value

    def set(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` for ``ttl`` seconds (capped by the cache's ``ttl``); always True.

        Raises:
            InvalidTTLError: ``ttl`` is not ``None`` or a positive number.
        """
        lifetime = self._lifetime(check_ttl(ttl))
        self._data[key] = _Entry(value, self._timer() + lifetime)
        return True

    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether a live entry was removed."""
        entry = self._data.pop(key, None)
        return entry is not None and entry.expires > self._timer()

    def delete_pattern(self, pattern: str) -> int:
        """Remove every key matching the Redis glob ``pattern``; return how many were live."""
        match = compile_pattern(pattern)
        now = self._timer()
        removed = 0
        for key in [k for k in self._data.keys() if match(k)]:  # snapshot: we mutate below
            entry = self._data.pop(key, None)
            if entry is not None and entry.expires > now:
                removed += 1
        return removed

    def clear(self) -> bool:
        """Remove every entry; always True."""
        self._data.clear()
        return True

    def expire(self) -> int:
        """Drop every expired entry now (they are otherwise dropped lazily); return how many."""
        if isinstance(self._data, _TLRU):
            return len(self._data.expire())
        now = self._timer()
        dead = [k for k, e in list(self._data.items()) if e.expires <= now]
        for key in dead:
            self._data.pop(key, None)
        return len(dead)

    def keys(self) -> Iterator[str]:
        """Iterate over a snapshot of the keys held (expired ones may still be listed)."""
        return iter(list(self._data.keys()))

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.peek(key, _MISSING) is not _MISSING

    def get_stats(self) -> L1Stats:
        """Hits, misses, hit rate, size, capacity, evictions and policy."""
        total = self._hits + self._misses
        return {
            "hits": self._hits,
            "misses": self._misses,
            "hit_rate": self._hits / total if total else 0.0,
            "size": len(self._data),
            "maxsize": self.maxsize,
            "evictions": self._data.evictions,
            "strategy": self.strategy.value,
        }
