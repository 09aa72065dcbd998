"""Client tracking on a real 3+3 cluster and on Sentinel (issue 16).

Two tracking instances (separate processes, bus off, so only tracking can invalidate
them) hold keys in L1; a plain redis-py client writes Redis directly. Cluster: keys on all
three primaries are seen (one tracking connection per primary), a killed tracking
connection and a primary's failover recover. Sentinel: tracking follows a failover.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from coherent_cache.serializer import CacheSerializer

from ..conftest import eventually
from ..support.multiproc import MISSING, Worker
from .conftest import FAST, sentinel_fields
from .harness import HOST, SentinelDeployment, ValkeyCluster, command
from .test_cluster_failover import move_slot, slot_owner

pytestmark = pytest.mark.anyio

TRACKING: dict[str, Any] = {"client_tracking": True, "enable_invalidation_bus": False, **FAST}
BOUND = 5.0
"""The bus-latency bound of the coherence tests."""


async def plant(workers: list[Worker], *keys: str) -> None:
    """Put ``"old"`` under ``keys`` into every worker's L1 (L1 only: nothing is sent)."""
    for worker in workers:
        for key in keys:
            await worker.call("set", key=key, value="old", tier="l1", ttl=300)
            assert "old" == await worker.call("peek", key=key)


async def all_gone(workers: list[Worker], *keys: str) -> None:
    """Every worker stops serving each of ``keys`` from L1 within `BOUND`."""
    for worker in workers:
        for key in keys:
            assert None is not await worker.call("wait_gone", key=key, within=BOUND), key


async def tracking_stats(worker: Worker) -> dict[str, Any]:
    stats: dict[str, Any] = (await worker.call("stats"))["tracking"]
    return stats


async def recovered(worker: Worker, *, at_least: int, channels: int) -> bool:
    """Tracking recovered ``at_least`` times and every one of ``channels`` is subscribed."""
    stats = await tracking_stats(worker)
    return bool(
        stats["recoveries"] >= at_least and stats["connected"] and stats["channels"] == channels
    )


async def healthy(worker: Worker) -> bool:
    return bool((await worker.call("health"))["status"] == "healthy")


@pytest.fixture(scope="module")
def cluster() -> Iterator[ValkeyCluster]:
    """A cluster of this module's own: one of its primaries gets killed."""
    with ValkeyCluster() as deployment:
        yield deployment


@pytest.mark.cluster
class TestCluster:
    @pytest.fixture
    async def trackers(self, cluster: ValkeyCluster, namespace: str) -> AsyncIterator[list[Worker]]:
        fields: dict[str, Any] = {
            "redis_mode": "cluster",
            "redis_url": cluster.url,
            "namespace": namespace,
        }
        async with Worker(**fields, **TRACKING) as a, Worker(**fields, **TRACKING) as b:
            yield [a, b]

    @pytest.fixture
    async def raw(self, cluster: ValkeyCluster) -> AsyncIterator[RedisCluster]:
        client = RedisCluster.from_url(cluster.url, socket_timeout=5)
        _ = await client.initialize()
        try:
            yield client
        finally:
            await client.aclose()

    @staticmethod
    def one_key_per_primary(raw: RedisCluster, namespace: str) -> dict[int, str]:
        """Primary port -> a cache key whose slot that primary serves."""
        found: dict[int, str] = {}
        for i in range(200):
            node = raw.get_node_from_key(f"{namespace}:k{i}")
            assert node is not None
            found.setdefault(int(node.port), f"k{i}")
        return found

    async def test_writes_on_every_primary_and_killed_connections(
        self, trackers: list[Worker], raw: RedisCluster, namespace: str
    ) -> None:
        """A foreign write on a key of each primary drops it everywhere (3 channels);
        CLIENT KILL of every tracking connection on every primary recovers, and tracking
        works again."""
        by_port = self.one_key_per_primary(raw, namespace)
        assert 3 == len(by_port)
        for worker in trackers:
            stats = await tracking_stats(worker)
            assert stats["connected"] and 3 == stats["channels"]
        keys = sorted(by_port.values())
        await plant(trackers, *keys)
        for key in keys:
            await raw.set(f"{namespace}:{key}", b"new")
        await all_gone(trackers, *keys)

        for port in by_port:
            kill = command(port, "CLIENT", "KILL", "TYPE", "pubsub")
            assert kill.startswith(b":"), kill
        for worker in trackers:
            check = functools.partial(recovered, worker, at_least=1, channels=3)
            await eventually(check, within=15, interval=0.05)
            assert (await tracking_stats(worker))["losses"] >= 1
            await eventually(functools.partial(healthy, worker), within=15, interval=0.05)
        await plant(trackers, *keys)
        for key in keys:
            await raw.delete(f"{namespace}:{key}")
        await all_gone(trackers, *keys)

    async def test_slot_migration(
        self, cluster: ValkeyCluster, trackers: list[Worker], raw: RedisCluster, namespace: str
    ) -> None:
        """A key's slot migrates to another primary: a foreign write there still drops the
        key (BCAST tracks the prefix on every primary, whatever slots it serves)."""
        key = "migrating"
        slot = key_slot(f"{namespace}:{key}".encode())
        await raw.set(f"{namespace}:{key}", b"before")
        source = slot_owner(cluster, slot)
        target = next(node for node in cluster.primaries() if node is not source)
        move_slot(cluster, slot, source, target)
        assert target is slot_owner(cluster, slot)
        await plant(trackers, key)
        async with Redis(host=HOST, port=target.port, socket_timeout=5) as client:
            await client.set(f"{namespace}:{key}", b"after")  # straight to the new owner
        await all_gone(trackers, key)
        for worker in trackers:
            stats = await tracking_stats(worker)
            assert stats["connected"] and 3 == stats["channels"]

    async def test_primary_failover(
        self, cluster: ValkeyCluster, trackers: list[Worker], raw: RedisCluster, namespace: str
    ) -> None:
        """SIGKILL of a primary: its replica is promoted, the instances count the loss,
        track the new primary (3 channels again, a recovery, L1 flushed) and see a foreign
        write on a key of the failed-over slots."""
        by_port = self.one_key_per_primary(raw, namespace)
        victim = next(node for node in cluster.primaries() if node.port in by_port)
        key = by_port[victim.port]
        await plant(trackers, key, "other")
        before = {node.port for node in cluster.primaries()}
        victim.kill()
        await eventually(
            lambda: len({n.port for n in cluster.primaries()} - before) == 1,
            within=30,
            interval=0.1,
        )
        for worker in trackers:
            check = functools.partial(recovered, worker, at_least=1, channels=3)
            await eventually(check, within=20, interval=0.05)
            stats = await tracking_stats(worker)
            assert stats["losses"] >= 1
            # L1 was flushed when the new primary's slots were tracked again.
            assert MISSING == await worker.call("peek", key="other")
        await plant(trackers, key)
        seed = cluster.primaries()[0].port  # the URL's node may be the one killed
        client = RedisCluster(host=HOST, port=seed, socket_timeout=5)
        try:
            await eventually(
                functools.partial(client.set, f"{namespace}:{key}", b"after"),
                within=20,
                interval=0.2,
            )
        finally:
            await client.aclose()
        await all_gone(trackers, key)


@pytest.mark.sentinel
async def test_sentinel_failover_moves_tracking(namespace: str) -> None:
    """SENTINEL FAILOVER: tracking reconnects to the new primary (a counted recovery, L1
    flushed), and a foreign write there drops the key from both instances."""
    with SentinelDeployment() as deployment:
        fields: dict[str, Any] = {
            **sentinel_fields(deployment),
            "namespace": namespace,
            **TRACKING,
        }
        old = deployment.current_primary()
        payload = CacheSerializer().serialize("old")
        async with Worker(**fields) as a, Worker(**fields) as b:
            trackers = [a, b]
            await plant(trackers, "g:1")
            async with Redis(host=HOST, port=old.port, socket_timeout=5) as client:
                await client.set(f"{namespace}:g:1", payload)
            await all_gone(trackers, "g:1")
            await plant(trackers, "g:1", "g:2")
            reply = command(deployment.sentinels[0].port, "SENTINEL", "FAILOVER", "mymaster")
            assert b"+OK\r\n" == reply
            await eventually(lambda: deployment.master_port() != old.port, within=15, interval=0.05)
            await eventually(
                lambda: b"slave" in command(old.port, "ROLE"), within=15, interval=0.05
            )
            for worker in trackers:
                check = functools.partial(recovered, worker, at_least=1, channels=1)
                await eventually(check, within=15, interval=0.05)
                assert MISSING == await worker.call("peek", key="g:2")  # flushed
            await plant(trackers, "g:1")
            new = deployment.current_primary()
            assert new.port != old.port
            async with Redis(host=HOST, port=new.port, socket_timeout=5) as client:
                await client.set(f"{namespace}:g:1", b"new")
            await all_gone(trackers, "g:1")
