"""The README quickstart as a script: basic setup, manual operations, tiers and stats.

Run it against any server: ``REDIS_URL=redis://127.0.0.1:6379/0 python examples/quickstart.py``
(without a reachable server it still runs, on the in-memory L1 alone).
"""

from __future__ import annotations

import os

import anyio

from coherent_cache import CacheConfig, CacheTier, create_cache_manager


async def main(redis_url: str | None = None) -> dict[str, object]:
    """Run the quickstart and return what it read, so tests can check it."""
    config = CacheConfig(
        redis_url=redis_url or os.environ.get("REDIS_URL", "redis://localhost:6379"),
        memory_cache_size=1000,
        enable_multi_tier=True,
        namespace="quickstart",
    )
    seen: dict[str, object] = {}
    async with create_cache_manager(config) as cache_manager:
        await cache_manager.set("custom_key", {"data": "value"}, ttl=1800)
        seen["custom_key"] = await cache_manager.get("custom_key")
        await cache_manager.delete("custom_key")
        seen["after_delete"] = await cache_manager.get("custom_key")

        for user_id in range(3):
            await cache_manager.set(f"user:{user_id}", {"id": user_id}, ttl=600)
        seen["cleared"] = await cache_manager.clear_pattern("user:*")

        await cache_manager.set("session:1", {"user": 1}, ttl=60, tier=CacheTier.L1)
        stats = await cache_manager.get_stats()
        seen["l2_connected"] = stats["l2_cache"]["connected"]
        print(f"read back: {seen}")
        hit_rate = stats["l1_cache"]["hit_rate"]
        print(f"l1 hit rate: {hit_rate:.2f}, l2 connected: {seen['l2_connected']}")
    return seen


if __name__ == "__main__":
    anyio.run(main)
