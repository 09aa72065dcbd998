"""Sentinel failover under load: SIGKILL the primary while two instances (processes) work.

The sentinels promote the replica; both instances' L2 pools and buses follow it (they ask
the sentinels on every new connection); no exception reaches a caller, no read is stale
beyond the bound, and afterwards the instances are coherent on the new primary.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from ..conftest import eventually
from ..support.multiproc import MISSING, Worker
from .conftest import FAST, sentinel_fields
from .harness import HOST, SentinelDeployment, command
from .load import KEYS, bounded_load

pytestmark = pytest.mark.sentinel

MAX_STALE = 1.0
BOUND = MAX_STALE + FAST["bus_health_check_interval"] + FAST["operation_timeout"] + 0.5
"""max_stale_on_bus_loss, plus the time to detect the loss, plus slack for load."""


@pytest.fixture(scope="module")
def deployment() -> Iterator[SentinelDeployment]:
    """A primary, a replica and 3 sentinels of this module's own (the primary dies)."""
    with SentinelDeployment() as started:
        yield started


async def test_graceful_failover_moves_the_bus(
    deployment: SentinelDeployment, namespace: str
) -> None:
    """SENTINEL FAILOVER demotes the primary without closing connections: the L2 follows
    the new primary, the bus notices the move (it asks the sentinels every few seconds),
    resubscribes there (a counted recovery, L1 flushed) and the instances stay coherent."""
    fields: dict[str, Any] = {**sentinel_fields(deployment), "namespace": namespace, **FAST}
    old = deployment.current_primary()
    async with Worker(**fields) as a, Worker(**fields) as b:
        await hold(a, b, "g:1", 1)
        reply = command(deployment.sentinels[0].port, "SENTINEL", "FAILOVER", "mymaster")
        assert b"+OK\r\n" == reply
        await eventually(lambda: deployment.master_port() != old.port, within=15, interval=0.05)
        # Until the sentinels demote it, the old primary still takes writes, which its
        # resync from the new primary then discards (asynchronous replication, see
        # docs/operations.md): wait for the demotion so a confirmed write is kept.
        await eventually(lambda: b"slave" in command(old.port, "ROLE"), within=15, interval=0.05)
        for worker in (a, b):
            assert True is await worker.call("wait_bus", connected=True, recovered=1, within=15)
            await eventually(functools.partial(healthy, worker), within=15, interval=0.05)
        # A pooled L2 connection still open to the demoted primary fails one write
        # (READONLY; redis-py then drops the stale connections): retry until confirmed.
        await eventually(lambda: a.call("set", key="g:0", value=0), within=10, interval=0.05)
        await hold(a, b, "g:1", 2)
        assert True is await a.call("set", key="g:1", value=3)
        assert None is not await b.call("wait_gone", key="g:1", within=5)
        assert 3 == await b.call("get", key="g:1")
    deployment.wait_healthy(30)


async def hold(writer: Worker, reader: Worker, key: str, value: object) -> None:
    """Write through ``writer`` and read through ``reader`` until its L1 holds the value."""
    await eventually(lambda: writer.call("set", key=key, value=value), within=10, interval=0.05)

    async def held() -> bool:
        return bool(
            value == await reader.call("get", key=key)
            and value == await reader.call("peek", key=key)
        )

    await eventually(held, within=10, interval=0.01)


async def test_primary_killed_under_load(deployment: SentinelDeployment, namespace: str) -> None:
    """The sentinels fail over; the instances follow, keep serving and stay coherent."""
    fields: dict[str, Any] = {
        **sentinel_fields(deployment),
        "namespace": namespace,
        "max_stale_on_bus_loss": MAX_STALE,
        "circuit_breaker_cooldown": 1.0,
        "reconnect_backoff_max": 0.5,
        **FAST,
    }
    old = deployment.current_primary()
    async with Worker(**fields) as a, Worker(**fields) as b:
        killed_wall = 0.0

        def kill() -> None:
            nonlocal killed_wall
            killed_wall = time.time()
            old.kill()

        report = await bounded_load(a, b, duration=6.5, bound=BOUND, kill_after=1.5, kill=kill)
        assert [] == report.stale
        new = deployment.current_primary()
        assert (True, False) == (new is not old, old.running)
        # Both instances recover by themselves: L2 in use again, bus resubscribed.
        for worker in (a, b):
            assert True is await worker.call("wait_bus", connected=True, recovered=1, within=10)
            await eventually(functools.partial(healthy, worker), within=15, interval=0.05)
        # Coherent on the new primary: A's writes land there and reach B's L1.
        for i, key in enumerate(KEYS):
            assert True is await a.call("set", key=key, value=20_000 + i)
            await eventually(functools.partial(b.call, "get", key=key), expect=20_000 + i)
        await a.call("delete", key=KEYS[0])
        assert None is not await b.call("wait_gone", key=KEYS[0], within=5)
        assert MISSING == await b.call("get", key=KEYS[0])
        raw = Redis(host=HOST, port=new.port, socket_timeout=5)
        try:
            assert 1 == await raw.exists(f"{namespace}:{KEYS[1]}")
        finally:
            await raw.aclose()
        for worker in (a, b):
            stats = await worker.call("stats")
            killed = report.killed_at or 0.0
            print(
                f"sentinel: bus recovered {stats['bus']['last_recovery_at'] - killed_wall:.2f}s "
                f"after the kill; last failed write "
                f"{(report.last_failed_write or killed) - killed:.2f}s "
                f"after it; {report.writes} writes ({report.confirmed} confirmed), "
                f"{report.reads} reads ({report.misses} misses)"
            )


async def healthy(worker: Worker) -> bool:
    """Whether the instance reports itself healthy (L2 connected, bus subscribed)."""
    report = await worker.call("health")
    return bool(report["status"] == "healthy")
