"""The stores behind `InMemoryCache`: entries, the segment index, LRU/FIFO/TLRU and LFU.

Every store keeps the entries of one policy, an index of keys by first segment (for
pattern clears) and a byte account: ``bytes`` is the sum of the accounted sizes of the
entries held (`entry_cost`), kept under ``max_bytes`` when one is set by evicting what
the policy would evict first (counted in ``size_evictions``, apart from ``evictions``).
"""

from __future__ import annotations

import heapq
import sys
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Final, final

import orjson
from cachetools import Cache, LFUCache

from .keys import literal_head
from .types import MISSING

__all__ = [
    "ENTRY_COST",
    "INF",
    "SIZE_BUDGET",
    "Entry",
    "LFUStore",
    "OrderedStore",
    "SegmentIndex",
    "approx_size",
    "entry_cost",
]

INF: Final = float("inf")

ENTRY_COST: Final = 240
"""Bytes accounted per entry on top of its key and encoded value: the entry record, its
slots in the store's tables and index, and the decoded value's Python overhead over its
encoding, on average (see "The byte bound" in docs/architecture.md)."""
SIZE_BUDGET: Final = 256
"""Objects visited by `approx_size`: deeper or larger values are under-estimated."""


def approx_size(obj: Any, budget: list[int]) -> int:
    """``sys.getsizeof`` of ``obj`` and its JSON-like contents, visiting at most ``budget``."""
    if budget[0] <= 0:
        return 0
    budget[0] -= 1
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        for key, value in obj.items():
            size += approx_size(key, budget) + approx_size(value, budget)
    elif isinstance(obj, list | tuple):
        for item in obj:
            size += approx_size(item, budget)
    return size


def entry_cost(key: str, value: Any, encoded_size: int | None) -> int:
    """The bytes an entry is accounted for under a byte bound.

    ``len(key)`` + the value's encoded size + `ENTRY_COST`. The encoded size is the length
    of the serializer's (uncompressed) encoding when the value went through it; otherwise
    the length of ``orjson.dumps(value)``, or, for what orjson cannot encode, a
    ``sys.getsizeof`` walk of up to 256 objects.
    """
    if encoded_size is None:
        try:
            encoded_size = len(orjson.dumps(value))
        except TypeError:
            encoded_size = approx_size(value, [SIZE_BUDGET])
    return len(key) + encoded_size + ENTRY_COST


@final
class Entry:
    """One L1 entry. ``fresh <= expires``: between them the entry is stale (served only by
    get_or_set's stale-while-revalidate); plain entries share one float for both.
    ``size`` is the accounted size (0 when the cache has no byte bound)."""

    __slots__ = ("expires", "fresh", "size", "stored", "tags", "value")

    def __init__(
        self,
        value: Any,
        expires: float,
        stored: float,
        fresh: float,
        tags: tuple[str, ...],
        size: int,
    ) -> None:
        self.value = value
        self.expires = expires
        self.stored = stored
        self.fresh = fresh
        self.tags = tags
        self.size = size


@final
class SegmentIndex:
    """Keys by their first segment (up to and including the first ``:``).

    A pattern whose literal head contains a ``:`` (``user:*``, ``user:42:*``) can only
    match keys of the head's first segment, so a pattern clear visits that bucket instead
    of every key: O(matches) for the common ``prefix:*`` clears of a large L1. Keys
    without a ``:`` are not indexed (no such pattern can match them). Buckets are dicts
    (keys to ``None``): half the bytes per key of a set.
    """

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: dict[str, dict[str, None]] = {}

    def add(self, key: str) -> None:
        i = key.find(":")
        if i >= 0:
            segment = key[: i + 1]
            bucket = self.buckets.get(segment)
            if bucket is None:
                self.buckets[segment] = {key: None}
            else:
                bucket[key] = None

    def discard(self, key: str) -> None:
        i = key.find(":")
        if i >= 0:
            segment = key[: i + 1]
            bucket = self.buckets.get(segment)
            if bucket is not None:
                bucket.pop(key, None)
                if not bucket:
                    del self.buckets[segment]

    def discard_many(self, keys: list[str]) -> None:
        """`discard` each key; one bucket lookup when they share a segment (a prefix clear)."""
        if not keys:
            return
        first = keys[0]
        i = first.find(":")
        if i >= 0:
            segment = first[: i + 1]
            if all(key.startswith(segment) for key in keys):
                bucket = self.buckets.get(segment)
                if bucket is not None:
                    pop = bucket.pop
                    for key in keys:
                        pop(key, None)
                    if not bucket:
                        del self.buckets[segment]
                return
        for key in keys:
            self.discard(key)

    def candidates(self, pattern: str) -> list[str] | None:
        """The keys ``pattern`` may match, or ``None`` when it may match any key."""
        head = literal_head(pattern)
        i = head.find(":")
        if i < 0:
            return None
        return list(self.buckets.get(head[: i + 1], ()))

    def candidate_count(self, pattern: str) -> int | None:
        """How many keys `candidates` would return, without copying them (``None``: any)."""
        head = literal_head(pattern)
        i = head.find(":")
        if i < 0:
            return None
        return len(self.buckets.get(head[: i + 1], ()))

    def clear(self) -> None:
        self.buckets.clear()


class LFUStore(LFUCache[str, Entry]):
    """LFU bookkeeping: cachetools' O(1) frequency lists (its ``get`` counts a use)."""

    evictions = 0
    size_evictions = 0
    bytes = 0

    def __init__(self, maxsize: int, max_bytes: int | None = None) -> None:
        super().__init__(maxsize)
        self.index = SegmentIndex()
        self.max_bytes = max_bytes

    def popitem(self) -> tuple[str, Entry]:
        item = super().popitem()
        self.evictions += 1
        return item

    def __delitem__(self, key: str) -> None:  # pop and popitem come through here
        entry: Entry = Cache.__getitem__(self, key)
        super().__delitem__(key)
        self.bytes -= entry.size
        self.index.discard(key)

    def clear(self) -> None:
        super().clear()
        self.index.clear()
        self.bytes = 0

    def pop_many(self, keys: list[str]) -> list[Entry]:
        """Remove ``keys``; return the entries that were held."""
        found = [entry for entry in (self.peek_entry(key) for key in keys) if entry is not None]
        for key in keys:
            self.pop(key, None)
        return found

    def put(self, key: str, entry: Entry, _now: float) -> None:
        old = self.peek_entry(key)
        if old is not None:
            self.bytes -= old.size
        self[key] = entry
        self.bytes += entry.size
        if old is None:
            self.index.add(key)
        if self.max_bytes is not None:
            while self.bytes > self.max_bytes:
                self.popitem()
                self.evictions -= 1
                self.size_evictions += 1

    def peek_entry(self, key: str) -> Entry | None:
        try:
            # Cache.__getitem__ skips LFUCache's frequency bookkeeping.
            entry: Entry = Cache.__getitem__(self, key)
        except KeyError:
            return None
        return entry

    def iter_keys(self) -> Iterator[str]:
        return Cache.__iter__(self)

    def expire(self, now: float) -> int:
        dead = [k for k, e in list(self.items()) if e.expires <= now]
        for key in dead:
            self.pop(key, None)
        return len(dead)


@final
class OrderedStore:
    """LRU, FIFO and TLRU bookkeeping over one ``OrderedDict``, oldest (or least recent) first.

    Entries carry their own expiry, so a read is a C-level ``OrderedDict.get`` plus, for
    the recency policies, a ``move_to_end`` (cachetools' ``TLRUCache.get`` costs about
    1.4 µs of Python-level calls for the same). ``by_expiry`` (the TTL strategy, a TLRU)
    files each key under the whole second its entry expires in (``buckets``, with a heap
    of those seconds in ``due``): an insert first drops the expired entries of every
    second that has fully passed, so an entry expired for a second or more is dropped
    before any live one is evicted; `expire` drops every expired entry. A key costs one
    list slot there (a heap of ``(expires, key)`` tuples cost 72 bytes per entry).
    """

    __slots__ = (
        "buckets",
        "by_expiry",
        "bytes",
        "data",
        "due",
        "evictions",
        "filed",
        "index",
        "max_bytes",
        "maxsize",
        "size_evictions",
    )

    def __init__(self, maxsize: int, *, by_expiry: bool, max_bytes: int | None = None) -> None:
        self.data: OrderedDict[str, Entry] = OrderedDict()
        self.index = SegmentIndex()
        self.maxsize = maxsize
        self.by_expiry = by_expiry
        self.evictions = 0
        self.size_evictions = 0
        self.bytes = 0
        self.max_bytes = max_bytes
        # Keys by the second their entry expires in; a filed key whose entry now expires
        # at another time (overwritten, deleted) is skipped and dropped when its second is.
        self.buckets: dict[int, list[str]] = {}
        self.due: list[int] = []  # a heap of the seconds in buckets
        self.filed = 0

    def _evict_oldest(self) -> None:
        key, entry = self.data.popitem(last=False)
        self.bytes -= entry.size
        self.index.discard(key)

    def put(self, key: str, entry: Entry, now: float) -> None:
        data = self.data
        due = self.due
        if due and due[0] + 1 <= now:
            self.expire(now)
        old = data.get(key)
        if old is not None:
            self.bytes -= old.size
            data[key] = entry
            data.move_to_end(key)  # a write is a use (LRU); FIFO re-queues an overwrite
        else:
            while len(data) >= self.maxsize:
                self._evict_oldest()
                self.evictions += 1
            data[key] = entry
            self.index.add(key)
        self.bytes += entry.size
        if self.max_bytes is not None:
            while self.bytes > self.max_bytes:
                self._evict_oldest()
                self.size_evictions += 1
        if self.by_expiry and entry.expires != INF:
            self._file(key, entry.expires)
            if self.filed > 2 * len(data) + 64:  # dead keys of overwritten / deleted entries
                self.buckets.clear()
                self.due.clear()
                self.filed = 0
                for held_key, held in data.items():
                    if held.expires != INF:
                        self._file(held_key, held.expires)

    def _file(self, key: str, expires: float) -> None:
        second = int(expires // 1)
        bucket = self.buckets.get(second)
        if bucket is None:
            self.buckets[second] = [key]
            heapq.heappush(self.due, second)
        else:
            bucket.append(key)
        self.filed += 1

    def expire(self, now: float) -> int:
        """Drop every entry expired at ``now``; return how many."""
        data = self.data
        removed = 0
        if self.by_expiry:
            due, buckets = self.due, self.buckets
            while due and due[0] <= now:
                second = due[0]
                keys = buckets[second]
                kept = []
                for key in keys:
                    entry = data.get(key)
                    if entry is None or int(entry.expires // 1) != second:
                        continue  # deleted, or refiled under another second
                    if entry.expires <= now:
                        del data[key]
                        self.bytes -= entry.size
                        self.index.discard(key)
                        removed += 1
                    else:
                        kept.append(key)
                self.filed -= len(keys) - len(kept)
                if kept:  # the current second: the rest expire later in it
                    buckets[second] = kept
                    break
                heapq.heappop(due)
                del buckets[second]
            return removed
        dead = [k for k, e in data.items() if e.expires <= now]
        for key in dead:
            self.bytes -= data.pop(key).size
            self.index.discard(key)
        return len(dead)

    def peek_entry(self, key: str) -> Entry | None:
        return self.data.get(key)

    def iter_keys(self) -> Iterator[str]:
        return iter(self.data)

    def pop(self, key: str, default: Any = None) -> Any:
        entry = self.data.pop(key, MISSING)
        if entry is MISSING:
            return default
        self.bytes -= entry.size
        self.index.discard(key)
        return entry

    def pop_many(self, keys: list[str]) -> list[Entry]:
        """Remove ``keys``; return the entries that were held."""
        pop = self.data.pop
        found = [entry for entry in (pop(key, None) for key in keys) if entry is not None]
        self.bytes -= sum(entry.size for entry in found)
        self.index.discard_many(keys)
        return found

    def clear(self) -> None:
        self.data.clear()
        self.buckets.clear()
        self.due.clear()
        self.filed = 0
        self.index.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.data)
