"""The load engine of ``get_or_set`` and the decorators, and its one option bundle.

`LoadPolicy` holds every load option, validated once when it is built (per
``get_or_set`` call, or once per decorated function). `LoadEngine` runs loads: the L1
fast path, single-flight per key in the manager's task group, the cross-instance lease
lock, stale-while-revalidate and fail-safe, and the loader statistics.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, final

import anyio
from anyio.abc import TaskGroup

from ._breaker import BreakerState
from ._flight import FillToken, Flight
from ._log import Logger, get_logger
from ._telemetry import Telemetry
from ._typed import Decoder
from .config import CacheConfig, CacheTier
from .errors import (
    BackendError,
    CacheClosedError,
    InvalidTTLError,
    LoaderTimeoutError,
    SerializationError,
)
from .keys import key_prefix, validate_key, validate_tags
from .l2 import RedisCache
from .monitoring import LoaderStats
from .multitier import MultiTierCache
from .types import MISSING, NOT_LOOKED, USE_DEFAULT, UseDefault, check_ttl

__all__ = ("LoadEngine", "LoadPolicy", "Outcome")

Outcome = Literal["hit", "stale", "miss"]
"""How a load was answered: a fresh hit, a stale value, or a miss (the loader's result)."""

Loader = Callable[[], Awaitable[Any]]

TTLOf = Callable[[Any], float | None]
"""A TTL chosen by the result: called with the loaded value, returns seconds or ``None``."""

REFRESH_MARKS_MAX: Final = 4096
"""Keys whose current entry already had its refresh-ahead attempt, remembered at most (the
record is dropped beyond: at worst an entry is refreshed twice)."""


def check_jitter(jitter: object) -> float:
    """``jitter`` as a fraction in [0, 1), else `InvalidTTLError`."""
    if isinstance(jitter, bool) or not isinstance(jitter, int | float):
        raise InvalidTTLError(f"ttl_jitter must be a number, got {jitter!r}", ttl=jitter)
    if not 0 <= jitter < 1:
        raise InvalidTTLError(
            f"ttl_jitter must be a fraction in [0, 1), got {jitter!r}", ttl=jitter
        )
    return float(jitter)


def check_refresh_ahead(fraction: object) -> float:
    """``refresh_ahead`` as a fraction in (0, 1), else `InvalidTTLError`."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise InvalidTTLError(
            f"refresh_ahead must be a fraction of the TTL in (0, 1), got {fraction!r}",
            ttl=fraction,
        )
    return float(fraction)


@final
@dataclass(frozen=True, slots=True)
class LoadPolicy:
    """Every option of a load, checked when built (``get_or_set`` documents each).

    ``ttl`` is resolved (``default_ttl`` already substituted for `USE_DEFAULT`) and
    ``lock`` too (``lock_by_default`` for ``None``); so are ``loader_hard_timeout`` and
    ``refresh_ahead`` (their `CacheConfig` defaults). ``ttl`` may be a callable of the
    loaded value (`TTLOf`); ``none_ttl`` `USE_DEFAULT` means a ``None`` gets ``ttl``.
    ``refresh_ahead`` is dropped (``None``) when ``ttl`` is ``None`` or ``tier`` is L2.

    Raises:
        InvalidTTLError: ``ttl``, ``stale_ttl``, ``loader_timeout``,
            ``loader_hard_timeout`` or ``none_ttl`` is not a positive number (``ttl`` and
            ``none_ttl`` may be ``None``), ``ttl_jitter`` is not in [0, 1), or
            ``refresh_ahead`` not in (0, 1).
        InvalidKeyError: a tag is not a valid tag.
    """

    ttl: float | TTLOf | None
    tier: CacheTier = CacheTier.BOTH
    tags: tuple[str, ...] = ()
    lock: bool = False
    stale_ttl: float | None = None
    loader_timeout: float | None = None
    cache_none: bool = True
    should_cache: Callable[[Any], bool] | None = None
    ttl_jitter: float = 0.0
    decode: Decoder | None = None
    """The declared type's decoder (`_typed.decoder_of`); ``None``: JSON-native values."""
    loader_hard_timeout: float | None = None
    refresh_ahead: float | None = None
    none_ttl: float | UseDefault | None = USE_DEFAULT

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not callable(self.ttl):
            set_(self, "ttl", check_ttl(self.ttl))
        if self.stale_ttl is not None:
            set_(self, "stale_ttl", check_ttl(self.stale_ttl))
        if self.loader_timeout is not None:
            check_ttl(self.loader_timeout)
        set_(self, "ttl_jitter", check_jitter(self.ttl_jitter))
        set_(self, "tier", CacheTier(self.tier))
        set_(self, "tags", validate_tags(self.tags))
        if self.loader_hard_timeout is not None:
            set_(self, "loader_hard_timeout", check_ttl(self.loader_hard_timeout))
        if self.none_ttl is not USE_DEFAULT:
            set_(self, "none_ttl", check_ttl(self.none_ttl))
        if self.refresh_ahead is not None:
            fraction = check_refresh_ahead(self.refresh_ahead)
            off = self.ttl is None or self.tier is CacheTier.L2
            set_(self, "refresh_ahead", None if off else fraction)

    @classmethod
    def of_call(
        cls,
        config: CacheConfig,
        *,
        ttl: float | TTLOf | UseDefault | None,
        tier: CacheTier,
        tags: Iterable[str],
        lock: bool | None,
        stale_ttl: float | None,
        loader_timeout: float | None,
        cache_none: bool,
        should_cache: Callable[[Any], bool] | None,
        ttl_jitter: float,
        loader_hard_timeout: float | UseDefault | None,
        refresh_ahead: float | UseDefault | None,
        none_ttl: float | UseDefault | None,
        decode: Decoder | None = None,
    ) -> LoadPolicy:
        """The policy of a ``get_or_set`` call or a decorator: `USE_DEFAULT` and ``lock=None``
        resolved from ``config``."""
        return cls(
            ttl=config.default_ttl if ttl is USE_DEFAULT else ttl,
            tier=tier,
            tags=tuple(tags),
            lock=config.lock_by_default if lock is None else lock,
            stale_ttl=stale_ttl,
            loader_timeout=loader_timeout,
            cache_none=cache_none,
            should_cache=should_cache,
            ttl_jitter=ttl_jitter,
            loader_hard_timeout=config.loader_hard_timeout
            if loader_hard_timeout is USE_DEFAULT
            else loader_hard_timeout,
            refresh_ahead=config.refresh_ahead if refresh_ahead is USE_DEFAULT else refresh_ahead,
            none_ttl=none_ttl,
            decode=decode,
        )

    def with_tags(self, tags: tuple[str, ...]) -> LoadPolicy:
        """This policy with other tags (a decorated call's rendered tag templates)."""
        return replace(self, tags=tags)


@final
class LoadEngine:
    """Runs the loads of one `CacheManager` (``get_or_set`` and decorated functions).

    Built by the manager with its parts; `open` hands it the manager's task group (the
    loaders run there, so a cancelled caller does not cancel a load others wait for),
    `close` stops new loads. Keys reaching `load` and `get_or_set` were validated by the
    caller, except on `get_or_set`'s paths that validate them themselves.

    Args:
        cache: the tiers.
        config: ``lock_timeout``, ``lock_lease`` and ``operation_timeout``.
        telemetry: spans of traced calls and of each loader call.
        logger: where ``loader_failed``, ``lock_wait_timeout`` and ``lock_lost`` go.
        timer: the monotonic clock of the lock wait.
        closed_error: the error to raise when the manager is not running.
    """

    def __init__(
        self,
        cache: MultiTierCache,
        *,
        config: CacheConfig,
        telemetry: Telemetry,
        logger: Logger | None = None,
        timer: Callable[[], float] = time.monotonic,
        closed_error: Callable[[], CacheClosedError] = lambda: CacheClosedError("closed"),
    ) -> None:
        self._cache = cache
        self._l2: RedisCache | None = cache.l2
        self._config = config
        self._telemetry = telemetry
        self.log: Logger = logger if logger is not None else get_logger()
        self._timer = timer
        self._closed_error = closed_error
        self._tg: TaskGroup | None = None
        self._flights: dict[str, Flight] = {}
        # Refresh-ahead flights, apart: a miss never joins one (a refresh that did not load
        # ends with the value it started from, which may have expired meanwhile).
        self._refreshing: dict[str, Flight] = {}
        # key -> the fresh-until of the L1 entry whose refresh-ahead was already started
        self._refresh_marks: dict[str, float] = {}
        self._random = random.Random()
        self._stats: LoaderStats = {
            "hits": 0,
            "misses": 0,
            "loads": 0,
            "errors": 0,
            "stale_served": 0,
            "lock_waits": 0,
            "discarded": 0,
            "unencodable": 0,
            "type_mismatches": 0,
            "refreshes": 0,
            "hard_timeouts": 0,
            "ttl_errors": 0,
        }
        self._unencodable_prefixes: set[str] = set()

    def open(self, tg: TaskGroup) -> None:
        """Accept loads; run them in ``tg`` (the manager's task group)."""
        self._tg = tg

    def close(self) -> None:
        """Refuse new loads (`get_or_set` raises the closed error)."""
        self._tg = None

    def stats(self) -> LoaderStats:
        """The ``loader`` figures of `CacheStats` (a copy)."""
        stats = LoaderStats(**self._stats)
        stats["type_mismatches"] = self._cache.type_mismatches
        return stats

    def in_flight(self, key: str) -> bool:
        """Whether a load (or refresh) of ``key`` is running in this instance."""
        return key in self._flights or key in self._refreshing

    # -- entrances -------------------------------------------------------------------------

    def fast_hit(self, key: str, decode: Decoder | None = None) -> Any:
        """The untraced L1 fast path of a load (``get_or_set``, decorated calls).

        Returns the fresh L1 value of ``key`` (a loader hit), `MISSING` after an L1 miss
        (counted: continue with `load`, after validating the key), or `NOT_LOOKED` when
        the engine is closed or the call is to be traced (continue with `get_or_set`).
        With ``decode`` (``get_or_set(value_type=...)``), an L1 value that does not
        validate is a miss; decorated calls trust L1 (their fills and stores are typed).
        """
        if self._tg is None:
            return NOT_LOOKED
        tel = self._telemetry
        if tel.active:
            return NOT_LOOKED
        tel.countdown -= 1  # Telemetry.poll() inlined: this is the hit path
        if tel.countdown <= 0 and tel.recheck():
            return NOT_LOOKED
        hit = self._cache.peek(key)
        if hit is not MISSING:
            if decode is not None and (hit := self._cache.checked(hit, decode)) is MISSING:
                return hit
            self._stats["hits"] += 1
        return hit

    async def get_or_set(
        self,
        key: str,
        loader: Loader,
        tier: CacheTier,
        policy: Callable[[], LoadPolicy],
        decode: Decoder | None = None,
        *,
        refresh: bool = False,
    ) -> Any:
        """A whole load after `fast_hit` returned `NOT_LOOKED` (or for ``tier=L2``).

        Raises the closed error when closed; traces the call (``get_or_set`` span) when
        telemetry is on. ``key`` is validated and ``policy()`` built only after an L1 miss,
        or after a hit when ``refresh`` (the policy may have a ``refresh_ahead``).
        """
        if self._tg is None:
            raise self._closed_error()
        tel = self._telemetry
        if tel.active or tel.poll():
            with tel.operation("get_or_set", tel.key_attributes(key)) as span:
                hit = self._cache.peek(key) if tier is not CacheTier.L2 else MISSING
                if hit is not MISSING and decode is not None:
                    hit = self._cache.checked(hit, decode)
                if hit is not MISSING:
                    self._stats["hits"] += 1
                    span.set_attributes({"cache.hit": True, "cache.tier": "l1"})
                    if refresh:
                        self.refresh_if_due(key, loader, policy(), hit)
                    return hit
                validate_key(key)
                value, outcome = await self.load(key, loader, policy())
                span.set_attribute("cache.hit", outcome != "miss")
                if outcome == "stale":
                    span.set_attribute("cache.stale", True)
                return value
        if tier is not CacheTier.L2:
            hit = self._cache.peek(key)
            if hit is not MISSING and decode is not None:
                hit = self._cache.checked(hit, decode)
            if hit is not MISSING:
                self._stats["hits"] += 1
                if refresh:
                    self.refresh_if_due(key, loader, policy(), hit)
                return hit
        validate_key(key)
        return (await self.load(key, loader, policy()))[0]

    async def load(self, key: str, loader: Loader, policy: LoadPolicy) -> tuple[Any, Outcome]:
        """A load after the L1 fast path missed (``key`` valid); also says how it was served."""
        cache = self._cache
        flight = self._flights.get(key) if policy.tier is not CacheTier.L2 else None
        if flight is not None and not flight.fill.stale:
            found = await cache.read(key, CacheTier.L1, allow_stale=True, decode=policy.decode)
            if found is None:
                # A load of this key is under way and L1 holds nothing: join it without an
                # L2 read (its first caller read L2 just before starting it).
                self._stats["misses"] += 1
                return await self._wait(key, flight, policy), "miss"
        else:
            found = await cache.read(key, policy.tier, allow_stale=True, decode=policy.decode)
        if found is not None:
            value, fresh = found
            if fresh:
                self._stats["hits"] += 1
                if policy.refresh_ahead is not None:
                    self.refresh_if_due(key, loader, policy, value)
                return value, "hit"
            self._stats["stale_served"] += 1
            flight = self._flight(key, loader, policy)
            if policy.loader_timeout is None:
                return value, "stale"
            with anyio.move_on_after(policy.loader_timeout):
                try:
                    return await flight.result(), "stale"
                except Exception:
                    # fail-safe; logged and counted by the flight
                    return value, "stale"
            return value, "stale"
        self._stats["misses"] += 1
        return await self._wait(key, self._flight(key, loader, policy), policy), "miss"

    async def _wait(self, key: str, flight: Flight, policy: LoadPolicy) -> Any:
        """The flight's result, or `LoaderTimeoutError` after ``loader_hard_timeout``.

        Only the wait is bounded: the flight runs on in the task group and fills the cache.
        """
        timeout = policy.loader_hard_timeout
        if timeout is None:
            return await flight.result()
        with anyio.move_on_after(timeout):
            return await flight.result()
        self._stats["hard_timeouts"] += 1
        raise LoaderTimeoutError(
            f"the loader of {key_prefix(key)!r}... did not finish within {timeout} s "
            "(loader_hard_timeout); it goes on in the background",
            key=key,
            timeout=timeout,
        )

    # -- refresh-ahead ---------------------------------------------------------------------

    def refresh_due(self, key: str, fraction: float | None, ttl: object) -> bool:
        """Whether a hit of ``key`` should start its refresh-ahead (cheap: the hit path).

        Due when the L1 entry has at most ``(1 - fraction)`` of its TTL left: ``ttl`` if it
        is a number shorter than the entry's own length (an L1 cap, or a copy of an L2
        entry living for what remained of it), else that length. Not due when a refresh of
        this entry was already started, or a load of the key is in flight; never when
        ``fraction`` is ``None``.
        """
        window = self._cache.l1.fresh_window(key)
        if window is None or fraction is None:
            return False
        stored, fresh = window
        span = fresh - stored
        if (type(ttl) is float or type(ttl) is int) and ttl < span:
            span = ttl
        return (
            fresh - self._timer() <= (1 - fraction) * span
            and span != float("inf")
            and self._refresh_marks.get(key) != fresh
            and key not in self._flights
            and key not in self._refreshing
        )

    def refresh_if_due(self, key: str, loader: Loader, policy: LoadPolicy, value: Any) -> None:
        """After a fresh hit of ``value``: start one background refresh of ``key`` when
        `refresh_due` (``policy.refresh_ahead`` set); at most one per L1 entry."""
        fraction = policy.refresh_ahead
        if fraction is None or self._tg is None or not self.refresh_due(key, fraction, policy.ttl):
            return
        window = self._cache.l1.fresh_window(key)
        assert window is not None
        stored, fresh = window
        ttl = policy.ttl
        # Two thresholds. The lock holder finds L2 due when its entry has at most (1 - f) of
        # the shortest length an entry of this value gets (`_entry_length`) left: measuring
        # against this copy's length instead (a copy made from L2 late is shorter) made
        # holders find L2 "refreshed elsewhere" over and over, each copy shorter still,
        # while nobody loaded, until the key expired fleet-wide. A lock loser's copy is
        # renewed when it has more than (1 - f) of its length left.
        length = fresh - stored
        l2_span = self._entry_length(value, policy, length)
        l1_span = min(ttl, length) if isinstance(ttl, float) else length
        marks = self._refresh_marks
        if len(marks) >= REFRESH_MARKS_MAX:
            marks.clear()
        marks[key] = fresh
        flight = self._refreshing[key] = Flight(self._cache.begin_fill(key))
        self._stats["refreshes"] += 1
        self._tg.start_soon(
            self._run_flight,
            key,
            loader,
            policy,
            flight,
            (value, (1 - fraction) * l2_span, (1 - fraction) * l1_span),
        )

    @staticmethod
    def _entry_length(value: Any, policy: LoadPolicy, fallback: float) -> float:
        """The shortest TTL a store of ``value`` under ``policy`` gets: ``none_ttl`` for a
        ``None`` when set, else ``ttl`` (a callable's result for ``value``), less
        ``ttl_jitter``; ``fallback`` (the L1 copy's length) when that is unknown (no TTL, or
        the callable fails: already logged when the value was stored)."""
        ttl: Any = policy.ttl
        if value is None and policy.none_ttl is not USE_DEFAULT:
            ttl = policy.none_ttl
        elif callable(ttl):
            try:
                ttl = check_ttl(ttl(value))
            except Exception:
                return fallback
        if not isinstance(ttl, float):
            return fallback
        return ttl * (1 - policy.ttl_jitter)

    async def _refresh_locked(
        self,
        key: str,
        loader: Loader,
        policy: LoadPolicy,
        l2: RedisCache,
        fill: FillToken,
        refresh: tuple[Any, float, float],
    ) -> Any:
        """A refresh-ahead under the lease lock (``tier=BOTH``): one instance of the fleet
        loads, the others adopt its result from L2 before their own copy expires.

        The lock holder loads unless L2 already holds an entry that is not due (refreshed
        elsewhere), which it copies into L1 instead. An instance that finds the lock held
        polls L2 for the new entry (as a lock waiter does) and copies it into L1; each poll
        tries the lock again, so when the holder left without storing a new entry (it found
        L2 not due by its own measure, failed, or died) a poller takes over and loads. It
        stops at ``lock_timeout`` or at the expiry of the entry held (then callers miss and
        load as usual). Either way no caller waits: they are served the entry held.
        """
        value, _, renewed_within = refresh
        token = secrets.token_hex(16)
        l1 = self._cache.l1
        started = self._timer()
        window = l1.fresh_window(key)
        deadline = started + self._config.lock_timeout
        if window is not None:
            deadline = min(deadline, window[1])
        while True:
            try:
                acquired = await l2.try_lock(key, token, self._config.lock_lease)
            except BackendError:
                return value  # keep serving; the entry expires as usual
            if acquired:
                return await self._refresh_holding(key, loader, policy, l2, fill, token, refresh)
            await self._cache.read(key, CacheTier.BOTH)  # L2 only, installed in L1
            window = l1.fresh_window(key)
            now = self._timer()
            if window is None or window[1] - now > renewed_within or now >= deadline:
                return value
            await anyio.sleep(min(0.1, max(0.001, (now - started) / 20)))

    async def _refresh_holding(
        self,
        key: str,
        loader: Loader,
        policy: LoadPolicy,
        l2: RedisCache,
        fill: FillToken,
        token: str,
        refresh: tuple[Any, float, float],
    ) -> Any:
        """`_refresh_locked`'s part with the lock held (``token``): load, or copy L2's entry
        when it is not due; the lock is released either way."""
        value, due_within, _ = refresh
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._renew_lease, l2, key, token)
                found = await l2.get_entry_with_ttl(key)
                left = None
                if found is not None:  # how long L2's entry stays fresh; None: for ever
                    left = found[0].fresh_seconds()
                    left = found[1] if left is None else left
                if found is None or (left is not None and left <= due_within):
                    value = await self._call_and_store(key, loader, policy, fill)
                else:
                    await self._cache.read(key, CacheTier.BOTH)  # copy L2's entry into L1
                tg.cancel_scope.cancel()
            return value
        finally:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(self._config.operation_timeout * 2),
            ):
                await l2.unlock(key, token)

    # -- flights ---------------------------------------------------------------------------

    def _flight(self, key: str, loader: Loader, policy: LoadPolicy) -> Flight:
        """The load of ``key`` in progress, or a new one started in the task group."""
        flight = self._flights.get(key)
        # A flight whose key was invalidated since it started carries an older value:
        # callers arriving after the invalidation get a new flight of their own.
        if flight is None or flight.fill.stale:
            if self._tg is None:
                raise self._closed_error()
            flight = self._flights[key] = Flight(self._cache.begin_fill(key))
            self._tg.start_soon(self._run_flight, key, loader, policy, flight)
        return flight

    async def _run_flight(
        self,
        key: str,
        loader: Loader,
        policy: LoadPolicy,
        flight: Flight,
        refresh: tuple[Any, float, float] | None = None,
    ) -> None:
        try:
            if refresh is None:
                load = self._load(key, loader, policy, flight.fill)
            elif policy.lock and policy.tier is CacheTier.BOTH and self._l2 is not None:
                load = self._refresh_locked(key, loader, policy, self._l2, flight.fill, refresh)
            else:  # a refresh of this instance's own (tier L1, or no lock)
                load = self._call_and_store(key, loader, policy, flight.fill)
            flight.value = await load
        except Exception as exc:
            flight.error = exc
            self._stats["errors"] += 1
            self.log.warning(
                "loader_failed",
                key_prefix=key_prefix(key),
                error=type(exc).__name__,
                detail=str(exc),
            )
        except BaseException:
            flight.error = CacheClosedError("the cache stopped while the loader ran")
            raise
        finally:
            self._cache.end_fill(key, flight.fill)
            if self._flights.get(key) is flight:
                del self._flights[key]
            elif self._refreshing.get(key) is flight:
                del self._refreshing[key]
            flight.finish()

    async def _load(self, key: str, loader: Loader, policy: LoadPolicy, fill: FillToken) -> Any:
        if policy.lock and self._l2 is not None:
            return await self._load_locked(key, loader, policy, self._l2, fill)
        return await self._call_and_store(key, loader, policy, fill)

    async def _call_and_store(
        self, key: str, loader: Loader, policy: LoadPolicy, fill: FillToken
    ) -> Any:
        self._stats["loads"] += 1
        # ``fill`` is the flight's token, tracked like an L2 fill since the flight started:
        # an invalidation of the key that lands meanwhile means the (older) result is
        # returned to the callers but not cached.
        tel = self._telemetry
        with tel.span("cache.load", tel.key_attributes(key)):
            value = await loader()
        if fill.stale:
            self._stats["discarded"] += 1
            return value
        if (value is None and not policy.cache_none) or (
            policy.should_cache is not None and not policy.should_cache(value)
        ):
            return value
        ttl = self._ttl_of(key, value, policy)
        if ttl is MISSING:
            return value
        if ttl is not None and policy.ttl_jitter:
            ttl *= 1 + self._random.uniform(-policy.ttl_jitter, policy.ttl_jitter)
        # Our own store must not make this flight's token stale (late callers would start a
        # second load); any other invalidation during the store still does.
        try:
            await self._cache.store(
                key,
                value,
                ttl,
                policy.tier,
                tags=policy.tags,
                stale_ttl=policy.stale_ttl,
                publish=False,
                own_fill=fill,
                decode=policy.decode,
            )
        except SerializationError as exc:
            self._unencodable(key, exc)  # the loader's work is not lost to a cache problem
        return value

    def _unencodable(self, key: str, exc: SerializationError) -> None:
        """Count a loader result that cannot be cached; log it once per key prefix."""
        self._stats["unencodable"] += 1
        prefix = key_prefix(key)
        if prefix not in self._unencodable_prefixes and len(self._unencodable_prefixes) < 1024:
            self._unencodable_prefixes.add(prefix)
            self.log.error(
                "cache_value_unencodable",
                key_prefix=prefix,
                value_type=getattr(exc.value_type, "__qualname__", None),
                detail=str(exc),
            )

    def _ttl_of(self, key: str, value: Any, policy: LoadPolicy) -> Any:
        """The TTL of a loaded ``value``: ``none_ttl`` for a ``None`` when set, the result of
        a callable ``ttl``, else ``ttl``. `MISSING` (not cached) when the callable raised
        or returned no valid TTL: logged as ``ttl_callable_failed``, counted in
        ``ttl_errors``; the caller still gets ``value``."""
        if value is None and policy.none_ttl is not USE_DEFAULT:
            return policy.none_ttl
        ttl = policy.ttl
        if not callable(ttl):
            return ttl
        try:
            return check_ttl(ttl(value))
        except Exception as exc:
            self._stats["ttl_errors"] += 1
            self.log.warning(
                "ttl_callable_failed",
                key_prefix=key_prefix(key),
                error=type(exc).__name__,
                detail=str(exc),
            )
            return MISSING

    async def _load_locked(
        self, key: str, loader: Loader, policy: LoadPolicy, l2: RedisCache, fill: FillToken
    ) -> Any:
        """Load under the cross-instance lease lock (see ``CacheManager.get_or_set``)."""
        cfg = self._config
        token = secrets.token_hex(16)
        started = self._timer()
        deadline = started + cfg.lock_timeout
        while True:
            try:
                acquired = await l2.try_lock(key, token, cfg.lock_lease)
            except BackendError:
                if l2.breaker_state is not BreakerState.CLOSED or self._timer() >= deadline:
                    return await self._call_and_store(key, loader, policy, fill)  # no lock
                # One slow reply is not an outage: try again (taking the lock is idempotent
                # per token) until the breaker says Redis is down or lock_timeout passes.
                acquired = False
            if acquired:
                break
            found = await self._cache.read(key, policy.tier, allow_stale=True, decode=policy.decode)
            if found is not None and found[1]:
                self._stats["lock_waits"] += 1
                return found[0]
            now = self._timer()
            if now >= deadline:
                self.log.warning("lock_wait_timeout", key_prefix=key_prefix(key))
                return await self._call_and_store(key, loader, policy, fill)
            # Poll again after a twentieth of the time waited so far (1 ms to 100 ms): the
            # value is seen at most ~5 % after the holder stored it (doubling delays made a
            # 50 ms load look like 75 ms in the other processes), and a long wait settles
            # at 10 polls a second.
            await anyio.sleep(min(0.1, max(0.001, (now - started) / 20)))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._renew_lease, l2, key, token)
                # The holder before us may have stored the value just before we got the lock.
                found = await self._cache.read(
                    key, policy.tier, allow_stale=True, decode=policy.decode
                )
                if found is not None and found[1]:
                    value = found[0]
                else:
                    value = await self._call_and_store(key, loader, policy, fill)
                tg.cancel_scope.cancel()
            return value
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(cfg.operation_timeout * 2):
                await l2.unlock(key, token)

    async def _renew_lease(self, l2: RedisCache, key: str, token: str) -> None:
        """Keep extending the lease while the loader runs; stop if it is no longer ours."""
        lease = self._config.lock_lease
        while True:
            await anyio.sleep(lease / 3)
            try:
                if not await l2.renew_lock(key, token, lease):
                    self.log.warning("lock_lost", key_prefix=key_prefix(key))
                    return
            except BackendError:
                continue
