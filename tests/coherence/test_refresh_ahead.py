"""Refresh-ahead across OS processes: with lock=True one instance refreshes per window and,
after warm-up, no caller in any process waits for a load."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from ..support.multiproc import Worker

pytestmark = pytest.mark.anyio

TTL = 1.0
REFRESH = 0.5
DURATION = 3.0
WARMUP = 0.6


@pytest.fixture
async def workers(redis_url: str, namespace: str) -> AsyncIterator[list[Worker]]:
    """Three instances, each in its own process (generous timeouts for a starved CI box)."""
    fields: dict[str, Any] = {
        "redis_url": redis_url,
        "namespace": namespace,
        "operation_timeout": 3.0,
    }
    async with Worker(**fields) as a, Worker(**fields) as b, Worker(**fields) as c:
        yield [a, b, c]


async def test_hot_key_is_refreshed_once_per_window_and_nobody_waits(
    workers: list[Worker], raw_redis: Redis, namespace: str
) -> None:
    """200 readers in 3 processes, 1 s TTL, refresh_ahead=0.5, lock=True, for 3 s."""
    counter = f"{namespace}:loads"
    results: list[Any] = [None] * len(workers)

    async def run(i: int, worker: Worker) -> None:
        results[i] = await worker.call(
            "hot",
            key="hot",
            counter=counter,
            callers=[67, 67, 66][i],
            ttl=TTL,
            refresh=REFRESH,
            lock=True,
            delay=0.05,
            warmup=WARMUP,
            duration=DURATION,
        )

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i, worker in enumerate(workers):
                tg.start_soon(run, i, worker)
    starts = sorted(float(t) for t in await raw_redis.lrange(counter, 0, -1))
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    # The key would have expired twice without refreshes: it was refreshed, never twice
    # in one window (a window is REFRESH * TTL after the previous store).
    assert len(starts) >= 3, starts
    assert all(gap >= 0.9 * REFRESH * TTL for gap in gaps), gaps
    assert len(starts) <= DURATION / (REFRESH * TTL) + 1, starts
    assert [0, 0, 0] == [r["misses_after_warmup"] for r in results], results
