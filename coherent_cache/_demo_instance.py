"""One app instance of ``coherent-cache demo`` in its own OS process, and its remote control.

The demo runs ``python -m coherent_cache._demo_instance '<CacheConfig fields as JSON>'``
twice. The instance writes ``{"ready": true, "pid": ..., "origin": ...}`` once its manager
has started, then answers each stdin line ``{"op": ..., ...}`` with one stdout line
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``; ``arm`` first writes
``{"armed": true}`` and replies when the watched keys are gone from its L1. Durations are
measured here with ``time.perf_counter()``; instants are ``time.monotonic()``
(CLOCK_MONOTONIC is system-wide on Linux, so the demo compares them across processes, as
benchmarks/standalone/coherence.py does). The instance exits on EOF of stdin or ``{"op": "exit"}``;
its logs go to stderr, stdout carries the protocol only.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import TracebackType
from typing import Any, Final, Self

import anyio
import anyio.lowlevel
import orjson
import structlog
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from .config import CacheConfig
from .manager import CacheManager, create_cache_manager

__all__ = ()

MISSING: Final = object()
HIT_ROUNDS: Final = 2000
REPLY_TIMEOUT: Final = 15.0
"""Seconds the demo waits for an instance to start or answer before giving up on it."""


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


async def _timed_get(cache: CacheManager, key: str) -> dict[str, Any]:
    """Read ``key``; say how long it took and which tier answered."""
    in_l1 = cache.l1.peek(key, MISSING) is not MISSING
    started = time.perf_counter()
    value = await cache.get(key, default=MISSING)
    took = time.perf_counter() - started
    found = value is not MISSING
    source = "L1" if in_l1 else "L2" if found and cache.l2 is not None else "miss"
    return {
        "value": value if found else None,
        "seconds": took,
        "from": source,
        "held": cache.l1.peek(key, MISSING) is not MISSING,
    }


async def _handle(cache: CacheManager, cmd: dict[str, Any]) -> dict[str, Any]:
    """Run one command; durations and instants are this process's clocks."""
    op = cmd["op"]
    if op == "get":
        return await _timed_get(cache, cmd["key"])
    if op == "hits":
        key = cmd["key"]
        rounds = int(cmd.get("rounds", HIT_ROUNDS))
        started = time.perf_counter()
        for _ in range(rounds):
            await cache.get(key)
        return {"seconds": (time.perf_counter() - started) / rounds, "rounds": rounds}
    if op == "hold":
        # Read until L1 holds the key: a first fill is dropped on purpose when the writer's
        # own invalidation arrives during it (the fill-race guard).
        with anyio.fail_after(5):
            while cache.l1.peek(cmd["key"], MISSING) is MISSING:
                await cache.get(cmd["key"])
        return {}
    if op == "arm":
        keys: list[str] = cmd["keys"]
        _send({"armed": True})
        deadline = time.monotonic() + float(cmd.get("within", 5))
        while any(cache.l1.peek(k, MISSING) is not MISSING for k in keys):
            if time.monotonic() > deadline:
                return {"gone": None}
            await anyio.lowlevel.checkpoint()
        return {"gone": time.monotonic()}
    if op in ("set", "delete", "clear_pattern", "clear"):
        started = time.monotonic()
        if op == "set":
            result: object = await cache.set(cmd["key"], cmd["value"], ttl=cmd.get("ttl", 300))
        elif op == "delete":
            result = await cache.delete(cmd["key"])
        elif op == "clear_pattern":
            result = await cache.clear_pattern(cmd["pattern"])
        else:
            result = await cache.clear()
        return {"result": result, "started": started, "returned": time.monotonic()}
    if op == "health":
        report = await cache.health()
        return {"status": report["status"], "reasons": report["reasons"]}
    if op == "stats":
        stats = await cache.get_stats()
        l1, l2, bus = stats["l1_cache"], stats["l2_cache"], stats["bus"]
        return {
            "l1": {k: l1[k] for k in ("hits", "misses", "size")},
            "l2": {k: l2[k] for k in ("connected", "errors", "breaker")},
            "totals": {
                "hits": stats["total_hits"],
                "misses": stats["total_misses"],
                "sets": stats["total_sets"],
            },
            "bus": {
                "published": bus["published"],
                "applied": bus["applied"],
                "connected": bus["connected"],
            },
        }
    raise ValueError(f"unknown op {op!r}")


async def _serve(fields: dict[str, Any]) -> None:
    """Start a manager and answer commands until stdin closes or an ``exit`` command."""
    async with create_cache_manager(CacheConfig(**fields)) as cache:
        _send({"ready": True, "pid": os.getpid(), "origin": cache.origin})
        async for line in anyio.wrap_file(sys.stdin):
            if not line.strip():
                continue
            cmd = orjson.loads(line)
            if cmd.get("op") == "exit":
                break
            try:
                reply = {"ok": True, **await _handle(cache, cmd)}
            except Exception as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            _send(reply)


class DemoInstanceError(RuntimeError):
    """An instance failed a command, exited, or did not answer in time."""


class DemoInstance:
    """The demo's handle on one instance process: ``async with DemoInstance(name, fields)``.

    Leaving the block closes the instance's stdin (it stops its manager and exits) and waits
    for it; on an error, or if it does not exit within a few seconds, it is killed.
    """

    def __init__(self, name: str, fields: dict[str, Any]) -> None:
        self.name = name
        self.fields = fields
        self.pid = 0
        self.origin = ""
        self._process: Process | None = None
        self._reader: BufferedByteReceiveStream | None = None

    async def __aenter__(self) -> Self:
        self._process = await anyio.open_process(
            [sys.executable, "-m", __name__, orjson.dumps(self.fields).decode()],
            stderr=None,  # the instance's logs go to the demo's stderr
        )
        try:
            assert self._process.stdout is not None
            self._reader = BufferedByteReceiveStream(self._process.stdout)
            ready = await self.reply()
            self.pid, self.origin = int(ready["pid"]), str(ready["origin"])
        except BaseException:
            await self._stop(kill=True)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop(kill=exc is not None)

    async def _stop(self, *, kill: bool) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        with anyio.CancelScope(shield=True):
            try:
                if kill:
                    process.kill()
                elif process.stdin is not None:
                    await process.stdin.aclose()  # EOF: the instance stops and exits
                with anyio.fail_after(5):
                    await process.wait()
            except (TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                process.kill()
                await process.wait()
            finally:
                await process.aclose()

    async def send(self, op: str, **args: Any) -> None:
        """Send one command without waiting for its reply."""
        if self._process is None or self._process.stdin is None:
            raise DemoInstanceError(f"instance {self.name} is not running")
        await self._process.stdin.send(orjson.dumps({"op": op, **args}) + b"\n")

    async def reply(self) -> dict[str, Any]:
        """The next line from the instance.

        Raises:
            DemoInstanceError: the command failed, the instance exited or was too slow.
        """
        assert self._reader is not None
        try:
            with anyio.fail_after(REPLY_TIMEOUT):
                line: dict[str, Any] = orjson.loads(
                    await self._reader.receive_until(b"\n", 1 << 20)
                )
        except (TimeoutError, anyio.EndOfStream, anyio.IncompleteRead) as exc:
            raise DemoInstanceError(
                f"instance {self.name} (pid {self.pid or '?'}) did not answer: {type(exc).__name__}"
            ) from None
        if line.get("ok") is False:
            raise DemoInstanceError(f"instance {self.name}: {line['error']}")
        return line

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Run one command and return its reply."""
        await self.send(op, **args)
        return await self.reply()


def log_to_stderr() -> None:
    """Send the library's log events to stderr, warnings and up only.

    stdout carries the command's output (the demo's narrative, ``watch``'s JSON lines,
    an instance's protocol) and must stay parseable; structlog's default prints every
    level to stdout. Only the commands call this, as the application they are.
    """
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )


if __name__ == "__main__":
    log_to_stderr()
    anyio.run(_serve, orjson.loads(sys.argv[1]))
