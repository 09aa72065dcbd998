"""MultiTierCache: read-through from L1 to L2, tier routing and the fill-race guard."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final, TypedDict, final

import anyio.lowlevel

from . import _telemetry
from ._flight import FillToken, Flight
from ._typed import Decoder, TypeMismatch, copy_value
from .bus import BusMessage
from .config import CacheTier
from .errors import BackendError, SerializationError
from .keys import compile_pattern, validate_key, validate_pattern, validate_tags
from .l1 import InMemoryCache, L1Stats
from .l2 import L2Stats, RedisCache
from .serializer import CacheSerializer, StoredEntry, now_ms
from .types import MISSING, TTL, USE_DEFAULT, check_ttl

__all__ = ["MultiTierCache", "TierStats"]

L2_CLOCK_MARGIN: Final = 0.99
"""An L1 copy of an L2 entry lives at most this fraction of the entry's remaining TTL.

Redis expires keys on its wall clock, L1 on this process's monotonic clock. A wall clock
that runs fast (slewed by NTP, or a VM's: 0.5 % faster than the monotonic clock was
measured on the 2-core test machine) expires the L2 entry before an L1 copy with the
same TTL, and an expiry publishes nothing: 1 % keeps the copy inside the entry's life."""
L1_LATENCY_SAMPLE: Final = 64
"""`peek` times one L1 lookup in 64 (when the hit count is a multiple of 64): timing every
one (two clock reads and a bucket increment) would add about a tenth to an L1 hit."""


class TierStats(TypedDict):
    """The seed's statistics shape: one block per tier and the totals."""

    l1_cache: L1Stats
    l2_cache: L2Stats
    total_hits: int
    total_misses: int
    total_sets: int
    total_deletes: int
    l2_enabled: bool
    namespace: str


@final
class MultiTierCache:
    """Route operations to the L1, the L2 or both, keeping the L1 from going stale.

    A read of `CacheTier.BOTH` that misses L1 reads the value and its remaining TTL from
    L2 in one round trip and copies it into L1 for at most that long. If the key is
    invalidated (set, deleted, matched by a pattern clear, or cleared) while that L2 read
    is in flight, the value read is still returned to its caller but is not installed in
    L1: this is the classic client-side-caching race, closed by `invalidate_local`.

    Writes encode the value once, before touching any tier, so a value that cannot be
    encoded raises and changes nothing. L1 receives the decoded form of what L2 receives,
    so every tier and every instance return the same value (JSON types).

    Args:
        l1: the memory tier of this instance.
        l2: the Redis tier, or ``None`` to run on L1 alone.
        serializer: the codec shared with ``l2``.
        default_ttl: TTL of writes made with `USE_DEFAULT`.
        namespace: reported in the stats.
        origin: this instance's origin id, written into the bus messages it publishes.
        publish: PUBLISH an invalidation after every L2 write, delete and clear, so other
            instances drop their L1 copies.
        unconfirmed_write_ttl: when a write reached L1 but its L2 write failed, keep the
            L1 entry at most this long (``None``: its normal TTL).
    """

    def __init__(
        self,
        l1: InMemoryCache,
        l2: RedisCache | None,
        *,
        serializer: CacheSerializer,
        default_ttl: float | None,
        namespace: str = "cache",
        origin: str | None = None,
        publish: bool = False,
        unconfirmed_write_ttl: float | None = None,
        copy_on_read: bool = False,
    ) -> None:
        self.l1 = l1
        self.copy_on_read = copy_on_read
        """Return a deep copy of every value read from L1 (``l1_copy_on_read``)."""
        self.type_mismatches = 0
        """L2 values that did not validate against a declared type (served as misses)."""
        self.unconfirmed_write_ttl = unconfirmed_write_ttl
        self.l2 = l2
        self.origin = origin
        self.publish = publish and l2 is not None
        self.serializer = serializer
        self.default_ttl = default_ttl
        self.namespace = namespace
        self._fills: dict[str, list[FillToken]] = {}
        # L2 read-throughs in flight, shared by concurrent misses of one key.
        self._reads: dict[str, Flight] = {}
        self.l1_latency = _telemetry.LatencyHistogram()
        """Durations of L1 lookups by `peek` (one in 64 is timed, `L1_LATENCY_SAMPLE`)."""
        self._hits = 0
        self._misses = 0
        self._sets = 0
        self._deletes = 0

    # -- invalidation of in-flight fills ---------------------------------------------------

    def invalidate_local(self, key: str, *, keep: FillToken | None = None) -> bool:
        """Drop ``key`` from L1 and stop any L2 read in flight from installing it; return
        whether L1 held a live entry.

        ``keep`` is the caller's own fill token (a load storing its result), which its own
        write must not make stale.
        """
        dropped = self.l1.delete(key)
        self._stale_fills_of(key, keep)
        return dropped

    def _stale_fills_of(self, key: str, keep: FillToken | None = None) -> None:
        fills = self._fills.get(key)
        if fills:
            for fill in fills:
                if fill is not keep:
                    fill.stale = True

    def invalidate_local_pattern(self, pattern: str) -> int:
        """Drop L1 keys matching ``pattern`` and make matching in-flight fills stale."""
        self.stale_fills_matching(pattern)
        return self.l1.delete_pattern(pattern)

    async def _clear_local_pattern(self, pattern: str) -> int:
        """Drop L1 keys matching ``pattern`` in chunks (`InMemoryCache.delete_pattern_chunked`)
        and make matching in-flight fills stale; fills that raced with the clear are dropped
        by the pass made after L2 was cleared.
        """
        self.stale_fills_matching(pattern)
        return await self.l1.delete_pattern_chunked(pattern)

    def stale_fills_matching(self, pattern: str) -> None:
        """Make every in-flight fill of a key matching ``pattern`` stale."""
        if self._fills:
            match = compile_pattern(pattern)
            for key, fills in self._fills.items():
                if match(key):
                    for fill in fills:
                        fill.stale = True

    def invalidate_local_all(self) -> None:
        """Empty L1 and make every in-flight fill stale."""
        self.l1.clear()
        for fills in self._fills.values():
            for fill in fills:
                fill.stale = True

    # -- reads: two entrances, `peek` (the hot path) and `read` ----------------------------

    def peek(self, key: str) -> Any:
        """The fresh L1 value of ``key``, counted as a hit, or `MISSING` (not counted yet).

        The hot path of ``get``, ``get_or_set`` and decorated calls: no coroutine, no
        validation before the lookup. Only valid keys are ever stored, so an invalid key
        cannot hit; the caller validates it before `read` (an unhashable one raises here).
        """
        try:
            if self._hits & 63:  # L1_LATENCY_SAMPLE - 1, literal: this is the hot path
                value = self.l1.get(key, MISSING)
            else:
                started = time.perf_counter_ns()
                value = self.l1.get(key, MISSING)
                self.l1_latency.record(time.perf_counter_ns() - started)
        except TypeError:  # an unhashable key
            validate_key(key)
            raise
        if value is not MISSING:
            self._hits += 1
            if self.copy_on_read:
                return copy_value(value)
        return value

    async def read(
        self,
        key: str,
        tier: CacheTier = CacheTier.BOTH,
        *,
        allow_stale: bool = False,
        decode: Decoder | None = None,
    ) -> tuple[Any, bool] | None:
        """``(value, fresh)`` of ``key`` after `peek` missed (or, for ``tier=L2``, instead of
        it), or ``None``; counted in the totals (a fresh value is a hit, anything else a miss).

        ``key`` must be valid (checked by the caller, at the public boundary).

        - ``allow_stale=False`` (``get``): L1 held no fresh value, so only L2 is read: for
          ``BOTH`` with the fill-race guard and one shared read per key (`_fill_from_l2`),
          for ``L2`` with a plain ``GET``. Only fresh values are returned.
        - ``allow_stale=True`` (``get_or_set``): L1's entry first, stale ones included,
          then L2 (``BOTH``: guarded and shared; ``L2``: its entry, not installed).

        After a ``BOTH`` read found nothing fresh in L2, L1 is looked at again: a
        concurrent fill or load may have installed the key meanwhile.

        ``decode`` (a declared type's, `_typed.decoder_of`) turns a value read from L2 into
        that type before it is installed in L1; a value that does not validate is a miss,
        counted in `type_mismatches`, and is not installed; an L1 value is validated too
        (an instance of the type passes as is).
        """
        found: tuple[Any, bool] | None = None
        if allow_stale and tier is not CacheTier.L2:
            found = self.l1.get_entry(key)
            if found is not None and decode is not None:
                found = self._decoded(found[0], found[1], decode)
        l2 = self.l2
        if found is None and l2 is not None and tier is not CacheTier.L1:
            if tier is CacheTier.BOTH:
                found = await self._fill_from_l2(key, decode)
                if found is None or not found[1]:
                    again = self.l1.get_entry(key)
                    if again is not None and decode is not None:
                        again = self._decoded(again[0], again[1], decode)
                    if again is not None and again[1]:
                        found = again
            elif allow_stale:
                entry_ttl = await l2.get_entry_with_ttl(key)
                if entry_ttl is not None:
                    found = self._decoded(entry_ttl[0].value, entry_ttl[0].is_fresh(), decode)
            else:
                value = await l2.read_value(key, MISSING)
                if value is not MISSING:
                    found = self._decoded(value, True, decode)
        if found is not None and found[1]:
            self._hits += 1
            if self.copy_on_read:
                return copy_value(found[0]), True
            return found
        self._misses += 1
        if found is not None and allow_stale and self.copy_on_read:
            return copy_value(found[0]), found[1]
        return found if allow_stale else None

    def checked(self, value: Any, decode: Decoder) -> Any:
        """An L1 value as the declared type (an instance passes as is), or `MISSING`
        (counted in `type_mismatches`) when it does not validate."""
        typed = self._decoded(value, True, decode)
        return MISSING if typed is None else typed[0]

    def _decoded(self, value: Any, fresh: bool, decode: Decoder | None) -> tuple[Any, bool] | None:
        """``(value decoded, fresh)``, or ``None`` (counted) when it does not validate."""
        if decode is None:
            return value, fresh
        try:
            return decode(value), fresh
        except TypeMismatch:
            self.type_mismatches += 1
            return None

    async def get(
        self,
        key: str,
        tier: CacheTier = CacheTier.BOTH,
        *,
        default: Any = None,
        decode: Decoder | None = None,
        tel: _telemetry.Telemetry | None = None,
    ) -> Any:
        """Return the value of ``key`` from the tiers asked for, or ``default``.

        `peek`, then `read` on a miss. With ``decode`` (a declared type), an L1 value is
        validated too (an instance of the type passes as is); one that does not validate
        is a miss, counted in `type_mismatches`. With ``tel``, traced as `get_traced` when
        telemetry is on.
        """
        if tel is not None and (tel.active or tel.poll()):
            return await self.get_traced(key, tier, default, tel, decode)
        if tier is not CacheTier.L2:
            value = self.peek(key)
            if value is not MISSING:
                if decode is None:
                    return value
                value = self.checked(value, decode)
                return default if value is MISSING else value
        validate_key(key)
        found = await self.read(key, tier, decode=decode)
        return default if found is None else found[0]

    async def get_traced(
        self,
        key: str,
        tier: CacheTier,
        default: Any,
        tel: _telemetry.Telemetry,
        decode: Decoder | None = None,
    ) -> Any:
        """`get` with a ``cache.get`` span and a duration record (a provider is set)."""
        started = time.perf_counter()
        with tel.span("cache.get", tel.key_attributes(key)) as span:
            value = self.peek(key) if tier is not CacheTier.L2 else MISSING
            answered: str | None = "l1"
            if value is not MISSING and decode is not None:
                value = self.checked(value, decode)  # an L1 value of another type: a miss
                answered = None if value is MISSING else answered
            elif value is MISSING:
                validate_key(key)
                found = await self.read(key, tier, decode=decode)
                value = MISSING if found is None else found[0]
                answered = "l2" if found is not None else None
            hit = value is not MISSING
            if span.is_recording():
                span.set_attribute("cache.hit", hit)
                if answered is not None:
                    span.set_attribute("cache.tier", answered)
        tel.record_duration(time.perf_counter() - started, "get", answered)
        return value if hit else default

    def begin_fill(self, key: str) -> FillToken:
        """Start tracking a read of ``key`` whose result may be cached; see `end_fill`.

        Any invalidation of ``key`` before `end_fill` marks the returned token stale, and
        a stale result must not be installed.
        """
        fill = FillToken()
        self._fills.setdefault(key, []).append(fill)
        return fill

    def end_fill(self, key: str, fill: FillToken) -> None:
        """Stop tracking ``fill`` (its ``stale`` flag keeps its verdict)."""
        fills = self._fills.get(key)
        if fills is not None:
            fills.remove(fill)
            if not fills:
                del self._fills[key]

    async def _fill_from_l2(self, key: str, decode: Decoder | None) -> tuple[Any, bool] | None:
        """Read ``key`` from L2 and copy it into L1 unless the read was made stale.

        Concurrent misses of one key share one read (single-flight of the L2 look-up):
        a caller joins a read in flight unless an invalidation made it stale, since such
        a read may predate a write whose result the caller must see.
        """
        shared = self._reads.get(key)
        if shared is not None and not shared.fill.stale:
            await shared.wait()
            if shared.value is not MISSING:
                found: tuple[Any, bool] | None = shared.value
                if found is None or decode is None:
                    return found
                # its first caller may have declared another type (or none)
                return self._decoded(found[0], found[1], decode)
            # its first caller was cancelled: read for ourselves
        fill = self.begin_fill(key)
        flight = self._reads[key] = Flight(fill)
        try:
            found = await self._read_and_install(key, fill, decode)
            flight.value = found
            return found
        finally:
            self.end_fill(key, fill)
            flight.finish()
            if self._reads.get(key) is flight:
                del self._reads[key]

    async def _read_and_install(
        self, key: str, fill: FillToken, decode: Decoder | None
    ) -> tuple[Any, bool] | None:
        assert self.l2 is not None
        sent = self.l1.now()
        found = await self.l2.get_entry_with_ttl(key)
        if found is None:
            return None
        entry, remaining = found
        if decode is not None:
            typed = self._decoded(entry.value, True, decode)
            if typed is None:
                return None  # an older schema: a miss, not installed
            entry = StoredEntry(typed[0], entry.fresh_until_ms, entry.tags)
        if remaining is not None:  # count it from the request: a slow reply must not stretch it
            remaining = remaining * L2_CLOCK_MARGIN - (self.l1.now() - sent)
        fresh_for = entry.fresh_seconds()
        if not fill.stale and (remaining is None or remaining > 0):
            if fresh_for is None:
                self.l1.set(key, entry.value, remaining, tags=entry.tags)
            elif remaining is not None and fresh_for > 0:
                self.l1.set(
                    key, entry.value, min(fresh_for, remaining),
                    stale_for=max(0.0, remaining - fresh_for),
                    tags=entry.tags,
                )  # fmt: skip
            elif remaining is not None:
                # Already stale in L2: keep it in L1 as stale for what is left.
                self.l1.set_stale(key, entry.value, remaining, tags=entry.tags)
        return entry.value, fresh_for is None or fresh_for > 0

    # -- writes ----------------------------------------------------------------------------

    def resolve_ttl(self, ttl: TTL) -> float | None:
        """Seconds for a TTL argument: ``default_ttl`` for `USE_DEFAULT`, else checked."""
        return self.default_ttl if ttl is USE_DEFAULT else check_ttl(ttl)

    async def set(
        self,
        key: str,
        value: Any,
        ttl: TTL = USE_DEFAULT,
        tier: CacheTier = CacheTier.BOTH,
        *,
        tags: Iterable[str] = (),
        stale_ttl: float | None = None,
        publish: bool = True,
        own_fill: FillToken | None = None,
    ) -> bool:
        """Write ``value`` to the tiers asked for; ``False`` if a requested L2 write failed,
        or, with no L2 write, if L1 did not keep it (larger than 1/8 of its byte bound).

        L1 is written before L2, so this instance reads its own write even while Redis is
        down; the L2 write is not retried. An L2-only write drops this instance's L1 copy.
        ``tags`` index the entry for `invalidate_tags`; ``stale_ttl`` keeps it, stale, for
        that many seconds after ``ttl`` (served only by ``get_or_set``). ``publish=False``
        stores without telling other instances (a loader result after a miss: nobody can
        hold a copy of a key that was missing, and a cold start must not be a broadcast
        storm).

        Raises:
            InvalidKeyError: ``key`` is not a valid key.
            InvalidTTLError: ``ttl`` is not positive.
            SerializationError: ``value`` cannot be encoded; no tier is written.
            ValueTooLargeError: the encoded value exceeds ``max_value_size``; nothing written.
        """
        validate_key(key)
        seconds = self.resolve_ttl(ttl)
        tag_tuple = validate_tags(tags)
        stale = check_ttl(stale_ttl) if stale_ttl is not None else None
        return await self.store(
            key, value, seconds, tier, tags=tag_tuple, stale_ttl=stale, publish=publish,
            own_fill=own_fill,
        )  # fmt: skip

    async def store(
        self,
        key: str,
        value: Any,
        seconds: float | None,
        tier: CacheTier,
        *,
        tags: tuple[str, ...],
        stale_ttl: float | None,
        publish: bool,
        own_fill: FillToken | None,
        decode: Decoder | None = None,
    ) -> bool:
        """`set` with arguments already checked (a valid key, resolved TTLs, valid tags):
        the store of a load, whose `LoadPolicy` was checked once.

        L1 receives the value decoded from its encoding (so it shares no object with the
        caller), with ``decode`` (a declared type) when given.

        Raises:
            SerializationError: also when the encoded value does not decode as the
                declared type; no tier is written.
        """
        tag_tuple, stale = tags, stale_ttl
        raw = self.serializer.dumps(value, key=key)
        fresh_until = None
        if stale is not None and seconds is not None:
            fresh_until = now_ms() + math.ceil(seconds * 1000)
        payload = self.serializer.pack(raw, key=key, fresh_until_ms=fresh_until, tags=tag_tuple)
        decoded: Any = MISSING
        kept = True  # False: L1 did not keep it (above its byte bound's oversize limit)
        if tier is not CacheTier.L2:
            decoded = self.serializer.loads(raw)
            if decode is not None:
                try:
                    decoded = decode(decoded)
                except TypeMismatch as exc:
                    raise SerializationError(
                        f"the value for key {key!r} does not read back as its declared type: {exc}",
                        value_type=type(value),
                        key=key,
                    ) from None
        self._sets += 1
        self.invalidate_local(key, keep=own_fill)
        # A copy of an L2 entry: within its life on the server's clock (`L2_CLOCK_MARGIN`).
        margin = L2_CLOCK_MARGIN if tier is CacheTier.BOTH and self.l2 is not None else 1.0
        if decoded is not MISSING:
            kept = self.l1.set(
                key, decoded, None if seconds is None else seconds * margin,
                stale_for=0.0 if fresh_until is None else (stale or 0.0) * margin,
                tags=tag_tuple, size=len(raw),
            )  # fmt: skip
        if tier is CacheTier.L1:
            return kept
        if self.l2 is None:
            return tier is CacheTier.BOTH and kept
        notify = (
            BusMessage.delete(
                (key,), origin=self.origin, traceparent=_telemetry.current_traceparent()
            ).encode()
            if self.publish and publish
            else None
        )
        l2_ttl = seconds if fresh_until is None or seconds is None else seconds + (stale or 0.0)
        written = False
        sent = self.l1.now()
        try:
            written = await self.l2.set_payload(key, payload, l2_ttl, notify=notify, tags=tag_tuple)
            return written
        finally:
            # Fence: a fill that read L2 while the write was in flight may carry the
            # previous value; keep our own L1 entry, drop anything else.
            if decoded is MISSING or self.l1.peek(key, MISSING) is not decoded:
                self.invalidate_local(key, keep=own_fill)
            else:
                self._stale_fills_of(key, own_fill)
                if not written and self.unconfirmed_write_ttl is not None:
                    # Neither L2 nor the other instances have this value: like a write made
                    # while the bus is down, serve it for a bounded time only.
                    self._cap_unconfirmed(key, decoded, seconds, tag_tuple, sent)

    async def store_fills(
        self,
        items: Sequence[tuple[str, bytes, float | None, bytes]],
        tier: CacheTier,
        l1_budget: int,
    ) -> tuple[int, int, BackendError | None]:
        """Store a batch of fills (a warm): ``(key, payload, ttl, encoded value)`` items.

        With an L2 (``BOTH``, ``L2``): one pipelined round trip, no bus message (a fill,
        not a write). Each item holds a fill token meanwhile: an invalidation of its key
        while the batch is in flight (local write, bus message, pattern clear,
        resubscription) makes it stale, and a stale item is neither installed in L1 nor
        allowed to disturb what L1 holds now. Other items drop any older L1 copy (fencing
        reads that fetched the previous L2 value); for ``BOTH`` the first ``l1_budget`` of
        them are installed in L1. Without an L2 (``L1``, or none configured) every item
        goes to L1.

        Returns:
            ``(items installed in L1, L1 budget left, the L2 error or None)``.
        """
        loads = self.serializer.loads
        l2 = self.l2 if tier is not CacheTier.L1 else None
        if l2 is None:
            for key, _payload, seconds, raw in items:
                self.invalidate_local(key)
                self.l1.set(key, loads(raw), seconds, size=len(raw))
            await anyio.lowlevel.checkpoint()
            return len(items), l1_budget, None
        to_l1 = tier is CacheTier.BOTH
        fills = [self.begin_fill(key) for key, *_ in items]
        error: BackendError | None = None
        sent = self.l1.now()  # L2 TTLs count from the SETs: L1's count from before them
        try:
            await l2.set_payloads([(k, p, s) for k, p, s, _ in items], raise_errors=True)
        except BackendError as exc:
            error = exc
        finally:
            for (key, *_), fill in zip(items, fills, strict=True):
                self.end_fill(key, fill)
        installed = 0
        for (key, _payload, seconds, raw), fill in zip(items, fills, strict=True):
            bound = to_l1 and l1_budget > 0
            if bound:
                l1_budget -= 1
            if fill.stale:
                continue
            self.invalidate_local(key)
            left = None if seconds is None else seconds * L2_CLOCK_MARGIN - (self.l1.now() - sent)
            if bound and (left is None or left > 0):
                self.l1.set(key, loads(raw), left, size=len(raw))
                installed += 1
        return installed, l1_budget, error

    def _cap_unconfirmed(
        self, key: str, value: Any, seconds: float | None, tags: tuple[str, ...], sent: float
    ) -> None:
        """Keep an unconfirmed write (its L2 write failed or timed out) at most the bus-loss
        bound, and within its TTL counted from before the write was sent: a write whose
        reply timed out may have landed, and its L2 entry expires on that count."""
        cap = self.unconfirmed_write_ttl
        assert cap is not None
        life = cap if seconds is None else min(seconds * L2_CLOCK_MARGIN, cap)
        left = life - (self.l1.now() - sent)
        if left <= 0:
            self.l1.delete(key)
        else:
            self.l1.set(key, value, left, tags=tags)

    async def delete(self, key: str, tier: CacheTier = CacheTier.BOTH) -> bool:
        """Remove ``key`` from the tiers asked for; return whether any tier held it.

        Removing it from L2 also drops this instance's L1 copy (and, through the bus, every
        other instance's): an L1 copy of a value that L2 no longer holds would be stale.
        """
        validate_key(key)
        self._deletes += 1
        existed = self.l1.peek(key, MISSING) is not MISSING
        self.invalidate_local(key)
        if tier is CacheTier.L1 or self.l2 is None:
            return existed
        notify = (
            BusMessage.delete(
                (key,), origin=self.origin, traceparent=_telemetry.current_traceparent()
            ).encode()
            if self.publish
            else None
        )
        try:
            return await self.l2.delete(key, notify=notify) or existed
        finally:
            self.invalidate_local(key)  # fence fills that raced with the UNLINK

    async def clear_pattern(self, pattern: str, tier: CacheTier = CacheTier.BOTH) -> int:
        """Remove keys matching the glob ``pattern`` from the tiers asked for.

        Clearing L2 also clears this instance's matching L1 entries, before and again
        after the SCAN + UNLINK batches, so no fill that raced with them stays behind.

        Returns:
            The number of L2 keys removed when L2 is involved, else the number of L1 keys.
        """
        validate_pattern(pattern)
        removed = await self._clear_local_pattern(pattern)
        if tier is CacheTier.L1 or self.l2 is None:
            return removed
        notify = (
            BusMessage.clear_pattern(
                pattern, origin=self.origin, traceparent=_telemetry.current_traceparent()
            ).encode()
            if self.publish
            else None
        )
        try:
            # the message leaves after the last UNLINK (with it, on one server)
            removed = await self.l2.clear_pattern(pattern, notify=notify)
            await self._clear_local_pattern(pattern)
        except BaseException:
            self.invalidate_local_pattern(pattern)  # at once: no await while unwinding
            raise
        return removed

    async def clear(self, tier: CacheTier = CacheTier.BOTH) -> int:
        """Remove every key of this namespace from the tiers asked for (see `clear_pattern`)."""
        removed = len(self.l1)
        self.invalidate_local_all()
        if tier is CacheTier.L1 or self.l2 is None:
            return removed
        try:
            removed = await self.l2.clear()
        finally:
            self.invalidate_local_all()
        await self._publish(
            BusMessage.clear(origin=self.origin, traceparent=_telemetry.current_traceparent())
        )
        return removed

    def invalidate_local_tags(self, tags: Iterable[str]) -> int:
        """Drop L1 entries carrying any of ``tags``; make every in-flight fill stale.

        A fill in flight does not know its tags before its reply arrives, so all of them
        are dropped: tag invalidations are rare, fills are cheap to redo.
        """
        for fills in self._fills.values():
            for fill in fills:
                fill.stale = True
        return self.l1.delete_tagged(tags)

    async def invalidate_tags(self, *tags: str) -> int:
        """Remove every entry carrying any of ``tags`` from every tier and instance.

        Returns:
            The number of L2 entries removed (L1 entries when running without L2).
        """
        wanted = validate_tags(tags)
        if not wanted:
            return 0
        removed = self.invalidate_local_tags(wanted)
        if self.l2 is None:
            return removed
        try:
            removed = await self.l2.invalidate_tags(wanted)
        finally:
            self.invalidate_local_tags(wanted)
        await self._publish(
            BusMessage.invalidate_tags(
                wanted, origin=self.origin, traceparent=_telemetry.current_traceparent()
            )
        )
        return removed

    async def _publish(self, message: BusMessage) -> None:
        if not self.publish or self.l2 is None:
            return
        with contextlib.suppress(BackendError):  # counted and logged by RedisCache
            await self.l2.publish(self.l2.config.channel, message.encode())

    # -- stats -----------------------------------------------------------------------------

    def stats(self) -> TierStats:
        """Statistics of both tiers and the totals, without a Redis round trip."""
        if self.l2 is not None:
            l2 = self.l2.stats()
        else:
            l2 = {
                "hits": 0,
                "misses": 0,
                "hit_rate": 0.0,
                "connected": False,
                "errors": 0,
                "timeouts": 0,
                "rejected_payloads": 0,
                "short_circuited": 0,
                "dropped_writes": 0,
                "breaker": "closed",
                "url": None,
            }
        return {
            "l1_cache": self.l1.get_stats(),
            "l2_cache": l2,
            "total_hits": self._hits,
            "total_misses": self._misses,
            "total_sets": self._sets,
            "total_deletes": self._deletes,
            "l2_enabled": self.l2 is not None,
            "namespace": self.namespace,
        }

    async def get_stats(self) -> TierStats:
        """The seed's statistics (see `TierStats`)."""
        return self.stats()
