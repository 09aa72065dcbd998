"""The input side of a warm: reading a data source in batches, and argument checks."""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, final

import anyio

__all__ = (
    "Batches",
    "check_count",
    "check_fraction",
    "check_positive",
    "shown_key",
    "source_name",
)


def source_name(source: object) -> str:
    """A data source's name for the log events (its ``__name__``, else its type's)."""
    name = getattr(source, "__name__", None)
    return name if isinstance(name, str) and name else type(source).__qualname__


def shown_key(key: object) -> str:
    """How an item's key shows in the skipped list (``repr`` unless a str)."""
    return key if isinstance(key, str) else repr(key)


@final
class Batches:
    """Reads a data source ``size`` items at a time, so a large one never sits in memory."""

    def __init__(self, source: object) -> None:
        self._source = source
        self._aiter: AsyncIterator[object] | None = None
        self._iter: Iterator[object] | None = None

    async def open(self) -> None:
        produced: Any = self._source
        if callable(produced) and not isinstance(produced, AsyncIterable | Iterable):
            produced = produced()
            if inspect.isawaitable(produced):
                produced = await produced
        if isinstance(produced, AsyncIterable):
            self._aiter = aiter(produced)
        elif isinstance(produced, Iterable) and not isinstance(produced, str | bytes):
            self._iter = iter(produced)
        else:
            raise TypeError(
                "data_source must be an async function returning (key, value) items, an "
                f"async iterable or an iterable of them; got {type(produced).__qualname__}"
            )

    async def next(self, size: int) -> list[object]:
        if self._aiter is not None:
            batch: list[object] = []
            while len(batch) < size:
                try:
                    batch.append(await anext(self._aiter))
                except StopAsyncIteration:
                    break
            return batch
        assert self._iter is not None
        return list(itertools.islice(self._iter, size))

    async def aclose(self) -> None:
        """Finalise an async generator source now (it may hold a database cursor)."""
        closer = getattr(self._aiter if self._aiter is not None else self._iter, "aclose", None)
        if closer is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await closer()
        elif self._iter is not None and hasattr(self._iter, "close"):
            self._iter.close()


def check_count(what: str, count: object) -> None:
    """Raise ValueError unless ``count`` is a positive int."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{what} must be a positive int, got {count!r}")


def check_fraction(what: str, rate: object) -> None:
    """Raise ValueError unless ``rate`` is in (0, 1]."""
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1:
        raise ValueError(f"{what} must be in (0, 1], got {rate!r}")


def check_positive(what: str, seconds: object) -> None:
    """Raise ValueError unless ``seconds`` is a positive finite number."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 < seconds < math.inf
    ):
        raise ValueError(f"{what} must be a positive number of seconds, got {seconds!r}")
