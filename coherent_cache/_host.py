"""A detached host task: keeps an async context manager entered from `start` to `stop`."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any, final

import anyio

from .errors import CacheError

__all__ = ("DetachedHost",)

STOP_TIMEOUT = 10.0
"""Seconds `DetachedHost.stop` waits for the context manager to exit before cancelling."""


@final
class DetachedHost:
    """Enters an async context manager in a task of its own and leaves it on `stop`.

    This is the one plain-asyncio task of the package, on purpose: `CacheManager.start`
    returns while its background tasks keep running, and `stop` may be called from
    another task (FastAPI runs startup and shutdown handlers in different tasks). anyio
    has no detached task: every task belongs to a task group whose ``async with`` encloses
    it, and a task group must be exited by the task that entered it, so neither the
    caller of `start` nor any task group of ours can own the host. ``loop.create_task``
    gives the host a task of its own; it still enters the manager's anyio task group.
    """

    def __init__(self, name: str, logger: Any) -> None:
        self.name = name
        self.log = logger
        self._task: asyncio.Task[None] | None = None
        self._stop_requested = anyio.Event()

    @property
    def active(self) -> bool:
        """Whether a host task was started and not stopped."""
        return self._task is not None

    async def start(self, context: AbstractAsyncContextManager[Any]) -> None:
        """Enter ``context`` in the host task; return once it is entered.

        Raises:
            CacheError: a host is already running or starting.
            Exception: what entering ``context`` raised.
        """
        if self._task is not None:
            raise CacheError("start() is already in progress in another task")
        ready = anyio.Event()
        self._stop_requested = stop_requested = anyio.Event()
        failure: list[BaseException] = []

        async def host() -> None:
            try:
                async with context:
                    ready.set()
                    await stop_requested.wait()
            except Exception as exc:
                failure.append(exc)
            finally:
                ready.set()

        task = self._task = asyncio.get_running_loop().create_task(host(), name=self.name)
        try:
            await ready.wait()
        except BaseException:
            task.cancel()
            raise
        if failure:
            self._task = None
            raise failure[0]

    async def stop(self) -> None:
        """Leave the context in the host task; wait at most `STOP_TIMEOUT` s, then cancel it."""
        task = self._task
        if task is None:
            return
        self._task = None
        self._stop_requested.set()
        with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_TIMEOUT) as scope:
            await task
        if scope.cancelled_caught:
            task.cancel()
            self.log.error("cache_stop_timed_out")
