"""W-TinyLFU for the L1: a window LRU, a segmented main LRU and a count-min sketch.

New entries enter a small window LRU (1 % of the capacity). The window's least recent
entry, when the window is full, is a candidate for the main space, a segmented LRU
(probation, then protected: 80 % of the main space): it is admitted only if the sketch
estimates it was used more often than the main space's victim (probation's least recent
entry), else it is evicted. So a one-time scan passes through the window without flushing
the hot set, and recency still gets its chance in the window (Einziger, Friedman, Manes,
"TinyLFU: A Highly Efficient Cache Admission Policy", 2017; Caffeine).

The window's size adapts, as Caffeine's does: every ``10 * capacity`` accesses a hill
climber compares the hit ratio with the previous sample's and keeps moving the window's
size in the same direction while it improves, reversing otherwise, with a decaying step
(a recency-heavy trace such as OLTP grows the window, a frequency-heavy one shrinks it).

Reads are cheap: a hit appends its key to a bounded read buffer (a C-level
``deque.append``); the buffer is drained before each write and when the cache is
inspected, applying the sketch increments and the LRU moves in one loop. When the buffer
is full the oldest reads are dropped, as in Caffeine: a lossy record of recency among
hits only, never of correctness.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Any, Final, final

from ._l1store import ENTRY_COST, Entry, SegmentIndex

__all__ = ["READ_BUFFER", "FrequencySketch", "TinyLFUStore"]

READ_BUFFER: Final = 2048
"""Reads recorded between two drains; older reads are dropped beyond it."""
WINDOW_SHARE: Final = 0.01
"""The window's initial share of the capacity (the hill climber moves it)."""
PROTECTED_SHARE: Final = 0.8
CLIMB_STEP: Final = 0.0625
"""First step of the hill climber, as a share of the capacity."""
CLIMB_DECAY: Final = 0.98
CLIMB_RESTART: Final = 0.05
"""A change of the hit ratio this large restarts the climb with a full step."""
_M64: Final = (1 << 64) - 1
_SPREAD: Final = 0x9E3779B97F4A7C15
_HALVE: Final = bytes(i >> 1 for i in range(256))


@final
class FrequencySketch:
    """A count-min sketch of 4 rows of 4-bit-capped counters (one byte each), aged by
    halving every counter after ``10 * capacity`` increments (the "reset" of TinyLFU)."""

    __slots__ = ("additions", "mask", "sample", "table", "width")

    def __init__(self, capacity: int) -> None:
        self.width = 4 << max(4, (max(capacity, 1) - 1).bit_length())
        self.mask = self.width - 1
        self.table = bytearray(4 * self.width)
        self.sample = 10 * max(capacity, 1)
        self.additions = 0

    def _slots(self, key: str) -> tuple[int, int, int, int]:
        h = hash(key) & _M64
        step = (((h * _SPREAD) & _M64) >> 29) | 1
        mask, width = self.mask, self.width
        return (
            h & mask,
            width + ((h + step) & mask),
            2 * width + ((h + 2 * step) & mask),
            3 * width + ((h + 3 * step) & mask),
        )

    def frequency(self, key: str) -> int:
        """The estimated number of recent uses of ``key`` (0 to 15)."""
        table = self.table
        a, b, c, d = self._slots(key)
        return min(table[a], table[b], table[c], table[d])

    def increment(self, key: str) -> None:
        """Count one use of ``key`` (conservative update: only the smallest counters)."""
        table = self.table
        a, b, c, d = self._slots(key)
        low = min(table[a], table[b], table[c], table[d])
        if low < 15:
            for slot in (a, b, c, d):
                if table[slot] == low:
                    table[slot] = low + 1
            self.additions += 1
            if self.additions >= self.sample:
                self.table = bytearray(self.table.translate(_HALVE))
                self.additions //= 2

    def clear(self) -> None:
        self.table = bytearray(4 * self.width)
        self.additions = 0


@final
class TinyLFUStore:
    """The W-TinyLFU store: ``data`` maps keys to entries; ``window``, ``probation`` and
    ``protected`` order the keys of each segment, least recent first."""

    __slots__ = (
        "bytes",
        "data",
        "evictions",
        "hit_ratio",
        "index",
        "main_max",
        "max_bytes",
        "maxsize",
        "probation",
        "protected",
        "protected_max",
        "reads",
        "sample_hits",
        "sample_misses",
        "sample_size",
        "size_evictions",
        "sketch",
        "step",
        "window",
        "window_max",
    )

    def __init__(self, maxsize: int, max_bytes: int | None = None) -> None:
        # Under a byte bound, at most max_bytes / ENTRY_COST entries fit: size the segments,
        # the sketch and the climber's sample for that many.
        capacity = maxsize if max_bytes is None else min(maxsize, max_bytes // ENTRY_COST + 1)
        self.data: dict[str, Entry] = {}
        self.window: OrderedDict[str, None] = OrderedDict()
        self.probation: OrderedDict[str, None] = OrderedDict()
        self.protected: OrderedDict[str, None] = OrderedDict()
        self.index = SegmentIndex()
        self.sketch = FrequencySketch(capacity)
        self.reads: deque[str] = deque(maxlen=READ_BUFFER)
        self.maxsize = capacity
        self.window_max = max(1, round(capacity * WINDOW_SHARE))
        self.main_max = capacity - self.window_max
        self.protected_max = int(self.main_max * PROTECTED_SHARE)
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self.size_evictions = 0
        self.sample_hits = 0
        self.sample_misses = 0
        self.sample_size = 10 * capacity
        self.hit_ratio = 0.0
        self.step = -CLIMB_STEP * capacity  # first move: shrink the window (Caffeine's too)

    # -- the read buffer ---------------------------------------------------------------

    def drain(self) -> None:
        """Apply the recorded reads: count each in the sketch and move it up its segment."""
        reads = self.reads
        if not reads:
            return
        keys = list(reads)
        reads.clear()
        self.sample_hits += len(keys)
        increment = self.sketch.increment
        window, probation, protected = self.window, self.probation, self.protected
        for key in keys:
            increment(key)
            if key in window:
                window.move_to_end(key)
            elif key in probation:
                del probation[key]
                protected[key] = None
                if len(protected) > self.protected_max:
                    probation[protected.popitem(last=False)[0]] = None
            elif key in protected:
                protected.move_to_end(key)

    # -- writes --------------------------------------------------------------------------

    def put(self, key: str, entry: Entry, _now: float) -> None:
        self.drain()
        data = self.data
        self.sketch.increment(key)
        old = data.get(key)
        data[key] = entry
        self.bytes += entry.size
        if old is not None:
            self.bytes -= old.size
            self.reads.append(key)  # an overwrite is a use: moved up at the next drain
        else:
            self.window[key] = None
            self.index.add(key)
            self.sample_misses += 1
            if len(self.window) > self.window_max:
                self._admit_from_window()
            if self.sample_hits + self.sample_misses >= self.sample_size:
                self._climb()  # moves entries between segments, never changes the total
        if self.max_bytes is not None:
            while self.bytes > self.max_bytes:
                self._remove(self._victim())
                self.size_evictions += 1

    def _climb(self) -> None:
        """Move the window's size by the hill climber's step (see the module's doc)."""
        ratio = self.sample_hits / (self.sample_hits + self.sample_misses)
        change = ratio - self.hit_ratio
        amount = self.step if change >= 0 else -self.step
        if abs(change) >= CLIMB_RESTART:
            self.step = CLIMB_STEP * self.maxsize * (1 if amount >= 0 else -1)
        else:
            self.step = CLIMB_DECAY * amount
        self.hit_ratio = ratio
        self.sample_hits = self.sample_misses = 0
        quota = int(amount)
        if quota > 0:  # grow the window: main's least recent entries move into it
            quota = min(quota, self.main_max - 1)
            self.window_max += quota
            self.main_max -= quota
            self.protected_max = int(self.main_max * PROTECTED_SHARE)
            window, probation, protected = self.window, self.probation, self.protected
            while len(protected) > self.protected_max:
                probation[protected.popitem(last=False)[0]] = None
            for _ in range(quota):
                if len(window) >= self.window_max or not (probation or protected):
                    break
                window[(probation or protected).popitem(last=False)[0]] = None
        elif quota < 0:  # shrink it: the window's least recent entries move to probation
            quota = min(-quota, self.window_max - 1)
            self.window_max -= quota
            self.main_max += quota
            self.protected_max = int(self.main_max * PROTECTED_SHARE)
            window, probation = self.window, self.probation
            while len(window) > self.window_max:
                probation[window.popitem(last=False)[0]] = None

    def _victim(self) -> str:
        """The key evicted first: probation's, then protected's, then the window's LRU."""
        for segment in (self.probation, self.protected, self.window):
            if segment:
                return next(iter(segment))
        raise KeyError("empty")  # pragma: no cover - only called while bytes > 0

    def _admit_from_window(self) -> None:
        window, probation, protected = self.window, self.probation, self.protected
        frequency = self.sketch.frequency
        while len(window) > self.window_max:
            candidate = window.popitem(last=False)[0]
            if len(probation) + len(protected) < self.main_max:
                probation[candidate] = None
                continue
            if not self.main_max:
                self._forget(candidate)
                self.evictions += 1
                continue
            victim = next(iter(probation or protected))
            if frequency(candidate) > frequency(victim):
                self._remove(victim)
                probation[candidate] = None
            else:
                self._forget(candidate)
            self.evictions += 1

    def _forget(self, key: str) -> None:
        """Drop ``key`` from ``data`` and the index (already out of its segment)."""
        entry = self.data.pop(key)
        self.bytes -= entry.size
        self.index.discard(key)

    def _remove(self, key: str) -> Entry:
        if key in self.window:
            del self.window[key]
        elif key in self.probation:
            del self.probation[key]
        else:
            del self.protected[key]
        entry = self.data.pop(key)
        self.bytes -= entry.size
        self.index.discard(key)
        return entry

    # -- the store interface -------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Drop every entry expired at ``now``; return how many."""
        dead = [k for k, e in self.data.items() if e.expires <= now]
        for key in dead:
            self._remove(key)
        return len(dead)

    def peek_entry(self, key: str) -> Entry | None:
        return self.data.get(key)

    def iter_keys(self) -> Iterator[str]:
        return iter(self.data)

    def pop(self, key: str, default: Any = None) -> Any:
        if key not in self.data:
            return default
        return self._remove(key)

    def pop_many(self, keys: list[str]) -> list[Entry]:
        """Remove ``keys``; return the entries that were held."""
        data = self.data
        return [self._remove(key) for key in keys if key in data]

    def clear(self) -> None:
        self.data.clear()
        self.window.clear()
        self.probation.clear()
        self.protected.clear()
        self.index.clear()
        self.reads.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.data)
