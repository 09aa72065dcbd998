"""Loader semantics across OS processes: the cross-instance lock and tag invalidation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from ..support.multiproc import MISSING, Worker

pytestmark = pytest.mark.anyio


@pytest.fixture
async def workers(redis_url: str, namespace: str) -> AsyncIterator[list[Worker]]:
    """Three cache instances, each in its own process, on one server and namespace.

    A generous operation_timeout: these tests check loader semantics, and a CPU-starved run
    must not open the breaker (which, by design, runs loaders without the lock).
    """
    fields: dict[str, Any] = {
        "redis_url": redis_url,
        "namespace": namespace,
        "operation_timeout": 3.0,
    }
    async with Worker(**fields) as a, Worker(**fields) as b, Worker(**fields) as c:
        yield [a, b, c]


async def load_everywhere(
    workers: list[Worker], key: str, counter: str, *, lock: bool, callers: int
) -> list[list[object]]:
    """Start `callers` concurrent get_or_set calls of one cold key in every process."""
    results: list[list[object]] = [[] for _ in workers]

    async def run(i: int, worker: Worker) -> None:
        results[i] = await worker.call(
            "load", key=key, counter=counter, lock=lock, callers=callers, delay=0.3
        )

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i, worker in enumerate(workers):
                tg.start_soon(run, i, worker)
    return results


class TestCrossInstanceLock:
    async def test_lock_runs_the_loader_once_across_three_processes(
        self, workers: list[Worker], raw_redis: Redis, namespace: str
    ) -> None:
        """With lock=True, 3 processes x 100 callers of one cold key load it exactly once."""
        counter = f"{namespace}:test-counter"
        results = await load_everywhere(workers, "cold", counter, lock=True, callers=100)
        assert b"1" == await raw_redis.get(counter)
        values = {str(v) for per_process in results for v in per_process}
        assert 1 == len(values)  # every caller got the one loaded value
        assert 300 == sum(len(r) for r in results)

    async def test_without_lock_each_process_loads_once(
        self, workers: list[Worker], raw_redis: Redis, namespace: str
    ) -> None:
        """Without the lock, single-flight still holds per process: at most 3 loads."""
        counter = f"{namespace}:test-counter"
        await load_everywhere(workers, "cold", counter, lock=False, callers=100)
        loads = int(await raw_redis.get(counter) or 0)
        assert 1 <= loads <= 3


class TestTagsAcrossProcesses:
    async def test_invalidate_tags_reaches_other_processes(self, workers: list[Worker]) -> None:
        """invalidate_tags on A drops tagged entries from B's and C's L1, not untagged ones."""
        a, b, c = workers
        await a.call("set", key="user:1", value=1, tags=["users"])
        await a.call("set", key="user:2", value=2, tags=["users", "vip"])
        await a.call("set", key="other", value=3, tags=["misc"])
        for reader in (b, c):
            for key in ("user:1", "user:2", "other"):
                with anyio.fail_after(5):
                    while MISSING == await reader.call("peek", key=key):
                        await reader.call("get", key=key)
        assert 2 == await a.call("invalidate_tags", tags=["users"])
        for reader in (b, c):
            assert None is not await reader.call("wait_gone", key="user:1", within=5)
            assert None is not await reader.call("wait_gone", key="user:2", within=5)
            assert 3 == await reader.call("peek", key="other")
            assert MISSING == await reader.call("get", key="user:1")
