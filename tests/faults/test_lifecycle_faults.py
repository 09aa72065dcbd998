"""Lifecycle under faults: stop() against a dead or paused server, and 200 reconnect cycles
without leaking tasks, file descriptors or server-side connections."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from coherent_cache import CacheManager

from ..conftest import ManagerFactory, eventually
from .conftest import fault_fields, record_recovery

ROOT = Path(__file__).resolve().parents[2]
CYCLES = 200
WARNING_SIGNS = (
    "Event loop is closed",
    "ResourceWarning",
    "Unclosed",
    "unclosed",
    "Exception ignored",
    "Task was destroyed",
)


@pytest.mark.parametrize("mode", ["dead", "paused"])
def test_stop_returns_quickly_without_warnings(mode: str) -> None:
    """stop() with the server dead or paused returns within 2 s and leaves nothing behind
    that would warn (run under -W error::ResourceWarning in a fresh interpreter)."""
    done = subprocess.run(
        [
            sys.executable, "-W", "error::ResourceWarning", "-X", "dev",
            "-m", "tests.faults.stop_script", mode,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=50,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr[-3000:]
    took = orjson.loads(done.stdout.strip().splitlines()[-1])["stop_seconds"]
    assert 2 == len(took) and max(took) < 2.0, took
    record_recovery(f"stop_{mode}", stop=max(took))
    bad = [line for line in done.stderr.splitlines() if any(s in line for s in WARNING_SIGNS)]
    assert [] == bad, done.stderr[-3000:]


def open_fds() -> int:
    """File descriptors open in this process."""
    return len(os.listdir("/proc/self/fd"))


async def server_clients(admin: Redis, namespace: str) -> int:
    """Connections the server holds for this namespace's managers (CLIENT LIST names)."""
    clients = await admin.client_list()
    return sum(
        1 for c in clients if str(c.get("name", "")).startswith(f"coherent_cache:{namespace}")
    )


async def test_reconnect_cycles_leak_nothing(
    make_manager: ManagerFactory, raw_redis: Redis, namespace: str, redis_url: str
) -> None:
    """200 cycles of every connection of two instances killed by the server (CLIENT KILL),
    each followed by a successful L2 write and a resubscription: afterwards the counts of
    asyncio tasks, open file descriptors and server-side connections are what they were."""
    fields = fault_fields(redis_url, namespace, reconnect_backoff_max=0.05)
    fields.pop("redis_url")
    fields.pop("namespace")
    caches: list[CacheManager] = [await make_manager(**fields) for _ in range(2)]

    async def cycle() -> None:
        before = [c.stats()["bus"]["recoveries"] for c in caches]
        await raw_redis.client_kill_filter(skipme=True)
        for cache, seen in zip(caches, before, strict=True):

            def resubscribed(c: CacheManager = cache, s: int = seen) -> bool:
                return c.stats()["bus"]["recoveries"] > s

            async def writes(c: CacheManager = cache) -> bool:
                return await c.set("alive", 1)

            await eventually(resubscribed)
            await eventually(writes, within=5)

    for _ in range(5):  # warm up: pools at their working size
        await cycle()
    baseline = (len(asyncio.all_tasks()), open_fds(), await server_clients(raw_redis, namespace))
    for _ in range(CYCLES):
        await cycle()
    await eventually(lambda: server_clients(raw_redis, namespace), expect=baseline[2], within=5)
    after = (len(asyncio.all_tasks()), open_fds(), await server_clients(raw_redis, namespace))
    assert after[0] <= baseline[0], (baseline, after)
    assert after[1] <= baseline[1] + 2, (baseline, after)  # slack: a socket being reopened
    assert after[2] == baseline[2], (baseline, after)
    for cache in caches:
        assert cache.stats()["bus"]["recoveries"] >= CYCLES
