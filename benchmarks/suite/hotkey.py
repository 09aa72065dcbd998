"""The "hot key under expiry" row: 3 processes x 100 tasks reading one key with a 1 s TTL
and a 50 ms loader, for 10 s (3 s in a quick run).

Three worker processes (`benchmarks.workers._hotkey_worker`) each set every system up once;
per system, every worker starts its readers at one ``time.monotonic()`` instant. Read
latencies after the first second (the cold load) are merged over the processes: p50, p99,
max; loader calls are summed. The row's limit is coherent_cache's own L1 hit of a key that
never expires, measured under the same load in the same run: the target is a p99 within
2x of its p99, i.e. no caller ever waits for the loader.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, Final

import anyio

from benchmarks.suite._common import ratio
from benchmarks.suite.stampede import Worker

ROW: Final = "hotkey"
TITLE: Final = "hot key under expiry, 3 processes x 100 tasks, 1 s TTL, 50 ms loader"
PROCESSES: Final = 3
TASKS: Final = 100
WARMUP_S: Final = 1.0


def percentile(histogram: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a ``{µs: count}`` histogram."""
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = q * (total - 1), 0
    for us in sorted(histogram):
        seen += histogram[us]
        if seen > rank:
            return float(us)
    return float(max(histogram))


async def measure(
    url: str, *, duration: float, progress: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Every system once for ``duration`` s; one record per system."""
    token = secrets.token_hex(4)
    module = "benchmarks.workers._hotkey_worker"
    workers = [Worker({"url": url, "token": token}, module) for _ in range(PROCESSES)]
    replies: dict[str, list[dict[str, Any]]] = {}
    try:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for worker in workers:
                    tg.start_soon(worker.start)
        for system in workers[0].systems:
            if progress:
                progress(f"hot key: {system}")
            at = time.monotonic() + 0.1
            for worker in workers:
                await worker.send(
                    {
                        "op": "run",
                        "system": system,
                        "tasks": TASKS,
                        "at": at,
                        "warmup": WARMUP_S,
                        "duration": duration,
                    }
                )
            with anyio.fail_after(duration + 60):
                replies[system] = [await worker.read() for worker in workers]
    finally:
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for worker in workers:
                    tg.start_soon(worker.stop)
    records = []
    for name, per_process in replies.items():
        system, variant = name.split("/", 1)
        merged: dict[int, int] = {}
        for reply in per_process:
            for us, n in reply["histogram"].items():
                merged[int(us)] = merged.get(int(us), 0) + n
        slowest = [r["slowest_us"] for r in per_process if r["slowest_us"] is not None]
        calls = [r["calls"] for r in per_process if r["calls"] is not None]
        records.append(
            {
                "row": ROW,
                "system": system,
                "variant": variant,
                "baseline": system == "raw",
                "unit": "µs per read",
                "median": percentile(merged, 0.5),
                "p99": percentile(merged, 0.99),
                "max": max(slowest) if slowest else None,
                "min": float(min(merged)) if merged else None,
                "n": sum(merged.values()),
                "loader_calls_total": sum(calls),
                "errors": sum(r["errors"] for r in per_process),
                "first_error": next(
                    (r["first_error"] for r in per_process if r.get("first_error")), None
                ),
                "duration_s": duration,
            }
        )
    base = next((r["p99"] for r in records if r["baseline"]), None)
    for r in records:
        r["ratio"] = ratio(r["p99"], base) if r["p99"] is not None else None
    return records
