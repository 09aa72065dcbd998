"""Fill tokens and flights: the package's one single-flight primitive (anyio events)."""

from __future__ import annotations

from typing import Any, final

import anyio

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

    The caller that starts it sets `value` (or `error`) and then `done`; joiners wait on
    `result`. A joiner being cancelled never disturbs the flight (it only stops waiting).
    `value` stays `MISSING` when the operation ended without a result (its owner was
    cancelled): joiners then do the work themselves.
    """

    __slots__ = ("done", "error", "fill", "value")

    def __init__(self, fill: FillToken) -> None:
        self.fill = fill
        self.done = anyio.Event()
        self.value: Any = MISSING
        self.error: BaseException | None = None

    async def result(self) -> Any:
        """Wait for the flight; return its value or raise its error."""
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value
