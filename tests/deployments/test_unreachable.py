"""Cluster and Sentinel deployments that cannot be reached never break the caller."""

from __future__ import annotations

import time

import pytest

from coherent_cache import CacheConfig, CacheManager
from coherent_cache.testing import free_port

from .conftest import FAST


def dead_config(mode: str) -> CacheConfig:
    """A config whose nodes (or sentinels) refuse connections."""
    if mode == "cluster":
        return CacheConfig(
            redis_mode="cluster", redis_url=f"redis://127.0.0.1:{free_port()}", **FAST
        )
    return CacheConfig(
        redis_mode="sentinel",
        redis_url="redis://mymaster/0",
        sentinel_master="mymaster",
        sentinel_addresses=(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"),
        **FAST,
    )


@pytest.mark.parametrize("mode", ["cluster", "sentinel"])
async def test_start_and_operations_without_any_node(mode: str) -> None:
    """start() returns within its deadline, the manager runs on L1, degraded, no raise."""
    config = dead_config(mode)
    started = time.monotonic()
    async with CacheManager(config) as cache:
        assert time.monotonic() - started < 5 * (config.connect_timeout + config.operation_timeout)
        assert False is await cache.set("k", 1, ttl=60)
        assert 1 == await cache.get("k")
        assert "d" == await cache.get("absent", default="d")
        assert 0 == await cache.clear_pattern("x:*")
        assert True is await cache.delete("k")
        health = await cache.health()
        stats = await cache.get_stats()
        assert ("degraded", False, False) == (
            health["status"],
            stats["l2_cache"]["connected"],
            stats["bus"]["connected"],
        )
