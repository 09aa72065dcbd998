"""mypy --strict pins the decorators' types: signatures kept, awaited results typed.

Every ``# type: ignore[...]`` below marks a call that must stay a type error: if the
decorators lost their signatures, mypy (strict, so warn_unused_ignores) would report the
ignore as unused.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

from coherent_cache import CacheConfig, CacheManager
from coherent_cache.decorators import CachedFunction, InvalidatingFunction


def declare(cache: CacheManager) -> None:
    """Decorate functions of every kind and check what mypy makes of them."""

    @cache.cached(ttl=60, key_prefix="user")
    async def get_user(user_id: int, data: dict[str, Any] | None = None) -> dict[str, int]:
        return {"id": user_id}

    @cache.cached()
    def compute(n: int, *, scale: float = 1.0) -> list[float]:
        return [n * scale]

    @cache.cached()
    async def find(name: str) -> str | None:
        return None

    @cache.cache_invalidate("user:{user_id}")
    async def update_user(user_id: int, data: dict) -> bool:  # type: ignore[type-arg]
        return True

    @cache.cache_invalidate("user:*")
    def sync_update(user_id: int) -> int:
        return user_id

    class Repo:
        @cache.cached()
        async def get(self, item_id: int) -> bytes:
            return b""

        @cache.cached()
        def get_sync(self, item_id: int) -> tuple[int, str]:
            return (item_id, "")

        @staticmethod
        @cache.cached()
        async def static(n: int) -> float:
            return 1.0

        @cache.cache_invalidate("item:{item_id}")
        async def save(self, item_id: int) -> None:
            return None

    async def use() -> None:
        # R is the declared return type; P keeps the parameters.
        typed_async: CachedFunction[[str], Coroutine[Any, Any, str | None]] = find
        typed_sync: InvalidatingFunction[[int], int] = sync_update
        del typed_async, typed_sync
        assert_type(await get_user(1), dict[str, int])
        assert_type(await get_user(user_id=1, data={"a": 1}), dict[str, int])
        assert_type(await compute(2), list[float])
        assert_type(await compute(2, scale=0.5), list[float])
        assert_type(await find("x"), str | None)
        assert_type(get_user.cache_key(1), str)
        assert_type(await get_user.invalidate(1), bool)
        assert_type(await update_user(1, {}), bool)
        assert_type(await sync_update(1), int)

        repo = Repo()
        assert_type(await repo.get(1), bytes)
        assert_type(await repo.get_sync(1), tuple[int, str])
        assert_type(await Repo.get(repo, 1), bytes)
        assert_type(repo.get.cache_key(1), str)
        assert_type(await Repo.static(1), float)
        assert_type(await repo.save(1), None)

        # Wrong arguments stay errors (async: call-overload, sync: arg-type).
        await get_user("1")  # type: ignore[call-overload]
        await compute("2")  # type: ignore[arg-type]
        await compute(2, scale="x")  # type: ignore[arg-type]
        await get_user(1, 2, 3)  # type: ignore[call-overload]
        get_user.cache_key("1")  # type: ignore[arg-type]
        await get_user.invalidate(user="1")  # type: ignore[call-arg]
        await update_user("1", {})  # type: ignore[call-overload]
        await sync_update("1")  # type: ignore[arg-type]
        await repo.get("1")  # type: ignore[call-overload]
        await repo.get_sync("1")  # type: ignore[arg-type]
        await repo.save("1")  # type: ignore[call-overload]
        # The result is an awaitable, not the value.
        get_user(1).keys()  # type: ignore[attr-defined]

    del use


class TestDecoratorTypes:
    def test_declarations_run(self) -> None:
        """The typed declarations above also decorate at run time without a started cache."""
        declare(CacheManager(CacheConfig(redis_url=None)))
