"""A bounded mixed workload on one `CacheManager`, logged for the fault-tolerant stale-read check.

`run_load` runs in a worker process (``tests.support.worker``'s ``run_load`` op) or in the test's
own process. Each of ``tasks`` asyncio tasks does a seeded random mix of get, set, delete,
get_or_set, clear_pattern and invalidate_tags on ``keys``, until ``duration`` seconds have
passed. Writes happen only in the first ``write_phase`` seconds of every ``cycle``; the rest
is read-only, so a stale L1 copy left by a missed invalidation survives, unrefreshed, long
enough for `tests.faults.checker` to see it.

With ``owners``/``owned``, process ``p < owners`` also writes keys ``own<p>:0..owned-1``,
which only it writes and every process reads.

Every value written is ``{"w": "<proc>-<n>"}`` (a set) or ``{"w": "<proc>-L<n>"}`` (a loader
result), unique across processes, so each read names the write it saw. One log entry per
operation (keys and patterns start with ``prefix``): ``p`` process, ``t`` task,
``op``, ``k`` key/pattern/tag, ``w`` version written or
read, ``s``/``e`` `time.monotonic` at start and end (CLOCK_MONOTONIC is system-wide on
Linux), ``ok`` what a set returned, and ``u`` (uncertain): whether this process counted an
L2 failure while the operation ran, so the operation may not have reached Redis. An
exception raised by the cache is recorded in ``errors`` (a caller would have seen it).
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any, Final, TypedDict

import anyio
import anyio.lowlevel

from coherent_cache import CacheManager

__all__ = ["LoadArgs", "LoadResult", "failure_count", "run_load", "tag_of"]

_MISSING: Final[Any] = object()
TAGS: Final = ("ta", "tb", "tc")


class LoadArgs(TypedDict, total=False):
    """Arguments of `run_load` (all optional)."""

    proc: int
    keys: list[str]
    patterns: list[str]
    duration: float
    tasks: int
    seed: int
    cycle: float
    write_phase: float
    loader_delay: float
    owners: int
    owned: int
    prefix: str


class LoadResult(TypedDict):
    """What `run_load` returns."""

    ops: int
    counts: dict[str, int]
    errors: list[str]
    error_count: int
    log: list[dict[str, Any]]


def tag_of(key: str) -> str | None:
    """The tag every write of ``key`` carries (so invalidate_tags has a known reach).

    Owned keys (``[prefix]own<p>:<i>``) carry none: only their owner's writes touch them.
    """
    if "own" in key:
        return None
    return TAGS[sum(key.encode()) % len(TAGS)]


def _tags(key: str) -> list[str]:
    tag = tag_of(key)
    return [] if tag is None else [tag]


def failure_count(cache: CacheManager) -> int:
    """L2 failures counted so far (errors, timeouts, short-circuits, dropped writes)."""
    if cache.l2 is None:
        return 0
    s = cache.l2.stats()
    return s["errors"] + s["timeouts"] + s["short_circuited"] + s["dropped_writes"]


def _version(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("w"), str):
        return str(value["w"])
    return None


async def run_load(cache: CacheManager, args: LoadArgs) -> LoadResult:
    """Run the workload described in the module docstring; never raises for cache errors."""
    proc = int(args.get("proc", 0))
    prefix = str(args.get("prefix", ""))
    keys = list(args.get("keys") or [f"{prefix}k:{i}" for i in range(8)])
    patterns = list(
        args.get("patterns") or [f"{prefix}{p}" for p in ("k:*", "k:[0-3]", "k:[4-7]", "k:?")]
    )
    duration = float(args.get("duration", 3.0))
    cycle = float(args.get("cycle", 1.0))
    write_phase = float(args.get("write_phase", 0.3))
    loader_delay = float(args.get("loader_delay", 0.005))
    seed = int(args.get("seed", 0))
    # Owned keys: ``own<p>:<i>`` is written only by process p and read by every process,
    # so another instance's L1 copy of it is refreshed by nothing but the bus.
    owners, owned = int(args.get("owners", 0)), int(args.get("owned", 0))
    own_keys = [f"{prefix}own{proc}:{i}" for i in range(owned)] if proc < owners else []
    read_keys = keys + [f"{prefix}own{p}:{i}" for p in range(owners) for i in range(owned)]
    write_keys = keys + own_keys
    counter = itertools.count(1)
    log: list[dict[str, Any]] = []
    errors: list[str] = []
    error_count = 0
    t0 = time.monotonic()
    deadline = t0 + duration

    async def task(number: int) -> None:
        nonlocal error_count
        rng = random.Random(f"{seed}:{proc}:{number}")
        while (now := time.monotonic()) < deadline:
            writing = (now - t0) % cycle < write_phase
            draw = rng.random() if writing else 0.99 + rng.random() * 0.01
            key = rng.choice(write_keys if draw < 0.40 else read_keys)
            record: dict[str, Any]
            failures = failure_count(cache)
            start = time.monotonic()
            try:
                if draw < 0.25:
                    version = f"{proc}-{next(counter)}"
                    ok = await cache.set(key, {"w": version}, ttl=60, tags=_tags(key))
                    record = {"op": "set", "k": key, "w": version, "ok": ok}
                elif draw < 0.35:
                    await cache.delete(key)
                    record = {"op": "delete", "k": key}
                elif draw < 0.38:
                    pattern = rng.choice(patterns)
                    await cache.clear_pattern(pattern)
                    record = {"op": "clear_pattern", "k": pattern}
                elif draw < 0.40:
                    tag = rng.choice(TAGS)
                    await cache.invalidate_tags(tag)
                    record = {"op": "invalidate_tags", "k": tag}
                elif (draw < 0.55 or draw >= 0.995) and key in write_keys:
                    loaded = f"{proc}-L{next(counter)}"
                    load_start: list[float] = []

                    async def loader(version: str = loaded, begun: list[float] = load_start) -> Any:
                        begun.append(time.monotonic())
                        await anyio.sleep(loader_delay)
                        return {"w": version}

                    value = await cache.get_or_set(key, loader, ttl=60, tags=_tags(key))
                    record = {"op": "get_or_set", "k": key, "w": _version(value)}
                    if record["w"] is None:
                        record["bad"] = repr(value)
                    if load_start:
                        # The loader ran: its result was stored (a write of unknown fate).
                        log.append(
                            {
                                "p": proc, "t": number, "op": "load", "k": key, "w": loaded,
                                "s": load_start[0], "e": time.monotonic(), "u": True,
                            }
                        )  # fmt: skip
                else:
                    value = await cache.get(key, default=_MISSING)
                    record = {"op": "get", "k": key, "w": None}
                    if value is not _MISSING:
                        record["w"] = _version(value)
                        if record["w"] is None:
                            record["bad"] = repr(value)
            except Exception as exc:  # what a caller would have seen
                error_count += 1
                if len(errors) < 20:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            end = time.monotonic()
            record.update(p=proc, t=number, s=start, e=end, u=failure_count(cache) != failures)
            log.append(record)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for number in range(int(args.get("tasks", 4))):
            tg.start_soon(task, number)
    counts: dict[str, int] = {}
    for entry in log:
        counts[entry["op"]] = counts.get(entry["op"], 0) + 1
    return {
        "ops": len(log),
        "counts": counts,
        "errors": errors,
        "error_count": error_count,
        "log": log,
    }
