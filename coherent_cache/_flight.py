"""Fill tokens and flights: the package's one single-flight primitive (anyio events)."""

from __future__ import annotations

from typing import Any, final

import anyio
import anyio.lowlevel

from .types import MISSING

__all__ = ("FillToken", "Flight")


@final
class FillToken:
    """One read or load of a key in flight whose result may be cached, unless made stale.

    `MultiTierCache.begin_fill` hands them out; any invalidation of the key before
    `MultiTierCache.end_fill` sets ``stale``, and a stale result is not installed.
    """

    __slots__ = ("stale",)

    def __init__(self) -> None:
        self.stale = False


@final
class Flight:
    """One operation of a key shared by every caller that joins it (single-flight).

    The caller that starts it sets `value` (or `error`) and then calls `finish`; joiners
    wait with `wait` or `result`. A joiner being cancelled never disturbs the flight (it
    only stops waiting). `value` stays `MISSING` when the operation ended without a result
    (its owner was cancelled): joiners then do the work themselves.

    The ``anyio.Event`` is made by the first joiner only: most flights (an L2 read of a
    key nobody else is reading) have none, and making one costs about 1.9 µs on asyncio
    against 0.4 µs for a bare future (measured, 20,000 creations, best of 10).
    """

    __slots__ = ("_done", "error", "fill", "finished", "value")

    def __init__(self, fill: FillToken) -> None:
        self.fill = fill
        self.value: Any = MISSING
        self.error: BaseException | None = None
        self.finished = False
        self._done: anyio.Event | None = None

    def finish(self) -> None:
        """Mark the flight ended and wake its joiners (call once `value` or `error` is set)."""
        self.finished = True
        if self._done is not None:
            self._done.set()

    async def wait(self) -> None:
        """Wait until the flight has ended (a checkpoint even if it has)."""
        if self.finished:
            await anyio.lowlevel.checkpoint()
            return
        if self._done is None:
            self._done = anyio.Event()
        await self._done.wait()

    async def result(self) -> Any:
        """Wait for the flight; return its value or raise its error."""
        await self.wait()
        if self.error is not None:
            raise self.error
        return self.value
