"""InMemoryCache, the per-instance L1 (OrderedDict stores, cachetools LFU), and the L1 actor."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias, TypedDict, final

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from ._l1store import (
    ENTRY_COST,
    INF,
    SIZE_BUDGET,
    Entry,
    LFUStore,
    OrderedStore,
    approx_size,
    entry_cost,
)
from ._log import Logger, get_logger
from ._tinylfu import TinyLFUStore
from .config import CacheConfig, CacheStrategy
from .keys import compile_pattern
from .types import MISSING, check_ttl

if TYPE_CHECKING:  # loaded by anyio itself when the actor's mailbox is made
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

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

log = get_logger()


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
    """With a byte bound, the accounted bytes (never above ``memory_max_bytes``); without
    one, an estimate from a sample of entries (see `InMemoryCache.memory_estimate`)."""
    memory_max_bytes: int | None
    """The byte bound (``memory_cache_max_bytes``), or ``None``."""
    size_evictions: int
    """Entries evicted to stay under the byte bound (not counted in ``evictions``)."""
    oversize_skipped: int
    """Writes not kept in L1: the entry was larger than 1/`OVERSIZE_FRACTION` of the bound."""


MEMORY_SAMPLE: Final = 32
"""Entries measured by `InMemoryCache.memory_estimate`."""
OVERSIZE_FRACTION: Final = 8
"""Under a byte bound, an entry accounted above ``max_bytes / 8`` is not kept in L1."""


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@final
class InMemoryCache:
    """A bounded in-process cache with one of five eviction policies.

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
        max_bytes: also keep the accounted bytes of the entries (`entry_cost`: key, encoded
            value and `ENTRY_COST`) at most this; an entry above ``max_bytes /
            OVERSIZE_FRACTION`` is not kept. ``None``: bounded by count only.
    """

    __slots__ = (
        "_data",
        "_distrust_since",
        "_get",
        "_hits",
        "_max_stale",
        "_misses",
        "_oversize",
        "_timer",
        "_touch",
        "max_bytes",
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
        max_bytes: int | None = None,
    ) -> None:
        if not _is_positive_int(maxsize):
            raise ValueError(f"maxsize must be a positive int, got {maxsize!r}")
        if max_bytes is not None and not _is_positive_int(max_bytes):
            raise ValueError(f"max_bytes must be a positive int or None, got {max_bytes!r}")
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._oversize = 0
        self.ttl = check_ttl(ttl)
        self.strategy = CacheStrategy(strategy)
        self._timer = timer
        self._hits = 0
        self._misses = 0
        # While set, an entry is served only until max(stored, _distrust_since) + _max_stale.
        self._distrust_since: float | None = None
        self._max_stale = 0.0
        self._data: OrderedStore | LFUStore | TinyLFUStore
        # The read path: _get finds an entry (LFU: counting a use), _touch marks it used
        # (TINYLFU: records the read in its buffer).
        self._touch: Callable[[str], None] | None = None
        if self.strategy is CacheStrategy.LFU:
            self._data = LFUStore(maxsize, max_bytes)
            self._get: Callable[[str], Entry | None] = self._data.get
        elif self.strategy is CacheStrategy.TINYLFU:
            tiny = self._data = TinyLFUStore(maxsize, max_bytes)
            self._get = tiny.data.get
            self._touch = tiny.reads.append
        else:
            by_expiry = self.strategy is CacheStrategy.TTL
            ordered = OrderedStore(maxsize, by_expiry=by_expiry, max_bytes=max_bytes)
            self._data = ordered
            self._get = ordered.data.get
            if self.strategy is not CacheStrategy.FIFO:
                self._touch = ordered.data.move_to_end

    @classmethod
    def from_config(
        cls, config: CacheConfig, *, timer: Callable[[], float] = time.monotonic
    ) -> InMemoryCache:
        """The L1 ``config`` describes (``memory_cache_*`` fields)."""
        return cls(
            config.memory_cache_size,
            config.memory_cache_ttl,
            config.memory_cache_strategy,
            timer=timer,
            max_bytes=config.memory_cache_max_bytes,
        )

    def now(self) -> float:
        """The current reading of the clock that this cache's TTLs count on."""
        return self._timer()

    def _lifetime(self, ttl: float | None) -> float:
        if ttl is None:
            return INF if self.ttl is None else self.ttl
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
        size: int | None = None,
    ) -> bool:
        """Store ``value`` fresh for ``ttl`` seconds, then stale for ``stale_for`` more.

        Both are capped by the cache's ``ttl``. Stale entries are invisible to `get` and
        `peek`; `get_entry` reports them. ``tags`` are kept for `delete_tagged`. ``size``:
        the value's encoded (uncompressed) length when known, for the byte bound.

        Returns:
            Whether the entry is kept (False: above the byte bound's oversize limit; any
            previous entry of ``key`` is dropped).

        Raises:
            InvalidTTLError: ``ttl`` is not ``None`` or a positive number.
        """
        lifetime = self._lifetime(check_ttl(ttl))
        now = self._timer()
        fresh = now + lifetime
        expires = fresh if not stale_for else now + self._lifetime(lifetime + stale_for)
        return self._put(key, value, expires, now, fresh, tags, size)

    def _put(
        self,
        key: str,
        value: Any,
        expires: float,
        now: float,
        fresh: float,
        tags: tuple[str, ...],
        size: int | None,
    ) -> bool:
        cost = 0
        if self.max_bytes is not None:
            cost = entry_cost(key, value, size)
            if cost * OVERSIZE_FRACTION > self.max_bytes:
                self._oversize += 1
                self._data.pop(key, None)
                return False
        self._data.put(key, Entry(value, expires, now, fresh, tags, cost), now)
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

    def pattern_candidate_count(self, pattern: str) -> int:
        """How many keys `pattern_candidates` would return (cheap: no copy)."""
        found = self._data.index.candidate_count(pattern)
        return len(self._data) if found is None else found

    def pattern_candidates(self, pattern: str) -> list[str]:
        """A snapshot of the keys ``pattern`` may match: the bucket of its first segment
        when its literal head has one (``user:*``), else every key."""
        found = self._data.index.candidates(pattern)
        return list(self._data.iter_keys()) if found is None else found

    def set_stale(
        self,
        key: str,
        value: Any,
        stale_for: float,
        *,
        tags: tuple[str, ...] = (),
        size: int | None = None,
    ) -> None:
        """Store an entry that is already stale, for ``stale_for`` seconds (capped)."""
        now = self._timer()
        self._put(key, value, now + self._lifetime(stale_for), now, now, tags, size)

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
                + approx_size(entry.value, [SIZE_BUDGET])
                + ENTRY_COST
            )
            measured += 1
        return round(total / measured * count) if measured else 0

    def get_stats(self) -> L1Stats:
        """Hits, misses, hit rate, size, capacity, evictions, policy, bytes and the bound."""
        total = self._hits + self._misses
        return {
            "hits": self._hits,
            "misses": self._misses,
            "hit_rate": self._hits / total if total else 0.0,
            "size": len(self),
            "maxsize": self.maxsize,
            "evictions": self._data.evictions,
            "strategy": self.strategy.value,
            "memory_bytes": (
                self.memory_estimate() if self.max_bytes is None else self._data.bytes
            ),
            "memory_max_bytes": self.max_bytes,
            "size_evictions": self._data.size_evictions,
            "oversize_skipped": self._oversize,
        }


# -- the L1 actor ------------------------------------------------------------------------

PATTERN_CHUNK: Final = 512
"""Keys matched per step of a pattern clear before yielding to the event loop."""

INLINE_MAX_KEYS: Final = 16
"""Most keys an `InvalidateKeys` may carry to be applied inline by `L1Actor.submit`."""


@final
class InvalidateKeys:
    """Mailbox command: drop these keys; ``tally``, if given, gets how many were live."""

    __slots__ = ("keys", "tally")

    def __init__(self, keys: tuple[str, ...], tally: Callable[[int], None] | None = None) -> None:
        self.keys = keys
        self.tally = tally


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

    def invalidate_local(self, key: str) -> bool | None: ...

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

    Fast path: when the actor is idle (every command submitted so far is fully applied,
    none queued, none handed to the loop, no chunked clear in progress), a cheap command
    (`InvalidateKeys` with at most `INLINE_MAX_KEYS` keys, an `InvalidatePattern` whose
    candidates, the keys of its first segment, are at most `INLINE_MAX_KEYS`, `FlushAll`)
    is applied inside `submit`, synchronously, exactly as the loop would apply it (a
    pattern that small is one chunk there too); order is kept because nothing submitted
    earlier is still pending.
    """

    def __init__(self, owner: L1Owner, *, mailbox_size: int, logger: Logger | None = None) -> None:
        self._owner = owner
        self.log: Logger = logger if logger is not None else log
        """Where `submit` reports overflows (the manager binds its namespace and origin)."""
        self._capacity = mailbox_size
        # Created by the first run() and kept across restarts, so queued commands survive.
        self._send: MemoryObjectSendStream[L1Command] | None = None
        self._receive: MemoryObjectReceiveStream[L1Command] | None = None
        self._runs = 0
        self._alive = False
        self._applied = 0
        self._overflows = 0
        self._pending = 0
        """Commands sent to the mailbox and not yet fully applied (queued or in progress)."""
        self._closed = False
        self.inline = 0
        """Commands applied inline by `submit` (the fast path), included in ``applied``."""

    def submit(self, command: L1Command) -> None:
        """Apply ``command`` now if the actor is idle and it is cheap, else queue it; on a
        full mailbox (or none yet), flush L1 now instead."""
        try:
            if self._send is None or not self._alive or self._closed:
                # Nobody would apply it (not started, restarting or given up): flush now.
                raise anyio.WouldBlock
            if self._pending == 0 and self._cheap(command):
                self._apply_inline(command)
                return
            self._send.send_nowait(command)
            self._pending += 1
        except (anyio.WouldBlock, anyio.ClosedResourceError):
            self._overflows += 1
            self._owner.invalidate_local_all()
            self.log.warning("l1_mailbox_overflow", capacity=self._capacity)

    def _apply_inline(self, command: L1Command) -> None:
        try:
            self._apply_now(command)
        except Exception:
            # As when the loop fails on a command: the drop may be lost, so flush L1.
            self.log.exception("l1_inline_apply_failed")
            self._owner.invalidate_local_all()
            return
        self.inline += 1
        self._applied += 1

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
        # Nothing is in progress now: what is pending is what is queued.
        self._pending = self._send.statistics().current_buffer_used
        self._alive = True
        task_status.started()
        try:
            await self._apply_forever(self._receive)
        finally:
            self._alive = False

    async def _apply_forever(self, receive: MemoryObjectReceiveStream[L1Command]) -> None:
        async for command in receive:
            try:
                if isinstance(command, InvalidatePattern):
                    await self._clear_pattern(command.pattern)
                else:
                    self._apply_now(command)
            finally:
                self._pending -= 1
            self._applied += 1

    def _cheap(self, command: L1Command) -> bool:
        """Whether `submit` may apply ``command`` inline: a few keys, a pattern with a few
        candidates, or a flush."""
        if isinstance(command, InvalidateKeys):
            return len(command.keys) <= INLINE_MAX_KEYS
        if isinstance(command, InvalidatePattern):
            return self._owner.l1.pattern_candidate_count(command.pattern) <= INLINE_MAX_KEYS
        return isinstance(command, FlushAll)

    def _apply_now(self, command: L1Command) -> None:
        """Apply a command that needs no await (a pattern: only a small one, see `_cheap`)."""
        if isinstance(command, InvalidateKeys):
            if command.tally is None:
                for key in command.keys:
                    self._owner.invalidate_local(key)
            else:
                command.tally(sum(bool(self._owner.invalidate_local(k)) for k in command.keys))
        elif isinstance(command, InvalidateTags):
            self._owner.invalidate_local_tags(command.tags)
        elif isinstance(command, FlushAll):
            self._owner.invalidate_local_all()
        elif isinstance(command, InvalidatePattern):
            self._owner.stale_fills_matching(command.pattern)
            self._owner.l1.delete_pattern(command.pattern)
        else:
            raise TypeError(f"not an inline command: {command!r}")

    async def _clear_pattern(self, pattern: str) -> None:
        self._owner.stale_fills_matching(pattern)
        await self._owner.l1.delete_pattern_chunked(pattern)

    async def aclose(self) -> None:
        """Close the mailbox; later commands flush L1 directly."""
        self._closed = True
        if self._send is not None and self._receive is not None:
            await self._send.aclose()
            await self._receive.aclose()
