"""A bounded read/write load over two cache processes, with a staleness check per read.

Instance A writes increasing versions of a few keys; instance B (and A) read them back.
Every read is compared with the newest version whose write A confirmed (``set`` returned
``True``) more than ``bound`` seconds before the read was sent: an older value is a stale
read beyond the bound. A miss is never stale. CLOCK_MONOTONIC is system-wide on Linux, so
the test process's timestamps order the workers' operations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..support.multiproc import MISSING, Worker

KEYS = [f"load:{i}" for i in range(12)]  # spread over the slots of every primary


@dataclass
class LoadReport:
    """What a load run saw."""

    writes: int = 0
    confirmed: int = 0
    reads: int = 0
    misses: int = 0
    stale: list[str] = field(default_factory=list)
    killed_at: float | None = None
    """``time.monotonic()`` of the kill, if one happened."""
    last_failed_write: float | None = None
    """``time.monotonic()`` of the last write that did not confirm."""


async def bounded_load(
    a: Worker,
    b: Worker,
    *,
    duration: float,
    bound: float,
    kill_after: float | None = None,
    kill: Callable[[], None] | None = None,
    lost_write_window: float = 0.25,
) -> LoadReport:
    """Run the load for ``duration`` seconds; call ``kill`` ``kill_after`` seconds in.

    Writes confirmed within ``lost_write_window`` before the kill are not used as the
    reference: Redis replication is asynchronous, so the killed primary may take them
    with it and the promoted replica serve the previous version (as it would to any
    client). A `tests.support.multiproc.WorkerError` (an exception reaching a caller) propagates.
    """
    report = LoadReport()
    confirmed: dict[str, list[tuple[int, float]]] = {key: [] for key in KEYS}
    started = time.monotonic()
    version = 0

    def expected(key: str, sent_at: float) -> int:
        floor = 0
        for ver, at in confirmed[key]:
            if at + bound >= sent_at:
                continue
            killed = report.killed_at
            if killed is not None and killed - lost_write_window <= at <= killed:
                continue
            floor = max(floor, ver)
        return floor

    async def check(reader: Worker, name: str, key: str) -> None:
        sent_at = time.monotonic()
        value = await reader.call("get", key=key)
        report.reads += 1
        if value == MISSING or value is None:
            report.misses += 1
            return
        floor = expected(key, sent_at)
        if int(value) < floor:
            report.stale.append(
                f"{name} read {key}={value} at +{sent_at - started:.3f}s, "
                f"version {floor} was confirmed before the bound"
            )

    while time.monotonic() - started < duration:
        if kill is not None and kill_after is not None and report.killed_at is None:
            if time.monotonic() - started >= kill_after:
                kill()
                report.killed_at = time.monotonic()
        version += 1
        key = KEYS[version % len(KEYS)]
        ok = await a.call("set", key=key, value=version, ttl=120)
        done = time.monotonic()
        report.writes += 1
        if ok:
            report.confirmed += 1
            confirmed[key].append((version, done))
        else:
            report.last_failed_write = done
        await check(b, "B", key)
        await check(b, "B", KEYS[(version + 5) % len(KEYS)])
        await check(a, "A", KEYS[(version + 7) % len(KEYS)])
    return report
