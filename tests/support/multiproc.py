"""Drive `tests.support.worker` processes: one cache instance per OS process."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import orjson
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

ROOT = Path(__file__).resolve().parents[2]
MISSING = {"__missing__": True}


class WorkerError(RuntimeError):
    """A command failed inside the worker."""


class Worker:
    """A cache instance in a separate process (``python -m tests.support.worker``).

    Use ``async with Worker(redis_url=..., namespace=...) as b:`` and ``await b.call(...)``.
    Every wait is bounded by ``timeout``. The process inherits this one's environment
    without its ``OTEL_*`` variables, plus the variables of an opt-in ``_env`` mapping
    (e.g. `tests.support.otlp_receiver.otlp_environment`, which turns OTLP tracing on).
    """

    def __init__(self, *, timeout: float = 20.0, **config: Any) -> None:
        self.env: Mapping[str, str] = config.pop("_env", {})
        self.config = config
        self.timeout = timeout
        self.origin = ""
        self._ids = itertools.count(1)
        self._process: Process | None = None
        self._reader: BufferedByteReceiveStream | None = None

    async def __aenter__(self) -> Self:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env = {**inherited, **self.env, "PYTHONPATH": str(ROOT)}
        self._process = await anyio.open_process(
            [sys.executable, "-m", "tests.support.worker", orjson.dumps(self.config).decode()],
            cwd=ROOT,
            env=env,
            stderr=None,
        )
        assert self._process.stdout is not None
        self._reader = BufferedByteReceiveStream(self._process.stdout)
        with anyio.fail_after(self.timeout):
            while True:
                line = orjson.loads(await self._reader.receive_until(b"\n", 1 << 24))
                if line.get("ready"):
                    self.origin = line["origin"]
                    return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process = self._process
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                if process.stdin is not None:
                    await process.stdin.send(b'{"op": "exit"}\n')
                    await process.stdin.aclose()
                with anyio.fail_after(10):
                    await process.wait()
            except (TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                if process.returncode is None:  # not already killed by `kill`
                    process.kill()
                await process.wait()
            finally:
                await process.aclose()

    @property
    def pid(self) -> int:
        """The worker process's id."""
        assert self._process is not None
        return self._process.pid

    async def kill(self) -> None:
        """SIGKILL the worker (no clean stop: nothing of it runs after this) and reap it."""
        assert self._process is not None
        self._process.kill()
        with anyio.fail_after(self.timeout):
            await self._process.wait()

    async def call(self, op: str, **args: Any) -> Any:
        """Run one command in the worker and return its ``value``.

        Raises:
            WorkerError: the command raised inside the worker.
        """
        assert self._process is not None and self._process.stdin is not None
        assert self._reader is not None
        ident = next(self._ids)
        await self._process.stdin.send(orjson.dumps({"id": ident, "op": op, **args}) + b"\n")
        with anyio.fail_after(self.timeout):
            while True:
                reply = orjson.loads(await self._reader.receive_until(b"\n", 1 << 24))
                if reply.get("id") == ident:
                    break
        if not reply["ok"]:
            raise WorkerError(reply["error"])
        return reply["value"]
