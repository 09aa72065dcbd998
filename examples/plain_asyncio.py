"""coherent_cache in a plain asyncio program (no web framework).

Manual ``set`` / ``get``, ``get_or_set`` with a loader, the ``cached`` and
``cache_invalidate`` decorators, tags, and the statistics::

    REDIS_URL=redis://127.0.0.1:6379/0 python examples/plain_asyncio.py

Without a reachable server it still runs, on the in-memory L1 alone.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from coherent_cache import CacheConfig, create_cache_manager


async def main(redis_url: str | None = None, namespace: str = "plain") -> dict[str, Any]:
    """Run every step once; return what was observed, so tests can check it."""
    config = CacheConfig(
        redis_url=redis_url or os.environ.get("REDIS_URL", "redis://localhost:6379"),
        namespace=namespace,
        default_ttl=600,
    )
    seen: dict[str, Any] = {}
    async with create_cache_manager(config) as cache:
        await cache.clear()

        # Manual operations.
        await cache.set("greeting", {"text": "hello"}, ttl=60)
        seen["get"] = await cache.get("greeting")

        # get_or_set: the loader runs on a miss only, once even for concurrent callers.
        loads: list[int] = []

        async def load_report() -> dict[str, int]:
            loads.append(1)
            await asyncio.sleep(0.01)  # stands in for a slow query
            return {"visits": 1234}

        reports = await asyncio.gather(
            *(cache.get_or_set("report:daily", load_report, ttl=300) for _ in range(10))
        )
        seen["get_or_set"] = reports[0]
        seen["get_or_set_loads"] = len(loads)

        # Decorators: results keyed by arguments, invalidated after a successful write.
        calls: list[int] = []

        @cache.cached(ttl=3600, key_prefix="user", tags=["users"])
        async def get_user(user_id: int) -> dict[str, Any]:
            calls.append(user_id)
            return {"id": user_id, "name": f"User {user_id}"}

        @cache.cache_invalidate("user:{user_id}")
        async def rename_user(user_id: int, name: str) -> bool:
            return True

        await get_user(7)
        await get_user(7)
        seen["cached_calls_after_two_reads"] = len(calls)
        seen["cache_key"] = get_user.cache_key(7)
        await rename_user(7, "Ada")
        await get_user(7)
        seen["cached_calls_after_invalidation"] = len(calls)

        # Tags: one call drops every entry carrying the tag.
        await get_user(8)
        seen["tag_removed"] = await cache.invalidate_tags("users")
        seen["after_tags"] = await cache.get("user:8")

        # Delete and pattern clear.
        await cache.delete("greeting")
        seen["after_delete"] = await cache.get("greeting")
        for i in range(3):
            await cache.set(f"session:{i}", {"n": i}, ttl=60)
        seen["cleared"] = await cache.clear_pattern("session:*")

        stats = await cache.get_stats()
        seen["stats"] = {
            "total_hits": stats["total_hits"],
            "total_misses": stats["total_misses"],
            "total_sets": stats["total_sets"],
            "l1_hit_rate": stats["l1_cache"]["hit_rate"],
            "l2_connected": stats["l2_cache"]["connected"],
        }
    for name, value in seen.items():
        print(f"{name}: {value}")
    return seen


if __name__ == "__main__":
    asyncio.run(main())
