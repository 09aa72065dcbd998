"""A randomized cache workload in its own OS process, for ``test_stale_reads.py``.

Run as ``python -m tests.coherence.stress_worker '<arguments as JSON>'`` from the repository
root (see `WorkerArgs`). The process starts a `CacheManager`, prints
``{"ready": true, "origin": ...}``, then waits for one line ``{"t0": <time.monotonic()>}``
on stdin: the start barrier shared by all processes. It then runs `WorkerArgs.tasks`
concurrent tasks for `DURATION` seconds, each doing a seeded random mix of get / set /
delete / clear_pattern on `KEYS`, writes one JSON line per operation to `WorkerArgs.log`,
stops the manager and prints ``{"done": true, "summary": {...}}``.

Time after ``t0`` is cut into cycles of `CYCLE` seconds: writes happen only in the first
`WRITE_PHASE` seconds of a cycle, and the rest is read-only. The quiet phases let a stale
L1 copy survive long enough, unrefreshed, for the checker to see it past its window.

Every written value is ``{"w": "<proc>-<n>"}``, a version unique across processes. A log
line holds: ``p`` process, ``t`` task, ``op``, ``k`` key (or pattern), ``w`` the version
written or read (``null`` for a miss), ``s`` / ``e`` `time.monotonic` before the call and
after it returned (CLOCK_MONOTONIC is system-wide on Linux, so times compare across
processes), ``l1`` whether a get was served from this instance's L1, ``ok`` what a set
returned, and ``bad`` the repr of a read value that is not a version.
"""

from __future__ import annotations

import itertools
import random
import sys
import time
from typing import Any, Final, TypedDict

import anyio
import anyio.lowlevel
import orjson

from coherent_cache import CacheConfig, CacheManager

KEYS: Final = tuple(f"k:{i}" for i in range(8))
PATTERNS: Final = ("k:*", "k:?", "k:[0-3]", "k:[4-7]", "k:[0246]", "k:[1357]", "k:[2-5]")
CYCLE: Final = 1.05
"""Seconds of one write phase plus one read-only phase."""
WRITE_PHASE: Final = 0.3
"""Seconds at the start of each cycle during which writes happen."""
DURATION: Final = 5 * CYCLE
"""Seconds each process runs after ``t0``: five cycles."""
BARRIER_TIMEOUT: Final = 60.0
"""Longest wait for the start line; the process gives up after it."""

# Op mix during a write phase; the rest of the draws are gets.
P_SET: Final = 0.3
P_DELETE: Final = 0.1
P_CLEAR_PATTERN: Final = 0.1

_MISSING: Final[Any] = object()


class WorkerArgs(TypedDict):
    """The JSON argument of the process."""

    config: dict[str, Any]
    """`CacheConfig` fields."""
    proc: int
    """This process's number; the prefix of the versions it writes."""
    seed: int
    """Base seed; task ``t`` of process ``p`` draws from ``Random(f"{seed}:{p}:{t}")``."""
    tasks: int
    """Concurrent asyncio tasks."""
    log: str
    """Path of the operation log to write."""


def _version(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("w"), str):
        return str(value["w"])
    return None


async def _run_task(
    cache: CacheManager,
    args: WorkerArgs,
    task: int,
    t0: float,
    counter: itertools.count[int],
    log: list[dict[str, Any]],
) -> None:
    proc = args["proc"]
    rng = random.Random(f"{args['seed']}:{proc}:{task}")
    deadline = t0 + DURATION
    while (now := time.monotonic()) < deadline:
        writing = (now - t0) % CYCLE < WRITE_PHASE
        draw = rng.random() if writing else 1.0
        record: dict[str, Any]
        if draw < P_SET:
            key = rng.choice(KEYS)
            version = f"{proc}-{next(counter)}"
            start = time.monotonic()
            ok = await cache.set(key, {"w": version})
            record = {"op": "set", "k": key, "w": version, "ok": ok}
        elif draw < P_SET + P_DELETE:
            key = rng.choice(KEYS)
            start = time.monotonic()
            await cache.delete(key)
            record = {"op": "delete", "k": key}
        elif draw < P_SET + P_DELETE + P_CLEAR_PATTERN:
            pattern = rng.choice(PATTERNS)
            start = time.monotonic()
            await cache.clear_pattern(pattern)
            record = {"op": "clear_pattern", "k": pattern}
        else:
            key = rng.choice(KEYS)
            # Same synchronous step as the get's own L1 lookup: tells where the value came from.
            in_l1 = cache.l1.peek(key, _MISSING) is not _MISSING
            start = time.monotonic()
            value = await cache.get(key, default=_MISSING)
            record = {"op": "get", "k": key, "w": None, "l1": in_l1}
            if value is not _MISSING:
                record["w"] = _version(value)
                if record["w"] is None:
                    record["bad"] = repr(value)
        end = time.monotonic()
        log.append({"p": proc, "t": task, **record, "s": start, "e": end})
        # An L1 hit never suspends: let the other tasks and the bus listener run.
        await anyio.lowlevel.checkpoint()


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


async def main(args: WorkerArgs) -> None:
    """Start the manager, wait for the start line, run the workload, write the log."""
    log: list[dict[str, Any]] = []
    counter = itertools.count(1)
    async with CacheManager(CacheConfig(**args["config"])) as cache:
        _emit({"ready": True, "origin": cache.origin})
        with anyio.fail_after(BARRIER_TIMEOUT):
            line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line.strip():
            raise SystemExit("stdin closed before the start line")
        t0 = float(orjson.loads(line)["t0"])
        async with anyio.create_task_group() as tg:
            for task in range(args["tasks"]):
                tg.start_soon(_run_task, cache, args, task, t0, counter, log)
        stats = cache.stats()
    ops: dict[str, int] = {}
    for entry in log:
        ops[entry["op"]] = ops.get(entry["op"], 0) + 1
    summary = {
        "proc": args["proc"],
        "origin": cache.origin,
        "ops": ops,
        "l1_hits": sum(1 for entry in log if entry.get("l1")),
        "l2_errors": stats["l2_cache"]["errors"],
        "l2_timeouts": stats["l2_cache"]["timeouts"],
        "l2_short_circuited": stats["l2_cache"]["short_circuited"],
        "bus_connected": stats["bus"]["connected"],
        "bus_losses": stats["bus"]["losses"],
        "bus_received": stats["bus"]["received"],
        "bus_applied": stats["bus"]["applied"],
        "bus_dropped": stats["bus"]["dropped"],
        "mailbox_overflows": stats["bus"]["mailbox"]["overflows"],
        "tracking_losses": stats["tracking"]["losses"],
        "tracking_messages": stats["tracking"]["messages"],
    }
    await anyio.Path(args["log"]).write_bytes(
        b"".join(orjson.dumps(entry) + b"\n" for entry in log)
    )
    _emit({"done": True, "summary": summary})


if __name__ == "__main__":
    anyio.run(main, orjson.loads(sys.argv[1]))
