"""Fixtures over real deployments: a standalone server, a 3+3 cluster, primary+replica+sentinels.

Each deployment starts once per test module that asks for it (a few seconds each) and is
stopped by pid. `Target` describes how a manager reaches a deployment (the `CacheConfig`
fields) and gives a raw client per data node to inspect it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from coherent_cache import CacheConfig, CacheManager
from coherent_cache.testing import RedisServer

from .harness import HOST, SentinelDeployment, ValkeyCluster

MODES = [
    pytest.param("standalone", id="standalone"),
    pytest.param("cluster", id="cluster", marks=pytest.mark.cluster),
    pytest.param("sentinel", id="sentinel", marks=pytest.mark.sentinel),
]
FAST: dict[str, Any] = {
    "bus_health_check_interval": 0.2,
    "operation_timeout": 0.3,
    "connect_timeout": 0.5,
}
"""Timeouts that notice a lost node within a second (tests only)."""


@dataclass
class Target:
    """How to reach one deployment: config fields for managers, raw clients for checks."""

    mode: str
    fields: dict[str, Any]
    data_ports: Callable[[], list[int]] = field(repr=False)
    """Ports of the servers that currently act as primaries (hold the data)."""

    def config(self, **overrides: Any) -> CacheConfig:
        """A `CacheConfig` for this deployment."""
        return CacheConfig(**{**self.fields, **overrides})

    def raw_client(self) -> Redis | RedisCluster:
        """A plain redis-py client of the deployment (cluster-aware in cluster mode)."""
        if self.mode == "cluster":
            return RedisCluster.from_url(self.fields["redis_url"], socket_timeout=5)
        return Redis(host=HOST, port=self.data_ports()[0], socket_timeout=5)

    async def keys_on_every_primary(self, match: str) -> dict[int, set[bytes]]:
        """SCAN each primary directly: port -> matching keys (no cluster routing involved)."""
        found: dict[int, set[bytes]] = {}
        for port in self.data_ports():
            client = Redis(host=HOST, port=port, socket_timeout=5)
            try:
                found[port] = {name async for name in client.scan_iter(match=match, count=1000)}
            finally:
                await client.aclose()
        return found


def _cluster_primaries(cluster: ValkeyCluster) -> Callable[[], list[int]]:
    return lambda: [node.port for node in cluster.primaries()]


def sentinel_fields(deployment: SentinelDeployment) -> dict[str, Any]:
    """The config fields of a manager behind ``deployment``'s sentinels."""
    return {
        "redis_mode": "sentinel",
        # Only the scheme, credentials and database of this URL are used.
        "redis_url": f"redis://{deployment.master_name}/0",
        "sentinel_master": deployment.master_name,
        "sentinel_addresses": list(deployment.sentinel_addresses),
    }


@pytest.fixture(scope="module")
def valkey_cluster() -> Iterator[ValkeyCluster]:
    """A 3-primary, 3-replica cluster for this module."""
    with ValkeyCluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def sentinel_deployment() -> Iterator[SentinelDeployment]:
    """A primary, a replica and 3 sentinels for this module."""
    with SentinelDeployment() as deployment:
        yield deployment


@pytest.fixture(scope="module")
def standalone_server() -> Iterator[RedisServer]:
    """One plain server for this module."""
    with RedisServer() as server:
        yield server


def target_for(mode: str, request: pytest.FixtureRequest) -> Target:
    """Start (once per module) and describe the deployment of ``mode``."""
    if mode == "cluster":
        cluster: ValkeyCluster = request.getfixturevalue("valkey_cluster")
        return Target(
            mode,
            {"redis_mode": "cluster", "redis_url": cluster.url},
            _cluster_primaries(cluster),
        )
    if mode == "sentinel":
        deployment: SentinelDeployment = request.getfixturevalue("sentinel_deployment")
        return Target(
            mode, sentinel_fields(deployment), lambda: [deployment.current_primary().port]
        )
    server: RedisServer = request.getfixturevalue("standalone_server")
    return Target(mode, {"redis_url": server.url}, lambda: [server.port])


@pytest.fixture(scope="module", params=MODES)
def target(request: pytest.FixtureRequest) -> Target:
    """Each deployment in turn (standalone, cluster, sentinel)."""
    mode: str = request.param
    return target_for(mode, request)


@pytest.fixture
def namespace() -> str:
    """A fresh namespace per test."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def raw(target: Target) -> AsyncIterator[Redis | RedisCluster]:
    """A plain client of the current deployment."""
    client = target.raw_client()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def make_manager(target: Target, namespace: str) -> AsyncIterator[Callable[..., Any]]:
    """Start managers on the current deployment and namespace; stop them at teardown."""
    made: list[CacheManager] = []

    async def factory(**overrides: Any) -> CacheManager:
        manager = CacheManager(target.config(namespace=namespace, **{**FAST, **overrides}))
        made.append(manager)
        await manager.start()
        return manager

    try:
        yield factory
    finally:
        for manager in reversed(made):
            await manager.stop()
