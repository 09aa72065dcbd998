"""Cluster failover under load: SIGKILL a primary while two instances (processes) work.

The killed primary is the one the bus depends on: the owner of the channel's slot for the
sharded bus, the node holding the subscriptions for the broadcast bus. Its replica is
promoted; no exception reaches a caller; the bus recovers on another node; no read is
stale beyond ``max_stale_on_bus_loss`` (plus the PING deadline that detects the loss).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.crc import key_slot

from coherent_cache.testing import RedisServer

from ..conftest import eventually
from ..support.multiproc import Worker
from .conftest import FAST
from .harness import ValkeyCluster, command
from .load import KEYS, bounded_load

pytestmark = pytest.mark.cluster

MAX_STALE = 1.0
BOUND = MAX_STALE + FAST["bus_health_check_interval"] + FAST["operation_timeout"] + 0.5
"""The staleness bound checked: max_stale_on_bus_loss, plus the time to detect the loss,
plus slack for a loaded machine."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[ValkeyCluster]:
    """A cluster of this module's own: its primaries get killed."""
    with ValkeyCluster() as deployment:
        yield deployment


def slot_owner(cluster: ValkeyCluster, slot: int) -> RedisServer:
    """The primary serving ``slot``: the only one that does not answer MOVED for it."""
    probe = f"{{{_tag_for_slot(slot)}}}probe"
    for node in cluster.primaries():
        if not command(node.port, "GET", probe).startswith(b"-MOVED"):
            return node
    raise AssertionError(f"no primary serves slot {slot}")


def _tag_for_slot(slot: int) -> str:
    """A string whose key slot is ``slot`` (searched; slots are uniform over short strings)."""
    for i in range(1_000_000):
        candidate = f"s{i}"
        if key_slot(candidate.encode()) == slot:
            return candidate
    raise AssertionError(f"no tag found for slot {slot}")


def bus_node(cluster: ValkeyCluster, namespace: str) -> RedisServer:
    """The node holding the instances' bus connections (CLIENT LIST, by connection name)."""
    for node in cluster.live():
        listing = command(node.port, "CLIENT", "LIST")
        if f"name=coherent_cache:{namespace}:bus".encode() in listing:
            return node
    raise AssertionError("no node holds a bus connection")


def node_id(node: RedisServer) -> str:
    """The cluster node id of ``node``."""
    reply = command(node.port, "CLUSTER", "MYID")
    return reply.split(b"\r\n")[1].decode()


def move_slot(cluster: ValkeyCluster, slot: int, source: RedisServer, target: RedisServer) -> None:
    """Migrate ``slot`` (and its keys) from ``source`` to ``target``, as resharding does."""
    source_id, target_id = node_id(source), node_id(target)
    assert (
        command(target.port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id) == b"+OK\r\n"
    )
    assert (
        command(source.port, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id) == b"+OK\r\n"
    )
    while True:
        reply = command(source.port, "CLUSTER", "GETKEYSINSLOT", str(slot), "100")
        keys = [line for line in reply.split(b"\r\n")[2::2] if line]
        if not keys:
            break
        moved = command(
            source.port, "MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000",
            "KEYS", *(key.decode() for key in keys),
        )  # fmt: skip
        assert moved.startswith(b"+OK"), moved
    for node in (target, source):
        assert command(node.port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id) == b"+OK\r\n"


async def test_sharded_bus_follows_a_slot_migration(cluster: ValkeyCluster, namespace: str) -> None:
    """The channel's slot moves to another primary: the server ends the subscription
    (sunsubscribe), the bus counts a loss, resubscribes on the new owner and stays coherent."""
    fields: dict[str, Any] = {
        "redis_mode": "cluster",
        "redis_url": cluster.url,
        "namespace": namespace,
        **FAST,
    }
    slot = key_slot(f"{namespace}:invalidate".encode())
    async with Worker(**fields) as a, Worker(**fields) as b:
        await a.call("set", key="m:1", value=1)
        assert 1 == await b.call("get", key="m:1")
        source = slot_owner(cluster, slot)
        target = next(node for node in cluster.primaries() if node is not source)
        move_slot(cluster, slot, source, target)
        assert target is slot_owner(cluster, slot)
        for worker in (a, b):
            assert True is await worker.call("wait_bus", connected=True, recovered=1, within=10)
        for value in (2, 3):
            await a.call("set", key="m:1", value=value)
            await eventually(lambda: b.call("get", key="m:1"), expect=value)
        await a.call("delete", key="m:1")
        assert None is not await b.call("wait_gone", key="m:1", within=5)


# broadcast first: on the fresh cluster its subscriptions sit on the seed node, a primary.
@pytest.mark.parametrize("bus", ["broadcast", "sharded"])
async def test_primary_killed_under_load(cluster: ValkeyCluster, namespace: str, bus: str) -> None:
    """Replica promoted, no caller exception, bus recovered, no stale read beyond the bound."""
    fields: dict[str, Any] = {
        "redis_mode": "cluster",
        "redis_url": cluster.url,
        "namespace": namespace,
        "cluster_bus": bus,
        "max_stale_on_bus_loss": MAX_STALE,
        "circuit_breaker_cooldown": 1.0,
        "reconnect_backoff_max": 0.5,
        **FAST,
    }
    channel = f"{namespace}:invalidate"
    for node in cluster.nodes:  # a node killed by an earlier test rejoins as a replica
        if not node.running:
            node.start()
    cluster.wait_healthy(30)
    async with Worker(**fields) as a, Worker(**fields) as b:
        if bus == "sharded":
            victim = slot_owner(cluster, key_slot(channel.encode()))
        else:
            victim = bus_node(cluster, namespace)
            if cluster.role(victim) != "master":
                pytest.fail("the bus subscribed on a replica; expected a primary first")
        before = {node.port for node in cluster.primaries()}
        killed_wall = 0.0

        def kill() -> None:
            nonlocal killed_wall
            killed_wall = time.time()
            victim.kill()

        report = await bounded_load(a, b, duration=6.5, bound=BOUND, kill_after=1.5, kill=kill)
        assert [] == report.stale
        promoted = {node.port for node in cluster.primaries()} - before
        assert 1 == len(promoted), "the victim's replica became a primary"
        assert report.killed_at is not None
        # Both instances recover by themselves: L2 in use again, bus resubscribed.
        for worker in (a, b):
            assert True is await worker.call("wait_bus", connected=True, recovered=1, within=10)
            await eventually(functools.partial(healthy, worker), within=15, interval=0.05)
        # After the failover every key is writable and read back by the other instance.
        for i, key in enumerate(KEYS):
            assert True is await a.call("set", key=key, value=10_000 + i)
        for i, key in enumerate(KEYS):
            # Within the bus latency: a broadcast PUBLISH reaches B's node through the
            # cluster bus after A's call returned.
            await eventually(functools.partial(b.call, "get", key=key), expect=10_000 + i)
        for worker in (a, b):
            stats = await worker.call("stats")
            assert stats["bus"]["recoveries"] >= 1
            print(
                f"{bus}: bus recovered {stats['bus']['last_recovery_at'] - killed_wall:.2f}s "
                f"after the kill; last failed write "
                f"{(report.last_failed_write or report.killed_at) - report.killed_at:.2f}s "
                f"after it; {report.writes} writes ({report.confirmed} confirmed), "
                f"{report.reads} reads ({report.misses} misses)"
            )


async def healthy(worker: Worker) -> bool:
    """Whether the instance reports itself healthy (L2 connected, bus subscribed)."""
    report = await worker.call("health")
    return bool(report["status"] == "healthy")
