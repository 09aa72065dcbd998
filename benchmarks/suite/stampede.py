"""Stampede rows: 200 callers on one cold key, a 50 ms loader, in one and across 3 processes.

Three worker processes (`benchmarks.workers._stampede_worker`) each set every system up once.
Per round and system, with a new argument each time: the one-process row sends 200
callers to worker 0; the three-process row sends 67 + 67 + 66 to the three workers. Every
worker starts its callers at the same ``time.monotonic()`` instant (one clock for all
processes on Linux); wall time = the last caller's end - that instant. Loader calls are
summed over the processes; errors are exceptions and wrong values returned.
"""

from __future__ import annotations

import itertools
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import orjson
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from benchmarks.suite._common import ROOT, ratio, spread

CALLERS: Final = 200
PROCESSES: Final = 3
LOADER_MS: Final = 50.0
ROWS: Final = {
    "stampede_1p": "stampede, 200 callers, one cold key, 50 ms loader, one process",
    "stampede_3p": "stampede, the same across 3 processes",
}


class Worker:
    """One worker process; every wait is bounded."""

    def __init__(
        self, args: dict[str, Any], module: str = "benchmarks.workers._stampede_worker"
    ) -> None:
        self.args = args
        self.module = module
        self.process: Process | None = None
        self.reader: BufferedByteReceiveStream | None = None
        self.systems: list[str] = []

    async def start(self) -> None:
        self.process = await anyio.open_process(
            [sys.executable, "-m", self.module, orjson.dumps(self.args).decode()],
            cwd=ROOT,
            stderr=None,
        )
        assert self.process.stdout is not None
        self.reader = BufferedByteReceiveStream(self.process.stdout)
        with anyio.fail_after(60):
            hello = await self.read()
        self.systems = hello.get("systems", [])

    async def read(self) -> dict[str, Any]:
        """The next protocol line (a JSON object); other output (a log line) goes to stderr."""
        assert self.reader is not None
        while True:
            line = await self.reader.receive_until(b"\n", 1 << 20)
            if line.startswith(b"{"):
                doc: dict[str, Any] = orjson.loads(line)
                return doc
            sys.stderr.write(f"[worker] {line.decode(errors='replace')}\n")

    async def send(self, cmd: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        await self.process.stdin.send(orjson.dumps(cmd) + b"\n")

    async def stop(self) -> None:
        process, self.process = self.process, None
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
                process.kill()
                with anyio.move_on_after(5):
                    await process.wait()
            finally:
                with anyio.move_on_after(5):
                    await process.aclose()


@dataclass
class Trials:
    """The rounds of one system in one row."""

    wall_ms: list[float] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None


async def trial(workers: list[Worker], system: str, arg: int, trials: Trials) -> None:
    """One stampede: callers split over ``workers``, all starting at one instant."""
    share = [CALLERS // len(workers) + (i < CALLERS % len(workers)) for i in range(len(workers))]
    at = time.monotonic() + 0.05
    for worker, callers in zip(workers, share, strict=True):
        await worker.send({"op": "run", "system": system, "arg": arg, "callers": callers, "at": at})
    with anyio.fail_after(60):
        replies = [await worker.read() for worker in workers]
    trials.wall_ms.append((max(r["end"] for r in replies) - at) * 1000)
    trials.calls.append(sum(r["calls"] or 0 for r in replies))
    trials.errors += sum(r["errors"] for r in replies)
    trials.first_error = trials.first_error or next(
        (r["first_error"] for r in replies if r["first_error"]), None
    )


async def measure(
    url: str, *, rounds: int, progress: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Run ``rounds`` rounds of every system in both rows; one record per row and system."""
    token = secrets.token_hex(4)
    workers = [Worker({"url": url, "token": token}) for _ in range(PROCESSES)]
    results: dict[tuple[str, str], Trials] = {}
    args = itertools.count(1)
    try:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for worker in workers:
                    tg.start_soon(worker.start)
        systems = workers[0].systems
        for n in range(-1, rounds):  # round -1 warms every system up, not recorded
            if progress:
                progress(f"stampede round {n + 1}/{rounds}")
            shift = n % len(systems)
            for system in systems[shift:] + systems[:shift]:
                for row, group in (("stampede_1p", workers[:1]), ("stampede_3p", workers)):
                    into = Trials() if n < 0 else results.setdefault((row, system), Trials())
                    await trial(group, system, next(args), into)
    finally:
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for worker in workers:
                    tg.start_soon(worker.stop)
    base = {
        row: spread(t.wall_ms)["median"]
        for (row, system), t in results.items()
        if system.startswith("raw/")
    }
    records = []
    for (row, name), t in results.items():
        system, variant = name.split("/", 1)
        stats = spread([ms * 1000 for ms in t.wall_ms])  # µs, like every other row
        records.append(
            {
                "row": row,
                "system": system,
                "variant": variant,
                "baseline": system == "raw",
                "unit": "µs wall",
                **stats,
                "ratio": ratio(spread(t.wall_ms)["median"], base.get(row)),
                "x_loader": ratio(spread(t.wall_ms)["median"], LOADER_MS),
                "errors": t.errors,
                "loader_calls": spread([float(c) for c in t.calls]),
                "loader_calls_rounds": t.calls,
                "first_error": t.first_error,
                "rounds_us": [round(ms * 1000, 1) for ms in t.wall_ms],
            }
        )
    return records
