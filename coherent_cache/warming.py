"""CacheWarmer: pre-load the cache in pipelined batches, now, in the background or on a schedule.

A warm is a *fill*, not a write: it stores values without a bus message, so a cold start
or a periodic re-warm of a million keys never becomes a broadcast storm. Use `set` for a
value that changed (other instances keep their L1 copies of a warmed key until they
expire).
"""

from __future__ import annotations

import inspect
import itertools
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import (
    Any,
    Concatenate,
    Final,
    Generic,
    ParamSpec,
    Protocol,
    TypeAlias,
    TypeVar,
    final,
    overload,
)

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from ._supervisor import Supervisor
from ._telemetry import Telemetry
from ._warm_input import (
    Batches,
    check_count,
    check_fraction,
    check_positive,
    shown_key,
    source_name,
)
from .config import CacheTier
from .errors import CacheClosedError, CacheError
from .keys import key_prefix, validate_key
from .l1 import InMemoryCache
from .multitier import MultiTierCache
from .types import TTL, USE_DEFAULT, check_ttl

__all__ = [
    "CacheWarmer",
    "DataSource",
    "ProgressCallback",
    "WarmHandle",
    "WarmItem",
    "WarmLauncher",
    "WarmResult",
    "WarmSchedule",
    "WarmTarget",
    "WarmerMethod",
]


WarmItem: TypeAlias = tuple[str, Any] | tuple[str, Any, float | None]
"""One entry to warm: ``(key, value)`` (the warm's ``ttl``) or ``(key, value, ttl)``."""

DataSource: TypeAlias = (
    Callable[[], Awaitable[Iterable[WarmItem]]]
    | Callable[[], AsyncIterable[WarmItem]]
    | AsyncIterable[WarmItem]
    | Iterable[WarmItem]
)
"""Where a warm reads its items: an async function returning them (the seed's form), an
async generator function, an async iterable, or a plain iterable."""

PROGRESS_LOG_INTERVAL: Final = 1.0
"""Seconds between two ``warm_progress`` log events (the first batch is always logged)."""
_LOGGED_SKIPS: Final = 10
"""Skipped items logged one by one per warm; the rest are only counted and reported."""


@final
@dataclass(frozen=True, slots=True)
class WarmResult:
    """What a warm did (so far, when passed to a progress callback).

    Attributes:
        written: items stored in the tiers asked for (for ``BOTH``: the L2 write succeeded).
        skipped: ``(key, reason)`` of every bad item (invalid key or TTL, unserialisable
            or oversized value, not a ``(key, value[, ttl])`` tuple); nothing was stored.
        failed: items whose L2 write failed (Redis down, timeout); their L1 part may still
            have been written.
        batches: batches processed, one pipelined L2 round trip each.
        duration: seconds since the warm started.
        l1_written: items installed into this instance's L1 (at most its size per warm,
            minus items whose key was invalidated while their batch was in flight).
        cancelled: the warm was cancelled before it finished (background warms).
    """

    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: int = 0
    batches: int = 0
    duration: float = 0.0
    l1_written: int = 0
    cancelled: bool = False


ProgressCallback: TypeAlias = Callable[[WarmResult], Awaitable[None] | None]
"""Called with the result so far after every batch; may be sync or async."""


@final
class _Tally:
    """The mutable counters behind `WarmResult` snapshots."""

    __slots__ = (
        "batches",
        "failed",
        "failing",
        "l1_written",
        "seen",
        "skipped",
        "started",
        "written",
    )

    def __init__(self) -> None:
        self.written = 0
        self.skipped: list[tuple[str, str]] = []
        self.failed = 0
        self.batches = 0
        self.l1_written = 0
        self.seen = 0
        self.failing = False
        self.started = time.monotonic()

    def snapshot(self, *, cancelled: bool = False) -> WarmResult:
        return WarmResult(
            written=self.written,
            skipped=list(self.skipped),
            failed=self.failed,
            batches=self.batches,
            duration=time.monotonic() - self.started,
            l1_written=self.l1_written,
            cancelled=cancelled,
        )


@final
@dataclass(frozen=True, slots=True)
class _Options:
    name: str
    batch_size: int
    ttl: float | None
    tier: CacheTier
    progress: ProgressCallback | None


@final
class _BadItem(Exception):
    """An item that is not a ``(key, value)`` or ``(key, value, ttl)`` sequence."""


@final
@dataclass(frozen=True, slots=True)
class WarmLauncher:
    """How a `CacheWarmer` starts background work in its manager.

    Attributes:
        task_group: the running manager's task group (background warms), or raises
            `CacheClosedError` when the manager is not running.
        supervisor: the running manager's supervisor (schedules), ``None`` before the
            manager starts (schedules then wait for `CacheWarmer.launch_schedules`); raises
            `CacheClosedError` once it was stopped.
    """

    task_group: Callable[[], TaskGroup]
    supervisor: Callable[[], Supervisor | None]


class WarmTarget(Protocol):
    """What a `CacheWarmer` warms: a `CacheManager` (its public surface)."""

    @property
    def running(self) -> bool: ...

    @property
    def log(self) -> Any: ...

    @property
    def l1(self) -> InMemoryCache: ...

    @property
    def multi_tier(self) -> MultiTierCache: ...

    @property
    def warmer(self) -> CacheWarmer: ...


P = ParamSpec("P")
R = TypeVar("R")


@final
class WarmerMethod(Generic[P, R]):
    """A `CacheManager` method that is the same method of the manager's `CacheWarmer`
    (``cache.warm_when(...)`` is ``cache.warmer.warm_when(...)``)."""

    def __init__(self, method: Callable[Concatenate[CacheWarmer, P], R]) -> None:
        self._method = method
        self.__doc__ = method.__doc__
        self.__wrapped__ = method

    @overload
    def __get__(self, manager: None, owner: type[Any] | None = None) -> WarmerMethod[P, R]: ...

    @overload
    def __get__(self, manager: WarmTarget, owner: type[Any] | None = None) -> Callable[P, R]: ...

    def __get__(self, manager: WarmTarget | None, owner: type[Any] | None = None) -> Any:
        if manager is None:
            return self
        return self._method.__get__(manager.warmer)


@final
class CacheWarmer:
    """Load many entries into a `CacheManager`'s tiers in pipelined batches.

    ``CacheWarmer(cache).warm_cache(data_source)`` is what ``cache.warm_cache(...)`` runs;
    the manager's ``warm_in_background``, ``schedule_warming`` and ``warm_when`` are the
    methods of the same names of its warmer (``cache.warmer``).

    Args:
        manager: the cache to warm (it must be running when a warm starts).
        telemetry: where the ``cache.warm`` spans go; the manager's (``manager.warmer``'s)
            when omitted.
        launcher: how background work starts in the manager; ``manager.warmer``'s when
            omitted.
    """

    def __init__(
        self,
        manager: WarmTarget,
        *,
        telemetry: Telemetry | None = None,
        launcher: WarmLauncher | None = None,
    ) -> None:
        self.manager = manager
        self.launcher: WarmLauncher = launcher if launcher is not None else manager.warmer.launcher
        """How background warms and schedules start in the manager."""
        self.telemetry: Telemetry = telemetry if telemetry is not None else manager.warmer.telemetry
        """The instrumentation of the ``cache.warm`` spans."""
        self._schedules: dict[str, WarmSchedule] = {}

    async def warm_cache(
        self,
        data_source: DataSource,
        batch_size: int = 100,
        *,
        ttl: TTL = USE_DEFAULT,
        tier: CacheTier = CacheTier.BOTH,
        progress: ProgressCallback | None = None,
        name: str | None = None,
    ) -> WarmResult:
        """Store every ``(key, value)`` or ``(key, value, ttl)`` item of ``data_source``.

        Items are read ``batch_size`` at a time; each batch is written to L2 in one
        pipelined round trip (``SET key payload PX ttl`` per item, no PUBLISH) and the first
        ``memory_cache_size`` items of the warm are also installed into this instance's L1,
        unless their key is invalidated while their batch is in flight. Bad items are
        skipped and reported; an L2 outage marks the batch's items failed and the warm goes
        on with the next batch.

        Args:
            data_source: an async function returning an iterable of items (the seed's form),
                an async generator function, an async iterable or an iterable.
            batch_size: items per batch (per L2 round trip).
            ttl: TTL of items without their own; ``default_ttl`` by default, ``None``: none.
            tier: ``BOTH`` (default), ``L1`` (this instance only) or ``L2`` (Redis only;
                this instance's L1 copies of the keys are dropped).
            progress: called with the `WarmResult` so far after every batch.
            name: shown in the log events; the data source's name by default.

        Returns:
            What was written, skipped and failed.

        Raises:
            CacheClosedError: the manager is not running (or stopped during the warm).
            InvalidTTLError: ``ttl`` is not positive.
            ValueError: ``batch_size`` is not a positive int.
            TypeError: ``data_source`` is none of the forms above.
            Exception: whatever ``data_source`` or ``progress`` raised.
        """
        opts = self._options(data_source, batch_size, ttl, tier, progress, name)
        return await self._warm(data_source, opts, _Tally())

    def _options(
        self,
        data_source: object,
        batch_size: int,
        ttl: TTL,
        tier: CacheTier,
        progress: ProgressCallback | None,
        name: str | None,
    ) -> _Options:
        check_count("batch_size", batch_size)
        return _Options(
            name=name if name is not None else source_name(data_source),
            batch_size=batch_size,
            ttl=self.manager.multi_tier.resolve_ttl(ttl),
            tier=CacheTier(tier),
            progress=progress,
        )

    async def _warm(self, source: object, opts: _Options, tally: _Tally) -> WarmResult:
        with self.telemetry.span(
            "cache.warm", {"cache.warm.name": opts.name, "cache.warm.batch_size": opts.batch_size}
        ) as span:
            result = await self._warm_batches(source, opts, tally)
            if span.is_recording():
                span.set_attributes(
                    {
                        "cache.warm.written": result.written,
                        "cache.warm.skipped": len(result.skipped),
                        "cache.warm.failed": result.failed,
                        "cache.warm.batches": result.batches,
                    }
                )
            return result

    async def _warm_batches(self, source: object, opts: _Options, tally: _Tally) -> WarmResult:
        if not self.manager.running:
            raise CacheClosedError("cannot warm a CacheManager that is not running")
        tally.started = time.monotonic()
        batches = Batches(source)
        l1_budget = self.manager.l1.maxsize
        last_log = -math.inf
        try:
            await batches.open()
            while batch := await batches.next(opts.batch_size):
                if not self.manager.running:
                    raise CacheClosedError("the CacheManager stopped during the warm")
                l1_budget = await self._write_batch(batch, opts, tally, l1_budget)
                tally.batches += 1
                now = time.monotonic()
                if now - last_log >= PROGRESS_LOG_INTERVAL:
                    last_log = now
                    self.manager.log.info(
                        "warm_progress",
                        warmer=opts.name,
                        batches=tally.batches,
                        written=tally.written,
                        skipped=len(tally.skipped),
                        failed=tally.failed,
                        elapsed=round(now - tally.started, 3),
                    )
                if opts.progress is not None:
                    outcome = opts.progress(tally.snapshot())
                    if inspect.isawaitable(outcome):
                        await outcome
        except anyio.get_cancelled_exc_class():
            self.manager.log.info("warm_cancelled", warmer=opts.name, batches=tally.batches)
            raise
        except Exception as exc:
            self.manager.log.warning(
                "warm_failed",
                warmer=opts.name,
                error=type(exc).__name__,
                detail=str(exc),
                batches=tally.batches,
                written=tally.written,
            )
            raise
        finally:
            await batches.aclose()
        result = tally.snapshot()
        self.manager.log.info(
            "warm_done",
            warmer=opts.name,
            batches=result.batches,
            written=result.written,
            skipped=len(result.skipped),
            failed=result.failed,
            l1_written=result.l1_written,
            duration=round(result.duration, 3),
        )
        return result

    def _prepare(
        self, item: object, opts: _Options, tally: _Tally
    ) -> tuple[str, bytes, float | None, bytes] | None:
        """``(key, payload, ttl, json)`` of a good item; a bad one is recorded, ``None``."""
        index = tally.seen
        tally.seen += 1
        key: object = f"<item {index}>"
        try:
            if not isinstance(item, tuple | list) or len(item) not in (2, 3):
                raise _BadItem("expected a (key, value) or (key, value, ttl) tuple")
            key = item[0]
            validate_key(key)
            assert isinstance(key, str)
            seconds = opts.ttl if len(item) == 2 else check_ttl(item[2])
            serializer = self.manager.multi_tier.serializer
            raw = serializer.dumps(item[1], key=key)
            return key, serializer.pack(raw, key=key), seconds, raw
        except (CacheError, _BadItem) as exc:
            shown = shown_key(key)
            tally.skipped.append((shown, f"{type(exc).__name__}: {exc}"))
            if len(tally.skipped) <= _LOGGED_SKIPS:
                self.manager.log.warning(
                    "warm_item_skipped",
                    warmer=opts.name,
                    key_prefix=key_prefix(shown),
                    error=type(exc).__name__,
                )
            return None

    async def _write_batch(
        self, batch: list[object], opts: _Options, tally: _Tally, l1_budget: int
    ) -> int:
        """Write one batch; return what is left of the L1 budget."""
        multi = self.manager.multi_tier
        prepared = [p for p in (self._prepare(item, opts, tally) for item in batch) if p]
        if opts.tier is CacheTier.L2 and multi.l2 is None:
            tally.failed += len(prepared)  # no L2 configured
            return l1_budget
        installed, l1_budget, error = await multi.store_fills(prepared, opts.tier, l1_budget)
        tally.l1_written += installed
        if error is None:
            tally.written += len(prepared)
        else:
            if not tally.failing:  # once per run of failed batches, not once per batch
                self.manager.log.warning(
                    "warm_batch_failed",
                    warmer=opts.name,
                    batch=tally.batches + 1,
                    items=len(prepared),
                    error=type(error).__name__,
                    detail=str(error),
                )
            tally.failed += len(prepared)
        tally.failing = error is not None
        return l1_budget

    # -- background work (driven by CacheManager) ---------------------------------------------

    def warm_in_background(
        self,
        data_source: DataSource,
        batch_size: int = 100,
        *,
        ttl: TTL = USE_DEFAULT,
        tier: CacheTier = CacheTier.BOTH,
        progress: ProgressCallback | None = None,
        name: str | None = None,
    ) -> WarmHandle:
        """Start `warm_cache` in the manager's task group and return at once.

        ``await handle.wait()`` gives its `WarmResult` or raises its exception;
        ``handle.cancel()`` stops it. A failing warm is logged and kept in the handle; it
        never disturbs the manager. Stopping the manager cancels it.

        Raises:
            CacheClosedError: the manager is not running.
        """
        tg = self.launcher.task_group()
        opts = self._options(data_source, batch_size, ttl, tier, progress, name)
        handle = WarmHandle(opts.name)
        tg.start_soon(handle._run, self, data_source, opts, name=f"warm:{opts.name}")
        return handle

    def schedule_warming(
        self,
        data_source: DataSource,
        *,
        every: float,
        on_start: bool = False,
        name: str | None = None,
        batch_size: int = 100,
        ttl: TTL = USE_DEFAULT,
        tier: CacheTier = CacheTier.BOTH,
    ) -> WarmSchedule:
        """Re-run a warm every ``every`` seconds (and once at start with ``on_start``).

        Supervised as the task ``warm:<name>`` (``get_stats()["tasks"]``); a failing run is
        logged and counted in the returned `WarmSchedule`, which `WarmSchedule.cancel`
        stops. May be called before `start`: it begins when the manager starts.
        ``data_source`` is read again on every run, so it must be a function (or a
        re-iterable), not an iterator.

        Raises:
            CacheClosedError: the manager was stopped.
            ValueError, TypeError: bad arguments.
        """
        return self._add_schedule(
            data_source, name=name, batch_size=batch_size, ttl=ttl, tier=tier, every=every,
            on_start=on_start,
        )  # fmt: skip

    def warm_when(
        self,
        data_source: DataSource,
        *,
        hit_rate_below: float | None = 0.5,
        on_start: bool = False,
        check_every: float = 10.0,
        min_requests: int = 100,
        name: str | None = None,
        batch_size: int = 100,
        ttl: TTL = USE_DEFAULT,
        tier: CacheTier = CacheTier.BOTH,
    ) -> WarmSchedule:
        """Warm when the L1 hit rate drops below ``hit_rate_below``, and/or on start.

        Every ``check_every`` seconds the L1 hit rate since the previous check (or warm)
        is computed; once that window holds at least ``min_requests`` lookups and its rate
        is below the threshold, the warm runs. ``on_start=True`` also warms once as soon as
        the manager runs; ``hit_rate_below=None, on_start=True`` warms on start only.
        Supervised and cancellable like `schedule_warming`.

        Raises:
            CacheClosedError: the manager was stopped.
            ValueError, TypeError: bad arguments, or neither a threshold nor ``on_start``.
        """
        return self._add_schedule(
            data_source, name=name, batch_size=batch_size, ttl=ttl, tier=tier,
            hit_rate_below=hit_rate_below, check_every=check_every, min_requests=min_requests,
            on_start=on_start,
        )  # fmt: skip

    def _add_schedule(
        self,
        data_source: DataSource,
        *,
        name: str | None,
        batch_size: int,
        ttl: TTL,
        tier: CacheTier,
        every: float | None = None,
        hit_rate_below: float | None = None,
        check_every: float = 10.0,
        min_requests: int = 100,
        on_start: bool = False,
    ) -> WarmSchedule:
        supervisor = self.launcher.supervisor()  # raises once the manager was stopped
        if isinstance(data_source, Iterator | AsyncIterator):
            raise TypeError(
                "a scheduled warmer reads its data source on every run: pass an async "
                "function (or a re-iterable), not an iterator"
            )
        if every is not None:
            check_positive("every", every)
        if hit_rate_below is not None:
            check_fraction("hit_rate_below", hit_rate_below)
        check_positive("check_every", check_every)
        check_count("min_requests", min_requests)
        if every is None and hit_rate_below is None and not on_start:
            raise ValueError("nothing would trigger this warmer: give hit_rate_below or on_start")
        opts = self._options(data_source, batch_size, ttl, tier, None, name)
        unique = opts.name
        if unique in self._schedules:
            if name is not None:
                raise ValueError(f"a warmer named {name!r} is already scheduled")
            base = unique
            unique = next(
                f"{base}-{n}" for n in itertools.count(2) if f"{base}-{n}" not in self._schedules
            )
        schedule = WarmSchedule(
            self,
            data_source,
            _Options(unique, opts.batch_size, opts.ttl, opts.tier, None),
            every=every,
            hit_rate_below=hit_rate_below,
            check_every=check_every,
            min_requests=min_requests,
            on_start=on_start,
        )
        self._schedules[unique] = schedule
        if supervisor is not None:
            schedule._launch(supervisor)
        return schedule

    def launch_schedules(self, supervisor: Supervisor) -> None:
        """Start the schedules registered before the manager started (the manager calls
        this once it runs)."""
        for schedule in list(self._schedules.values()):
            schedule._launch(supervisor)


@final
class WarmHandle:
    """A warm running in the background (from `CacheManager.warm_in_background`).

    ``await handle.wait()`` returns its `WarmResult` (``cancelled=True`` if it was cancelled
    or the manager stopped) or raises what the warm raised; ``handle.cancel()`` stops it
    at its next await. A failing warm never disturbs the manager.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        """The warm's name (``warm:<name>`` in log events as ``warmer``)."""
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._tally = _Tally()
        self._result: WarmResult | None = None
        self._error: Exception | None = None

    def __repr__(self) -> str:
        state = (
            "running"
            if not self.done
            else "failed"
            if self._error is not None
            else "cancelled"
            if self.cancelled
            else "done"
        )
        return f"<WarmHandle {self.name!r} {state}>"

    def cancel(self) -> None:
        """Stop the warm; what was written stays written. Does nothing once it is done."""
        self._scope.cancel()

    @property
    def done(self) -> bool:
        """Whether the warm finished, failed or was cancelled."""
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        """Whether the warm was cancelled (by `cancel` or by the manager stopping)."""
        return self._result is not None and self._result.cancelled

    @property
    def error(self) -> Exception | None:
        """What the warm raised, once it failed."""
        return self._error

    @property
    def result(self) -> WarmResult | None:
        """The final result, or ``None`` while running or after a failure."""
        return self._result

    def progress(self) -> WarmResult:
        """The result so far (the final one once done)."""
        return self._result if self._result is not None else self._tally.snapshot()

    async def wait(self) -> WarmResult:
        """Wait for the warm to end; return its result (partial if cancelled).

        Raises:
            Exception: what the warm raised (its data source, its progress callback).
        """
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    async def _run(self, warmer: CacheWarmer, source: object, opts: _Options) -> None:
        try:
            with self._scope:
                self._result = await warmer._warm(source, opts, self._tally)
        except Exception as exc:  # logged by _warm; reported here, never to the manager
            self._error = exc
        finally:
            if self._result is None and self._error is None:
                self._result = self._tally.snapshot(cancelled=True)
            self._done.set()


@final
class WarmSchedule:
    """A warmer run periodically or on a condition (`CacheManager.schedule_warming`,
    `CacheManager.warm_when`), supervised as the task ``warm:<name>``.

    A run that raises is logged (``warm_failed``), counted in `failures` and kept in
    `last_error`; the schedule carries on. `cancel` stops it for good.
    """

    def __init__(
        self,
        warmer: CacheWarmer,
        source: object,
        opts: _Options,
        *,
        every: float | None,
        hit_rate_below: float | None,
        check_every: float,
        min_requests: int,
        on_start: bool,
    ) -> None:
        self.name = opts.name
        """Unique per manager; the supervised task is ``warm:<name>``."""
        self.runs = 0
        """Warms that completed."""
        self.failures = 0
        """Warms that raised."""
        self.last_result: WarmResult | None = None
        self.last_error: Exception | None = None
        self._warmer = warmer
        self._source = source
        self._opts = opts
        self._every = every
        self._hit_rate_below = hit_rate_below
        self._check_every = check_every
        self._min_requests = min_requests
        self._on_start = on_start
        self._scope: anyio.CancelScope | None = None  # made in _run: this may run before a loop
        self._launched = False
        self._cancelled = False

    def __repr__(self) -> str:
        return f"<WarmSchedule {self.name!r} runs={self.runs} failures={self.failures}>"

    @property
    def task(self) -> str:
        """Its name in ``get_stats()["tasks"]``."""
        return f"warm:{self.name}"

    @property
    def cancelled(self) -> bool:
        """Whether `cancel` was called."""
        return self._cancelled

    def cancel(self) -> None:
        """Stop the schedule (a warm in progress is cancelled; written items stay)."""
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()
        if self._warmer._schedules.get(self.name) is self:
            del self._warmer._schedules[self.name]

    def _launch(self, supervisor: Supervisor) -> None:
        if not self._launched:
            self._launched = True
            supervisor.start_soon(self.task, self._run)

    async def _run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The supervised loop.

        Error handling: a failing warm is logged and counted and the loop goes on at its
        next period or check; only a bug in the loop itself reaches the supervisor.
        """
        task_status.started()
        with anyio.CancelScope() as self._scope:
            if self._cancelled:
                return
            if self._on_start:
                self._on_start = False  # not again after a supervisor restart
                await self._warm_once()
            if self._every is not None:
                while True:
                    await anyio.sleep(self._every)
                    await self._warm_once()
            elif self._hit_rate_below is not None:
                await self._watch(self._hit_rate_below)

    async def _watch(self, threshold: float) -> None:
        """Warm when the L1 hit rate since the last check (or warm) drops below ``threshold``.

        The window grows until it holds ``min_requests`` lookups, so a quiet instance never
        warms on a handful of misses.
        """
        l1 = self._warmer.manager.l1
        stats = l1.get_stats()
        hits0, misses0 = stats["hits"], stats["misses"]
        while True:
            await anyio.sleep(self._check_every)
            stats = l1.get_stats()
            hits, misses = stats["hits"] - hits0, stats["misses"] - misses0
            if hits + misses < self._min_requests:
                continue
            rate = hits / (hits + misses)
            if rate < threshold:
                self._warmer.manager.log.info(
                    "warm_triggered",
                    warmer=self.name,
                    hit_rate=round(rate, 4),
                    threshold=threshold,
                    requests=hits + misses,
                )
                await self._warm_once()
                stats = l1.get_stats()
            hits0, misses0 = stats["hits"], stats["misses"]

    async def _warm_once(self) -> None:
        try:
            result = await self._warmer._warm(self._source, self._opts, _Tally())
        except Exception as exc:  # logged by _warm
            self.failures += 1
            self.last_error = exc
        else:
            self.runs += 1
            self.last_result = result
