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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, final

import anyio
import structlog
from anyio.abc import TaskGroup

from ._breaker import BreakerState
from ._flight import FillToken, Flight
from ._telemetry import Telemetry
from ._typed import Decoder
from .config import CacheConfig, CacheTier
from .errors import BackendError, CacheClosedError, InvalidTTLError, SerializationError
from .keys import key_prefix, validate_key, validate_tags
from .l2 import RedisCache
from .monitoring import LoaderStats
from .multitier import MultiTierCache
from .types import MISSING, NOT_LOOKED, check_ttl

__all__ = ("LoadEngine", "LoadPolicy", "Outcome")

Outcome = Literal["hit", "stale", "miss"]
"""How a load was answered: a fresh hit, a stale value, or a miss (the loader's result)."""

Loader = Callable[[], Awaitable[Any]]


def check_jitter(jitter: object) -> float:
    """``jitter`` as a fraction in [0, 1), else `InvalidTTLError`."""
    if isinstance(jitter, bool) or not isinstance(jitter, int | float):
        raise InvalidTTLError(f"ttl_jitter must be a number, got {jitter!r}", ttl=jitter)
    if not 0 <= jitter < 1:
        raise InvalidTTLError(
            f"ttl_jitter must be a fraction in [0, 1), got {jitter!r}", ttl=jitter
        )
    return float(jitter)


@final
@dataclass(frozen=True, slots=True)
class LoadPolicy:
    """Every option of a load, checked when built (``get_or_set`` documents each).

    ``ttl`` is resolved (``default_ttl`` already substituted for `USE_DEFAULT`) and
    ``lock`` too (``lock_by_default`` for ``None``).

    Raises:
        InvalidTTLError: ``ttl``, ``stale_ttl`` or ``loader_timeout`` is not a positive
            number (``ttl`` may be ``None``), or ``ttl_jitter`` is not in [0, 1).
        InvalidKeyError: a tag is not a valid tag.
    """

    ttl: float | None
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

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "ttl", check_ttl(self.ttl))
        if self.stale_ttl is not None:
            set_(self, "stale_ttl", check_ttl(self.stale_ttl))
        if self.loader_timeout is not None:
            check_ttl(self.loader_timeout)
        set_(self, "ttl_jitter", check_jitter(self.ttl_jitter))
        set_(self, "tier", CacheTier(self.tier))
        set_(self, "tags", validate_tags(self.tags))

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
        logger: Any = None,
        timer: Callable[[], float] = time.monotonic,
        closed_error: Callable[[], CacheClosedError] = lambda: CacheClosedError("closed"),
    ) -> None:
        self._cache = cache
        self._l2: RedisCache | None = cache.l2
        self._config = config
        self._telemetry = telemetry
        self.log = logger if logger is not None else structlog.get_logger("coherent_cache")
        self._timer = timer
        self._closed_error = closed_error
        self._tg: TaskGroup | None = None
        self._flights: dict[str, Flight] = {}
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
    ) -> Any:
        """A whole load after `fast_hit` returned `NOT_LOOKED` (or for ``tier=L2``).

        Raises the closed error when closed; traces the call (``get_or_set`` span) when
        telemetry is on. ``key`` is validated and ``policy()`` built only after an L1 miss.
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
                return await flight.result(), "miss"
        else:
            found = await cache.read(key, policy.tier, allow_stale=True, decode=policy.decode)
        if found is not None:
            value, fresh = found
            if fresh:
                self._stats["hits"] += 1
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
        return await self._flight(key, loader, policy).result(), "miss"

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
        self, key: str, loader: Loader, policy: LoadPolicy, flight: Flight
    ) -> None:
        try:
            flight.value = await self._load(key, loader, policy, flight.fill)
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
        ttl = policy.ttl
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
