"""mypy --strict pins the types of typed reads: ``get(value_type=T)`` is ``T | None`` (or
``T | D`` with a default), ``get_or_set`` keeps its loader's type, a decorated function
keeps its signature with ``value_type=`` and with the positional ``cached(ttl, prefix)``.
"""

from __future__ import annotations

from typing import Any, assert_type

from pydantic import BaseModel

from coherent_cache import CacheManager, CacheTier


class User(BaseModel):
    id: int


async def use(cache: CacheManager) -> None:
    assert_type(await cache.get("k", value_type=User), User | None)
    assert_type(await cache.get("k", CacheTier.L1, value_type=User), User | None)
    assert_type(await cache.get("k", default=0, value_type=User), User | int)
    assert_type(await cache.get("k"), Any)

    async def load() -> User:
        return User(id=1)

    assert_type(await cache.get_or_set("k", load, value_type=User), User)

    @cache.cached(60, "user")
    async def get_user(user_id: int) -> User:
        return User(id=user_id)

    @cache.cached(60, "ids", CacheTier.L1, value_type=set[int])
    def ids(n: int) -> set[int]:
        return {n}

    assert_type(await get_user(1), User)
    assert_type(await ids(1), set[int])
    await get_user("x")  # type: ignore[call-overload]
    await ids()  # type: ignore[call-arg]
