"""An L1 never keeps what L2 no longer holds: after a pattern clear.

Two instances of one namespace in this process, against a real server.
"""

from __future__ import annotations

from redis.asyncio import Redis

from coherent_cache import InvalidKeyError

from .conftest import ManagerFactory, eventually


class TestPatternClearMatchesRedis:
    async def test_range_from_ascii_to_non_ascii_never_leaves_l1_behind(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """``k:[e-ü]``: Redis on x86 compares range bounds as signed char and matches
        ``k:a``; on ARM it does not. Such a pattern is refused before anything is deleted,
        so neither the clearing instance nor another one keeps a key Redis dropped."""
        a = await make_manager()
        b = await make_manager()
        await a.set("k:a", "old", ttl=60)
        assert "old" == await b.get("k:a")  # B holds an L1 copy
        refused = False
        try:
            await a.clear_pattern("k:[e-ü]")
        except InvalidKeyError:
            refused = True
        in_redis = await raw_redis.exists(f"{namespace}:k:a") == 1
        # What the clearing instance serves right after its call agrees with Redis.
        assert in_redis == (a.l1.peek("k:a") is not None), "A's L1 disagrees with Redis"
        if not in_redis:  # B applies the clear when its bus message arrives
            await eventually(lambda: b.l1.peek("k:a"), expect=None, within=2.0)
        assert refused, "a pattern Redis matches differently by platform must be refused"
        assert in_redis
        assert "old" == await a.get("k:a") == await b.get("k:a")
