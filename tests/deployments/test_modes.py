"""The core contract on every deployment: standalone, Redis/Valkey Cluster and Sentinel.

Each test runs against real servers started once per module per mode (`conftest.target`);
coherence is checked between two OS processes (`tests.support.worker`).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from coherent_cache import CacheConfig, CacheManager, CacheTier, InvalidationPublisher

from ..conftest import eventually
from ..support.multiproc import MISSING, Worker
from .conftest import FAST, Target
from .harness import ValkeyCluster, command

Factory = Callable[..., Any]
KEYS = [f"user:{i}" for i in range(40)]  # spread over many slots (and every primary)


def l2_name(namespace: str, key: str) -> str:
    """The Redis key of a cache key (docs/operations.md, key layout)."""
    return f"{namespace}:{key}"


class TestCore:
    async def test_set_get_delete(
        self, make_manager: Factory, raw: Redis | RedisCluster, namespace: str
    ) -> None:
        """Read-your-writes, the value in L2 under <namespace>:<key>, delete removes it."""
        cache: CacheManager = await make_manager()
        for key in KEYS:
            assert True is await cache.set(key, {"k": key}, ttl=60)
        assert [{"k": key} for key in KEYS] == [await cache.get(key) for key in KEYS]
        assert [{"k": key} for key in KEYS] == [await cache.get(key, CacheTier.L2) for key in KEYS]
        assert 1 == await raw.exists(l2_name(namespace, "user:3"))
        assert True is await cache.delete("user:3")
        assert (None, 0) == (
            await cache.get("user:3"),
            await raw.exists(l2_name(namespace, "user:3")),
        )

    async def test_ttl_in_l2(
        self, make_manager: Factory, raw: Redis | RedisCluster, namespace: str
    ) -> None:
        """The entry's TTL is set in Redis, and an expired entry is a miss."""
        cache: CacheManager = await make_manager()
        await cache.set("t:long", 1, ttl=60)
        assert 59_000 <= await raw.pttl(l2_name(namespace, "t:long")) <= 60_000
        await cache.set("t:short", 1, ttl=0.2, tier=CacheTier.L2)
        await eventually(lambda: cache.get("t:short", CacheTier.L2, default="gone"), expect="gone")

    async def test_l1_fill_from_l2(self, make_manager: Factory) -> None:
        """Another instance's read fills its L1 from L2."""
        writer: CacheManager = await make_manager()
        reader: CacheManager = await make_manager()
        await writer.set("fill:1", "v", ttl=60, tier=CacheTier.L2)
        assert None is reader.l1.peek("fill:1")

        async def read_and_peek() -> tuple[Any, Any]:
            # The writer's invalidation may land during the first fill, which the
            # fill-race guard then drops on purpose: read until a fill sticks.
            return await reader.get("fill:1"), reader.l1.peek("fill:1")

        await eventually(read_and_peek, expect=("v", "v"))

    async def test_clear_pattern_removes_matching_keys_only(
        self, make_manager: Factory, target: Target, namespace: str
    ) -> None:
        """clear_pattern empties the pattern on every primary and leaves other keys alone."""
        cache: CacheManager = await make_manager()
        for key in KEYS:
            await cache.set(key, 1, ttl=60)
        for i in range(10):
            await cache.set(f"order:{i}", 1, ttl=60)
        before = await target.keys_on_every_primary(f"{namespace}:user:*")
        if target.mode == "cluster":
            assert 3 == sum(1 for keys in before.values() if keys)  # every primary has some
        assert len(KEYS) == await cache.clear_pattern("user:*")
        after = await target.keys_on_every_primary(f"{namespace}:*")
        left = sorted(name.decode() for keys in after.values() for name in keys)
        assert [f"{namespace}:order:{i}" for i in range(10)] == sorted(left)
        assert None is await cache.get("user:1")

    async def test_clear(self, make_manager: Factory, target: Target, namespace: str) -> None:
        """clear removes the namespace's entries and tag indexes from every primary; the
        running instance's fleet report (not cache data) stays."""
        cache: CacheManager = await make_manager()
        for key in KEYS:
            await cache.set(key, 1, ttl=60, tags=["all"])
        assert len(KEYS) == await cache.clear()
        found = await target.keys_on_every_primary(f"{namespace}*")
        left = [name for keys in found.values() for name in keys]
        assert [f"{namespace}#fleet".encode()] == left

    async def test_tags(self, make_manager: Factory) -> None:
        """invalidate_tags removes every entry carrying the tag, across slots."""
        cache: CacheManager = await make_manager()
        other: CacheManager = await make_manager()
        for key in KEYS[:10]:
            await cache.set(key, key, ttl=60, tags=["group:a"])
        await cache.set("keep", 1, ttl=60, tags=["group:b"])
        assert KEYS[0] == await other.get(KEYS[0])
        assert 10 == await cache.invalidate_tags("group:a")
        assert [None] * 10 == [await cache.get(key, CacheTier.L2) for key in KEYS[:10]]
        assert 1 == await cache.get("keep")
        await eventually(lambda: other.l1.peek(KEYS[0], "gone"), expect="gone")

    async def test_decorators(self, make_manager: Factory) -> None:
        """cached loads once, cache_invalidate drops the entry (L1 and L2)."""
        cache: CacheManager = await make_manager()
        calls: list[int] = []

        @cache.cached(ttl=60, key_prefix="prof")
        async def profile(user_id: int) -> dict[str, int]:
            calls.append(user_id)
            return {"id": user_id}

        @cache.cache_invalidate("prof:{user_id}")
        async def update(user_id: int) -> None:
            return None

        assert [{"id": 1}, {"id": 1}, {"id": 2}] == [
            await profile(1),
            await profile(1),
            await profile(2),
        ]
        await update(1)
        assert {"id": 1} == await profile(1)
        assert [1, 2, 1] == calls

    async def test_get_or_set_with_lock(self, make_manager: Factory) -> None:
        """The cross-instance loader lock (Lua on one key) works: 20 callers, one load."""
        first: CacheManager = await make_manager()
        second: CacheManager = await make_manager()
        loads: list[int] = []

        async def loader() -> str:
            loads.append(1)
            await anyio.sleep(0.1)
            return "loaded"

        results: list[Any] = []

        async def call(cache: CacheManager) -> None:
            results.append(await cache.get_or_set("locked", loader, ttl=60, lock=True))

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(call, first if i % 2 else second)
        assert (["loaded"] * 20, 1) == (results, len(loads))

    async def test_warm_cache_batches_across_slots(self, make_manager: Factory) -> None:
        """A warm batch (one pipeline over many slots) lands every item in L2."""
        cache: CacheManager = await make_manager()
        reader: CacheManager = await make_manager()
        result = await cache.warm_cache([(key, key) for key in KEYS], batch_size=25, ttl=60)
        assert len(KEYS) == result.written
        assert KEYS == [await reader.get(key, CacheTier.L2) for key in KEYS]

    async def test_burst_beyond_the_pool_waits_instead_of_failing(
        self, make_manager: Factory
    ) -> None:
        """300 concurrent L2 reads with max_connections=4 all succeed: callers wait for a
        connection (within the operation deadline) instead of failing and opening the
        breaker (RedisCluster's per-node pools raise when full; the cache waits)."""
        cache: CacheManager = await make_manager(operation_timeout=5.0, max_connections=4)
        for key in KEYS:
            await cache.set(key, key, ttl=60)
        found: list[Any] = []

        async def read(key: str) -> None:
            found.append(await cache.get(key, CacheTier.L2))

        async with anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(read, KEYS[i % len(KEYS)])
        stats = (await cache.get_stats())["l2_cache"]
        assert (300, 0, 0, "closed") == (
            sum(1 for value in found if value in KEYS),
            stats["errors"],
            stats["short_circuited"],
            stats["breaker"],
        )

    async def test_concurrent_reads_are_auto_pipelined(
        self, make_manager: Factory, raw: Redis | RedisCluster, namespace: str
    ) -> None:
        """100 concurrent L2 reads over many slots share pipelines; a WRONGTYPE reply is a
        miss for its own caller only."""
        cache = await make_manager(operation_timeout=5.0)  # a loaded machine is no outage
        for i in range(100):
            if i != 7:
                assert await cache.set(f"k{i}", i, 60)
        await raw.rpush(f"{namespace}:k7", "not a string")
        results: dict[int, object] = {}

        async def read(i: int) -> None:
            results[i] = await cache.get(f"k{i}", CacheTier.L2, default="miss")

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(read, i)
        assert {i: ("miss" if i == 7 else i) for i in range(100)} == results
        assert cache.l2 is not None and cache.l2._reads.pipelines >= 1

    async def test_health_and_stats(self, make_manager: Factory) -> None:
        """A started manager is healthy, connected, subscribed."""
        cache: CacheManager = await make_manager()
        health = await cache.health()
        stats = await cache.get_stats()
        assert ("healthy", [], True, True) == (
            health["status"],
            health["reasons"],
            stats["l2_cache"]["connected"],
            stats["bus"]["connected"],
        )


@pytest.fixture
async def pair(target: Target, namespace: str) -> AsyncIterator[tuple[Worker, Worker]]:
    """Two instances in their own processes on the current deployment."""
    fields = {**target.fields, **FAST, "namespace": namespace}
    async with Worker(**fields) as a, Worker(**fields) as b:
        yield a, b


async def hold_in_l1(writer: Worker, reader: Worker, key: str, value: object) -> None:
    """Write through ``writer`` and read through ``reader`` until the value sits in its L1."""
    await writer.call("set", key=key, value=value)
    with anyio.fail_after(5):
        while True:
            assert value == await reader.call("get", key=key)
            if value == await reader.call("peek", key=key):
                return


class TestCoherenceAcrossProcesses:
    async def test_set_delete_clear_pattern(self, pair: tuple[Worker, Worker]) -> None:
        """A's set, delete and clear_pattern reach B's L1."""
        a, b = pair
        await hold_in_l1(a, b, "user:1", 1)
        await a.call("set", key="user:1", value=2)
        assert None is not await b.call("wait_gone", key="user:1", within=5)
        assert 2 == await b.call("get", key="user:1")
        await hold_in_l1(a, b, "user:2", 1)
        await a.call("delete", key="user:2")
        assert None is not await b.call("wait_gone", key="user:2", within=5)
        for key in ("p:1", "p:2", "q:1"):
            await hold_in_l1(a, b, key, key)
        await a.call("clear_pattern", pattern="p:*")
        assert None is not await b.call("wait_gone", key="p:2", within=5)
        assert "q:1" == await b.call("peek", key="q:1")

    async def test_publisher(
        self, target: Target, namespace: str, pair: tuple[Worker, Worker]
    ) -> None:
        """InvalidationPublisher (no L1) reaches every instance in every mode."""
        a, b = pair
        await hold_in_l1(a, b, "pub:1", 1)
        await hold_in_l1(b, a, "pub:1", 1)
        async with InvalidationPublisher(config=target.config(namespace=namespace, **FAST)) as pub:
            await pub.delete("pub:1", "pub:2", "pub:3")
        for worker in (a, b):
            assert None is not await worker.call("wait_gone", key="pub:1", within=5)
            assert MISSING == await worker.call("get", key="pub:1")

    async def test_fleet_lists_both(self, pair: tuple[Worker, Worker]) -> None:
        """Each process reports at start; each lists both (one key, no CROSSSLOT on a
        cluster; the primary behind the sentinels)."""
        a, b = pair

        both = sorted([a.origin, b.origin])
        for worker in (a, b):
            await eventually(functools.partial(_worker_origins, worker), expect=both)


OPERATIONS_DOC = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()


async def _worker_origins(worker: Worker) -> list[str]:
    return sorted(report["origin"] for report in await worker.call("fleet"))


async def _origins(cache: CacheManager) -> list[str]:
    return sorted(report["origin"] for report in await cache.fleet())


def cluster_acl_line(namespace: str, password: str) -> list[str]:
    """The cluster ACL line of docs/operations.md, for ``namespace`` and ``password``."""
    lines = [
        line
        for line in OPERATIONS_DOC.splitlines()
        if line.startswith("ACL SETUSER myapp ") and "+spublish" in line
    ]
    assert 1 == len(lines), "docs/operations.md must show the cluster ACL line once"
    return [
        part.replace(">app-password", ">" + password)
        for part in lines[0].replace("myapp", namespace).split()
    ]


@pytest.mark.cluster
class TestClusterAcl:
    async def test_library_works_under_the_documented_cluster_user(
        self, valkey_cluster: ValkeyCluster, namespace: str
    ) -> None:
        """With the documented least-privilege user on every node, reads, writes, tags,
        the lock, pattern clears, the sharded bus and the fleet reports all work, and no
        node refused a command (every ACL LOG stays empty)."""
        password = "app-s3cret-pw"
        for node in valkey_cluster.nodes:
            assert command(node.port, *cluster_acl_line(namespace, password)) == b"+OK\r\n"
            assert command(node.port, "ACL", "LOG", "RESET") == b"+OK\r\n"
        url = f"redis://{namespace}:{password}@127.0.0.1:{valkey_cluster.nodes[0].port}"
        config = CacheConfig(
            redis_mode="cluster", redis_url=url, namespace=namespace, lock_lease=1.0, **FAST
        )
        try:
            async with CacheManager(config) as a, CacheManager(config) as b:
                assert "healthy" == (await a.health())["status"]
                for key in KEYS[:10]:
                    assert await a.set(key, 1, ttl=60, tags=["t"])
                assert 1 == await b.get(KEYS[0])
                await a.set(KEYS[0], 2)
                await eventually(lambda: b.l1.peek(KEYS[0], "gone"), expect="gone")

                async def load() -> str:
                    return "loaded"

                assert "loaded" == await a.get_or_set("locked", load, lock=True)
                assert 10 == await a.invalidate_tags("t")
                await a.set("p:1", 1)
                assert 1 == await a.clear_pattern("p:*")
                assert 1 <= await a.clear()
                await eventually(
                    lambda: _origins(a), expect=sorted([a.origin, b.origin])
                )  # the fleet reports, under the same user
            assert [b"*0\r\n"] * len(valkey_cluster.nodes) == [
                command(node.port, "ACL", "LOG") for node in valkey_cluster.nodes
            ]
        finally:
            for node in valkey_cluster.nodes:
                command(node.port, "ACL", "DELUSER", namespace)
