"""A server that stops answering (CLIENT PAUSE, DEBUG SLEEP) while two instances in separate
processes run a mixed load: every operation stays within about operation_timeout, the
circuit breaker opens (later calls fail fast instead of each waiting the timeout) and
closes again by itself, and the stale-read bound holds."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from .conftest import OPERATION_TIMEOUT, assert_sound, record_recovery, run_loads, server, workers

PAUSE = 1.5
TASKS = 8
SLACK = 1.0
"""Seconds a loaded 2-core machine may add to an operation (scheduling)."""


@pytest.mark.parametrize("how", ["client_pause", "debug_sleep"])
async def test_paused_server(tmp_path: Path, namespace: str, how: str) -> None:
    """Operations bounded by the timeout; the breaker stops the waiting, then closes."""
    with server() as srv:
        admin = Redis.from_url(srv.url, socket_timeout=PAUSE + 5)
        try:
            async with workers(2, srv.url, namespace) as procs:
                window: list[float] = []
                wall: list[float] = []

                async def fault() -> None:
                    await anyio.sleep(0.7)
                    window.append(time.monotonic())
                    if how == "client_pause":
                        await admin.execute_command("CLIENT", "PAUSE", int(PAUSE * 1000), "ALL")  # type: ignore[no-untyped-call]
                        await anyio.sleep(PAUSE)
                    else:
                        await admin.execute_command("DEBUG", "SLEEP", PAUSE)  # type: ignore[no-untyped-call]
                    window.append(time.monotonic())
                    wall.append(time.time())

                async with anyio.create_task_group() as tg:
                    tg.start_soon(fault)
                    run = await run_loads(procs, tmp_path, duration=4.0, tasks=TASKS)
                assert_sound(run)
                single_call = [op for op in run.ops if op["op"] in ("get", "set", "delete")]
                slowest = max(op["e"] - op["s"] for op in single_call)
                assert slowest < OPERATION_TIMEOUT + SLACK, slowest
                # Without a breaker each task would wait the full timeout about
                # PAUSE / OPERATION_TIMEOUT times; with it, only the calls in flight when
                # the server stopped and the breaker's probes do.
                start, end = window
                for proc in range(2):
                    waited = [
                        op
                        for op in run.ops
                        if op["p"] == proc
                        and start <= op["s"] <= end
                        and op["e"] - op["s"] >= 0.8 * OPERATION_TIMEOUT
                    ]
                    print("waited", how, proc, len(waited))
                    assert len(waited) <= 3 * TASKS, (proc, len(waited))
                for index, worker in enumerate(procs):
                    await worker.call("wait_recovered", recoveries=0, within=5)
                    stats = await worker.call("stats")
                    assert stats["l2_cache"]["timeouts"] >= 1
                    assert stats["l2_cache"]["short_circuited"] >= 1  # the breaker opened
                    assert "closed" == stats["l2_cache"]["breaker"]  # and closed again
                    assert stats["l2_cache"]["connected"]
                    recovered_at = stats["bus"]["last_recovery_at"]
                    record_recovery(
                        how,
                        l2=run.l2_back(index, end),
                        bus=None if recovered_at is None else recovered_at - wall[0],
                    )
        finally:
            await admin.aclose()
