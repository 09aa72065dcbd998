"""Run background tasks in the manager's task group; restart crashed ones with backoff."""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypedDict, final

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._backoff import backoff_delay
from ._log import Logger, get_logger

__all__ = ()

log = get_logger()


class TaskState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    FAILED = "failed"
    STOPPED = "stopped"


class TaskInfo(TypedDict):
    state: str
    restarts: int
    last_error: str | None


class Supervisable(Protocol):
    def __call__(self, *, task_status: TaskStatus[None] = ...) -> Awaitable[None]: ...


@final
class _Status:
    """Forwards the first ``started()`` of a supervised function to ``tg.start``."""

    def __init__(self, outer: TaskStatus[None]) -> None:
        self.outer = outer
        self.done = False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            self.outer.started()


@final
class Supervisor:
    """Starts supervised loops in a task group and restarts them when they crash.

    A loop that raises an ``Exception`` is logged (``task_crashed``), counted, and started
    again after a jittered exponential backoff (0.1 s doubling up to ``backoff_max``).
    After ``max_restarts`` crashes in a row, each within ``stable_after`` seconds of its
    start, it is left ``failed`` (health reports it). Cancellation is never caught.
    """

    def __init__(
        self,
        tg: TaskGroup,
        *,
        backoff_max: float,
        max_restarts: int = 20,
        stable_after: float = 30.0,
        timer: Callable[[], float] = time.monotonic,
        logger: Logger | None = None,
    ) -> None:
        self.log: Logger = logger if logger is not None else log
        self._tg = tg
        self._backoff_max = backoff_max
        self._max_restarts = max_restarts
        self._stable_after = stable_after
        self._timer = timer
        self._random = random.Random()
        self.tasks: dict[str, TaskInfo] = {}

    async def start(self, name: str, func: Supervisable) -> None:
        """Start ``func`` supervised; return once it called ``task_status.started()``."""
        self.tasks[name] = {"state": TaskState.STARTING.value, "restarts": 0, "last_error": None}
        await self._tg.start(self._supervise, name, func)

    def start_soon(self, name: str, func: Supervisable) -> None:
        """Start ``func`` supervised without waiting for it to be ready."""
        self.tasks[name] = {"state": TaskState.STARTING.value, "restarts": 0, "last_error": None}
        self._tg.start_soon(self._supervise, name, func)

    async def _supervise(
        self,
        name: str,
        func: Supervisable,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        info = self.tasks[name]
        status = _Status(task_status)
        crashes = 0
        while True:
            began = self._timer()
            info["state"] = TaskState.RUNNING.value
            try:
                await func(task_status=status)
            except Exception as exc:
                info["restarts"] += 1
                info["last_error"] = f"{type(exc).__name__}: {exc}"
                crashes = 1 if self._timer() - began > self._stable_after else crashes + 1
                self.log.error("task_crashed", task=name, crashes=crashes, exc_info=exc)
                # Never leave tg.start() waiting on a loop that died before it was ready.
                status.started()
                if crashes > self._max_restarts:
                    info["state"] = TaskState.FAILED.value
                    self.log.error("task_failed", task=name, crashes=crashes)
                    return
                info["state"] = TaskState.BACKOFF.value
                await anyio.sleep(
                    backoff_delay(crashes - 1, base=0.1, cap=self._backoff_max, rng=self._random)
                )
                continue
            status.started()
            info["state"] = TaskState.STOPPED.value
            return

    def mark_stopped(self) -> None:
        """Record every loop not given up on as stopped (its task group was exited)."""
        for info in self.tasks.values():
            if info["state"] != TaskState.FAILED:
                info["state"] = TaskState.STOPPED

    def failed(self) -> list[str]:
        """Names of the loops given up on."""
        return [name for name, info in self.tasks.items() if info["state"] == TaskState.FAILED]
