"""InMemoryCache, the per-instance L1 (OrderedDict stores, cachetools LFU), and the L1 actor."""

from __future__ import annotations

import heapq
import itertools
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, Protocol, TypeAlias, TypedDict, final

import anyio
import anyio.lowlevel
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from cachetools import Cache, LFUCache

from .config import CacheStrategy
from .keys import compile_pattern, literal_head
from .types import MISSING, check_ttl

__all__ = [
    "ActorStats",
    "FlushAll",
    "InMemoryCache",
    "InvalidateKeys",
    "InvalidatePattern",
    "InvalidateTags",
    "L1Actor",
    "L1Command",
    "L1Owner",
    "L1Stats",
]

log = structlog.get_logger("coherent_cache")


class L1Stats(TypedDict):
    """Statistics of an `InMemoryCache` (the seed's ``l1_cache`` block, plus extras)."""

    hits: int
    misses: int
    hit_rate: float
    size: int
    maxsize: int
    evictions: int
    strategy: str
    memory_bytes: int
    """An estimate from a sample of entries (see `InMemoryCache.memory_estimate`)."""


MEMORY_SAMPLE: Final = 32
"""Entries measured by `InMemoryCache.memory_estimate`."""
_ENTRY_OVERHEAD: Final = 200
"""Bytes of bookkeeping per entry (dict slots, order links, expiry heap item), roughly."""
_SIZE_BUDGET: Final = 256
"""Objects visited per sampled value: deeper or larger values are under-estimated."""


def _approx_size(obj: Any, budget: list[int]) -> int:
    """``sys.getsizeof`` of ``obj`` and its JSON-like contents, visiting at most ``budget``."""
    if budget[0] <= 0:
        return 0
    budget[0] -= 1
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        for key, value in obj.items():
            size += _approx_size(key, budget) + _approx_size(value, budget)
    elif isinstance(obj, list | tuple):
        for item in obj:
            size += _approx_size(item, budget)
    return size


@final
class _Entry:
    # fresh <= expires: between them the entry is stale (served only by get_or_set's
    # stale-while-revalidate). Plain entries have fresh == expires.
    __slots__ = ("expires", "fresh", "stored", "tags", "value")

    def __init__(
        self, value: Any, expires: float, stored: float, fresh: float, tags: tuple[str, ...]
    ) -> None:
        self.value = value
        self.expires = expires
        self.stored = stored
        self.fresh = fresh
        self.tags = tags


@final
class _SegmentIndex:
    """Keys by their first segment (up to and including the first ``:``).

    A pattern whose literal head contains a ``:`` (``user:*``, ``user:42:*``) can only
    match keys of the head's first segment, so a pattern clear visits that bucket instead
    of every key: O(matches) for the common ``prefix:*`` clears of a large L1. Keys
    without a ``:`` are not indexed (no such pattern can match them).
    """

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: dict[str, set[str]] = {}

    def add(self, key: str) -> None:
        i = key.find(":")
        if i >= 0:
            segment = key[: i + 1]
            bucket = self.buckets.get(segment)
            if bucket is None:
                self.buckets[segment] = {key}
            else:
                bucket.add(key)

    def discard(self, key: str) -> None:
        i = key.find(":")
        if i >= 0:
            segment = key[: i + 1]
            bucket = self.buckets.get(segment)
            if bucket is not None:
                bucket.discard(key)
                if not bucket:
                    del self.buckets[segment]

    def discard_many(self, keys: list[str]) -> None:
        """`discard` each key; one set operation when they share a segment (a prefix clear)."""
        if not keys:
            return
        first = keys[0]
        i = first.find(":")
        if i >= 0:
            segment = first[: i + 1]
            if all(key.startswith(segment) for key in keys):
                bucket = self.buckets.get(segment)
                if bucket is not None:
                    bucket.difference_update(keys)
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

    def clear(self) -> None:
        self.buckets.clear()


class _LFU(LFUCache[str, _Entry]):
    """LFU bookkeeping: cachetools' O(1) frequency lists (its ``get`` counts a use)."""

    evictions = 0

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.index = _SegmentIndex()

    def popitem(self) -> tuple[str, _Entry]:
        item = super().popitem()
        self.evictions += 1
        return item

    def __delitem__(self, key: str) -> None:  # pop and popitem come through here
        super().__delitem__(key)
        self.index.discard(key)

    def clear(self) -> None:
        super().clear()
        self.index.clear()

    def pop_many(self, keys: list[str]) -> list[_Entry]:
        """Remove ``keys``; return the entries that were held."""
        found = [entry for entry in (self.peek_entry(key) for key in keys) if entry is not None]
        for key in keys:
            self.pop(key, None)
        return found

    def put(self, key: str, entry: _Entry, _now: float) -> None:
        new = key not in self
        self[key] = entry
        if new:
            self.index.add(key)

    def peek_entry(self, key: str) -> _Entry | None:
        try:
            # Cache.__getitem__ skips LFUCache's frequency bookkeeping.
            entry: _Entry = Cache.__getitem__(self, key)
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
class _Ordered:
    """LRU, FIFO and TLRU bookkeeping over one ``OrderedDict``, oldest (or least recent) first.

    Entries carry their own expiry, so a read is a C-level ``OrderedDict.get`` plus, for
    the recency policies, a ``move_to_end`` (cachetools' ``TLRUCache.get`` costs about
    1.4 µs of Python-level calls for the same). ``by_expiry`` (the TTL strategy, a TLRU)
    keeps a heap of expiry times so that expired entries are dropped before any live one
    is evicted, and on every insert, as cachetools' ``TLRUCache`` does.
    """

    __slots__ = ("by_expiry", "data", "evictions", "heap", "index", "maxsize", "seq")

    def __init__(self, maxsize: int, *, by_expiry: bool) -> None:
        self.data: OrderedDict[str, _Entry] = OrderedDict()
        self.index = _SegmentIndex()
        self.maxsize = maxsize
        self.by_expiry = by_expiry
        self.evictions = 0
        # (expires, seq, key, entry); an item whose entry is no longer data[key] is dead.
        self.heap: list[tuple[float, int, str, _Entry]] = []
        self.seq = itertools.count()

    def put(self, key: str, entry: _Entry, now: float) -> None:
        data = self.data
        heap = self.heap
        if self.by_expiry and heap and heap[0][0] <= now:
            self.expire(now)
        if key in data:
            data[key] = entry
            data.move_to_end(key)  # a write is a use (LRU); FIFO re-queues an overwrite
        else:
            while len(data) >= self.maxsize:
                self.index.discard(data.popitem(last=False)[0])
                self.evictions += 1
            data[key] = entry
            self.index.add(key)
        if self.by_expiry and entry.expires != _INF:
            heapq.heappush(heap, (entry.expires, next(self.seq), key, entry))
            if len(heap) > 2 * len(data) + 64:  # dead items of overwritten / deleted keys
                self.heap = [item for item in heap if data.get(item[2]) is item[3]]
                heapq.heapify(self.heap)

    def expire(self, now: float) -> int:
        """Drop every entry expired at ``now``; return how many."""
        data = self.data
        removed = 0
        if self.by_expiry:
            heap = self.heap
            while heap and heap[0][0] <= now:
                _expires, _seq, key, entry = heapq.heappop(heap)
                if data.get(key) is entry:
                    del data[key]
                    self.index.discard(key)
                    removed += 1
            return removed
        dead = [k for k, e in data.items() if e.expires <= now]
        for key in dead:
            del data[key]
            self.index.discard(key)
        return len(dead)

    def peek_entry(self, key: str) -> _Entry | None:
        return self.data.get(key)

    def iter_keys(self) -> Iterator[str]:
        return iter(self.data)

    def pop(self, key: str, default: Any = None) -> Any:
        entry = self.data.pop(key, MISSING)
        if entry is MISSING:
            return default
        self.index.discard(key)
        return entry

    def pop_many(self, keys: list[str]) -> list[_Entry]:
        """Remove ``keys``; return the entries that were held."""
        pop = self.data.pop
        found = [entry for entry in (pop(key, None) for key in keys) if entry is not None]
        self.index.discard_many(keys)
        return found

    def clear(self) -> None:
        self.data.clear()
        self.heap.clear()
        self.index.clear()

    def __len__(self) -> int:
        return len(self.data)


_INF: Final = float("inf")


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


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

    __slots__ = (
        "_data",
        "_distrust_since",
        "_get",
        "_hits",
        "_max_stale",
        "_misses",
        "_timer",
        "_touch",
        "maxsize",
        "strategy",
        "ttl",
    )

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
        # While set, an entry is served only until max(stored, _distrust_since) + _max_stale.
        self._distrust_since: float | None = None
        self._max_stale = 0.0
        self._data: _Ordered | _LFU
        # The read path: _get finds an entry (LFU: counting a use), _touch marks it used.
        self._touch: Callable[[str], None] | None = None
        if self.strategy is CacheStrategy.LFU:
            self._data = _LFU(maxsize)
            self._get: Callable[[str], _Entry | None] = self._data.get
        else:
            ordered = _Ordered(maxsize, by_expiry=self.strategy is CacheStrategy.TTL)
            self._data = ordered
            self._get = ordered.data.get
            if self.strategy is not CacheStrategy.FIFO:
                self._touch = ordered.data.move_to_end

    def now(self) -> float:
        """The current reading of the clock that this cache's TTLs count on."""
        return self._timer()

    def _lifetime(self, ttl: float | None) -> float:
        if ttl is None:
            return float("inf") if self.ttl is None else self.ttl
        return ttl if self.ttl is None else min(ttl, self.ttl)

    def get(self, key: str, default: Any = None) -> Any:
        """Return the live value of ``key``, or ``default`` (counts a hit or a miss)."""
        entry = self._get(key)
        if entry is not None:
            now = self._timer()
            if entry.fresh > now and (
                self._distrust_since is None
                or max(entry.stored, self._distrust_since) + self._max_stale > now
            ):
                self._hits += 1
                if self._touch is not None:
                    self._touch(key)
                return entry.value
            if entry.expires <= now:
                self._data.pop(key, None)
        self._misses += 1
        return default

    def get_entry(self, key: str) -> tuple[Any, bool] | None:
        """``(value, fresh)`` of a live entry, stale ones included, or ``None``.

        Not counted in the hit/miss statistics (the caller counts what it serves).
        """
        entry = self._get(key)
        if entry is None:
            return None
        now = self._timer()
        if entry.expires <= now or (
            self._distrust_since is not None
            and max(entry.stored, self._distrust_since) + self._max_stale <= now
        ):
            self._data.pop(key, None)
            return None
        if self._touch is not None:
            self._touch(key)
        return entry.value, entry.fresh > now

    def peek(self, key: str, default: Any = None) -> Any:
        """Like `get`, but without counting or touching the eviction order."""
        entry = self._data.peek_entry(key)
        if entry is None:
            return default
        now = self._timer()
        if entry.fresh <= now or (
            self._distrust_since is not None
            and max(entry.stored, self._distrust_since) + self._max_stale <= now
        ):
            return default
        return entry.value

    def fresh_window(self, key: str) -> tuple[float, float] | None:
        """``(written at, fresh until)`` of ``key``'s entry on `now`'s clock, or ``None``.

        Not counted, the eviction order untouched: refresh-ahead's "is it due" check.
        """
        entry = self._data.peek_entry(key)
        return None if entry is None else (entry.stored, entry.fresh)

    def set(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        *,
        stale_for: float = 0.0,
        tags: tuple[str, ...] = (),
    ) -> bool:
        """Store ``value`` fresh for ``ttl`` seconds, then stale for ``stale_for`` more.

        Both are capped by the cache's ``ttl``. Stale entries are invisible to `get` and
        `peek`; `get_entry` reports them. ``tags`` are kept for `delete_tagged`.

        Raises:
            InvalidTTLError: ``ttl`` is not ``None`` or a positive number.
        """
        lifetime = self._lifetime(check_ttl(ttl))
        now = self._timer()
        expires = now + (lifetime if not stale_for else self._lifetime(lifetime + stale_for))
        self._data.put(key, _Entry(value, expires, now, now + lifetime, tags), now)
        return True

    def distrust(self, since: float, max_stale: float) -> None:
        """Serve each entry at most ``max_stale`` s after the later of ``since`` and its write.

        Used while the invalidation bus is down: invalidations may be missed, so nothing is
        served stale without bound. An earlier, still active ``since`` is kept.
        """
        if self._distrust_since is None:
            self._distrust_since = since
        self._max_stale = max_stale

    def trust(self) -> None:
        """End `distrust` (call it right after flushing, once the bus is back)."""
        self._distrust_since = None

    @property
    def distrusted(self) -> bool:
        """Whether `distrust` is in force."""
        return self._distrust_since is not None

    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether a live entry was removed."""
        entry = self._data.pop(key, None)
        return entry is not None and entry.expires > self._timer()

    def delete_pattern(self, pattern: str) -> int:
        """Remove every key matching the Redis glob ``pattern``; return how many were live."""
        match = compile_pattern(pattern)
        return self.delete_keys([k for k in self.pattern_candidates(pattern) if match(k)])

    def delete_keys(self, keys: list[str]) -> int:
        """Remove ``keys``; return how many live entries were removed."""
        now = self._timer()
        return sum(entry.expires > now for entry in self._data.pop_many(keys))

    async def delete_pattern_chunked(self, pattern: str) -> int:
        """`delete_pattern` in steps of `PATTERN_CHUNK` keys, yielding between them.

        Only the keys of the pattern's first segment are visited (``user:*``: the ``user:``
        keys, `pattern_candidates`), and a large match (half of a million entries) does not
        hold the event loop for seconds. Removing more than a concurrent write put there is
        always safe (L1 is a copy). Returns the number of entries removed.
        """
        match = compile_pattern(pattern)
        keys = self.pattern_candidates(pattern)
        removed = 0
        for start in range(0, len(keys), PATTERN_CHUNK):
            if start:
                await anyio.lowlevel.checkpoint()
            chunk = keys[start : start + PATTERN_CHUNK]
            removed += self.delete_keys([k for k in chunk if match(k)])
        return removed

    def pattern_candidates(self, pattern: str) -> list[str]:
        """A snapshot of the keys ``pattern`` may match: the bucket of its first segment
        when its literal head has one (``user:*``), else every key."""
        found = self._data.index.candidates(pattern)
        return list(self._data.iter_keys()) if found is None else found

    def set_stale(
        self, key: str, value: Any, stale_for: float, *, tags: tuple[str, ...] = ()
    ) -> None:
        """Store an entry that is already stale, for ``stale_for`` seconds (capped)."""
        now = self._timer()
        self._data.put(key, _Entry(value, now + self._lifetime(stale_for), now, now, tags), now)

    def tagged(self, keys: Iterable[str], tags: frozenset[str]) -> list[str]:
        """Those of ``keys`` whose entries carry any of ``tags``."""
        found = []
        for key in keys:
            entry = self._data.peek_entry(key)
            if entry is None:
                continue
            if entry.tags and not tags.isdisjoint(entry.tags):
                found.append(key)
        return found

    def delete_tagged(self, tags: Iterable[str]) -> int:
        """Remove every entry carrying any of ``tags``; return how many."""
        doomed = self.tagged(self.keys(), frozenset(tags))
        for key in doomed:
            self._data.pop(key, None)
        return len(doomed)

    def clear(self) -> bool:
        """Remove every entry; always True."""
        self._data.clear()
        return True

    def expire(self) -> int:
        """Drop every expired entry now (they are otherwise dropped lazily); return how many."""
        return self._data.expire(self._timer())

    def keys(self) -> Iterator[str]:
        """Iterate over a snapshot of the keys held (expired ones may still be listed)."""
        return iter(list(self._data.iter_keys()))

    def __len__(self) -> int:
        if self.strategy is CacheStrategy.TTL:
            self._data.expire(self._timer())  # as cachetools' TLRUCache counted live entries
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.peek(key, MISSING) is not MISSING

    @property
    def hits(self) -> int:
        """Lookups answered (`get` only)."""
        return self._hits

    def memory_estimate(self, sample: int = MEMORY_SAMPLE) -> int:
        """Approximate bytes held, from ``sys.getsizeof`` of up to ``sample`` entries.

        The mean size of the sampled entries (key, entry record and value with its nested
        dicts and lists, up to a budget of objects each) plus a fixed bookkeeping cost is
        multiplied by the number of entries: bounded cost whatever the size, and values
        are shared, not copied, so it may over-count objects referenced twice.
        """
        count = len(self._data)
        if not count:
            return 0
        total = 0
        measured = 0
        for key in itertools.islice(self._data.iter_keys(), sample):
            entry = self._data.peek_entry(key)
            if entry is None:  # pragma: no cover - single-threaded
                continue
            total += (
                sys.getsizeof(key)
                + sys.getsizeof(entry)
                + _approx_size(entry.value, [_SIZE_BUDGET])
                + _ENTRY_OVERHEAD
            )
            measured += 1
        return round(total / measured * count) if measured else 0

    def get_stats(self) -> L1Stats:
        """Hits, misses, hit rate, size, capacity, evictions, policy and a memory estimate."""
        total = self._hits + self._misses
        return {
            "hits": self._hits,
            "misses": self._misses,
            "hit_rate": self._hits / total if total else 0.0,
            "size": len(self),
            "maxsize": self.maxsize,
            "evictions": self._data.evictions,
            "strategy": self.strategy.value,
            "memory_bytes": self.memory_estimate(),
        }


# -- the L1 actor ------------------------------------------------------------------------

PATTERN_CHUNK: Final = 512
"""Keys matched per step of a pattern clear before yielding to the event loop."""


@final
class InvalidateKeys:
    """Mailbox command: drop these keys."""

    __slots__ = ("keys",)

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys


@final
class InvalidatePattern:
    """Mailbox command: drop keys matching a Redis glob pattern."""

    __slots__ = ("pattern",)

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern


@final
class InvalidateTags:
    """Mailbox command: drop entries carrying any of these tags."""

    __slots__ = ("tags",)

    def __init__(self, tags: tuple[str, ...]) -> None:
        self.tags = tags


@final
class FlushAll:
    """Mailbox command: drop everything."""

    __slots__ = ()


L1Command: TypeAlias = InvalidateKeys | InvalidatePattern | InvalidateTags | FlushAll


class L1Owner(Protocol):
    """What the actor drives: the owner of the L1 and of the in-flight fills."""

    @property
    def l1(self) -> InMemoryCache: ...

    def invalidate_local(self, key: str) -> None: ...

    def invalidate_local_all(self) -> None: ...

    def stale_fills_matching(self, pattern: str) -> None: ...

    def invalidate_local_tags(self, tags: Iterable[str]) -> int: ...


class ActorStats(TypedDict):
    """Figures of the L1 actor's mailbox."""

    queued: int
    capacity: int
    applied: int
    overflows: int


@final
class L1Actor:
    """Applies remote invalidations to the L1 in arrival order, from a bounded mailbox.

    Reads never go through the mailbox: they are served from the L1 directly on the same
    event loop. `submit` never blocks and never loses an invalidation: when the mailbox is
    full it flushes the whole L1 at once (and counts an overflow), which covers every
    command still queued. A pattern clear over a large L1 matches keys in chunks of
    `PATTERN_CHUNK` and yields to the event loop between chunks; in-flight fills that
    match are made stale before the first chunk.
    """

    def __init__(self, owner: L1Owner, *, mailbox_size: int, logger: Any = None) -> None:
        self._owner = owner
        self.log: Any = logger if logger is not None else log
        """Where `submit` reports overflows (the manager binds its namespace and origin)."""
        self._capacity = mailbox_size
        # Created by the first run() and kept across restarts, so queued commands survive.
        self._send: MemoryObjectSendStream[L1Command] | None = None
        self._receive: MemoryObjectReceiveStream[L1Command] | None = None
        self._runs = 0
        self._alive = False
        self._applied = 0
        self._overflows = 0

    def submit(self, command: L1Command) -> None:
        """Queue ``command``; on a full mailbox (or none yet), flush L1 now instead."""
        try:
            if self._send is None or not self._alive:
                # Nobody would apply it (not started, restarting or given up): flush now.
                raise anyio.WouldBlock
            self._send.send_nowait(command)
        except (anyio.WouldBlock, anyio.ClosedResourceError):
            self._overflows += 1
            self._owner.invalidate_local_all()
            self.log.warning("l1_mailbox_overflow", capacity=self._capacity)

    def stats(self) -> ActorStats:
        """Queue length, capacity, commands applied and overflows."""
        return {
            "queued": 0 if self._send is None else self._send.statistics().current_buffer_used,
            "capacity": self._capacity,
            "applied": self._applied,
            "overflows": self._overflows,
        }

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Apply queued commands forever, in order.

        Error handling: an exception while applying a command propagates to the
        supervisor, which restarts this loop; queued commands stay in the mailbox, and a
        restarted loop first flushes L1, since the command that failed may be lost.
        """
        if self._send is None or self._receive is None:
            self._send, self._receive = anyio.create_memory_object_stream[L1Command](self._capacity)
        self._runs += 1
        if self._runs > 1:
            self._owner.invalidate_local_all()
        self._alive = True
        task_status.started()
        try:
            await self._apply_forever(self._receive)
        finally:
            self._alive = False

    async def _apply_forever(self, receive: MemoryObjectReceiveStream[L1Command]) -> None:
        async for command in receive:
            if isinstance(command, InvalidateKeys):
                for key in command.keys:
                    self._owner.invalidate_local(key)
            elif isinstance(command, InvalidatePattern):
                await self._clear_pattern(command.pattern)
            elif isinstance(command, InvalidateTags):
                self._owner.invalidate_local_tags(command.tags)
            else:
                self._owner.invalidate_local_all()
            self._applied += 1

    async def _clear_pattern(self, pattern: str) -> None:
        self._owner.stale_fills_matching(pattern)
        await self._owner.l1.delete_pattern_chunked(pattern)

    async def aclose(self) -> None:
        """Close the mailbox; later commands flush L1 directly."""
        if self._send is not None and self._receive is not None:
            await self._send.aclose()
            await self._receive.aclose()
