"""cashews and aiocache in the per-operation rows (`benchmarks.suite.micro`): default, fastest
settings.

Installed by the ``bench`` extra only (``pip install -e '.[bench]'``). Settings:

- cashews: ``Cache().setup("mem://")`` for in-process rows; ``setup(url)`` (its defaults:
  pickle, ``socket_timeout=1``, a ``BlockingConnectionPool`` of 10 connections, errors
  suppressed) for L2 rows, plus ``max_connections=100`` in the concurrent rows (its
  fastest there); ``client_side=True`` for the two-tier row. Decorator: ``@cache(ttl=...)``
  with its default ``protected=True`` (every call runs in a new task) and ``protected=False``.
- aiocache: ``SimpleMemoryCache`` / ``RedisCache`` with the default ``timeout=5`` (every
  operation under ``asyncio.wait_for``) and ``timeout=None``; ``@cached`` likewise.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlparse

import anyio

from benchmarks.suite.micro import (
    HIT_ARG,
    KEYS,
    TTL,
    VALUE,
    Subject,
    concurrency,
    concurrent,
    key_names,
    profile,
    sequential,
)


def missing() -> list[str]:
    """The peers that are not installed."""
    import importlib.util

    return [name for name in ("cashews", "aiocache") if importlib.util.find_spec(name) is None]


async def close_quietly(close: Callable[[], Awaitable[Any]]) -> None:
    """Await a peer's close, bounded and shielded; redis-py's close() alias warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await close()


def _user() -> Callable[[int], Awaitable[dict[str, Any]]]:
    async def user(x: int) -> dict[str, Any]:
        return {"id": x, "name": f"user-{x}", "active": True}

    return user


async def cashews_subjects(
    stack: AsyncExitStack, url: str, token: str, rows: Sequence[str]
) -> list[Subject]:
    """cashews 7.6 in every row it has an equivalent for."""
    from cashews import Cache

    async def made(settings: str, **extra: Any) -> Any:
        cache = Cache(name=f"bench-{token}-{len(stack._exit_callbacks)}")
        cache.setup(settings, **extra)
        stack.push_async_callback(close_quietly, cache.close)
        with anyio.fail_after(30):
            await cache.init()
        return cache

    subjects: list[Subject] = []
    mem = await made("mem://")
    await mem.set("hot", VALUE, expire=TTL)
    redis_caches: dict[str, Any] = {}
    for row in rows:
        if row == "l1_hit":
            subjects.append(Subject(row, "cashews", "mem://", sequential(mem.get, "hot")))
        elif row == "decorator_hit_model":
            f = mem(ttl=TTL, prefix="dec-model")(profile)
            await f(HIT_ARG)
            subjects.append(Subject(row, "cashews", "@cache, defaults", sequential(f, HIT_ARG)))
        elif row == "decorator_hit":
            for protected in (True, False):
                f = mem(ttl=TTL, prefix=f"dec-{protected}", protected=protected)(_user())
                await f(HIT_ARG)
                variant = "@cache, defaults (protected=True)" if protected else "protected=False"
                subjects.append(Subject(row, "cashews", variant, sequential(f, HIT_ARG)))
        elif row == "two_tier_l1_hit":
            cs = await made(url, client_side=True, client_side_prefix=f"cs-{token}:")
            await cs.set("hot", VALUE, expire=TTL)
            await cs.get("hot")
            subjects.append(
                Subject(row, "cashews", "redis:// client_side=True", sequential(cs.get, "hot"))
            )
        elif row.startswith("l2_"):
            variants = [("defaults", {})]
            if row.startswith("l2_conc"):
                variants.append(("max_connections=100", {"max_connections": 100}))
            for variant, extra in variants:
                cache = redis_caches.get(variant)
                if cache is None:
                    cache = redis_caches[variant] = await made(url, **extra)
                    prefix = f"cashews-{token}-{variant}:"
                    await cache.set_many({prefix + k: VALUE for k in key_names(KEYS)}, expire=TTL)
                prefix = f"cashews-{token}-{variant}:"
                if row == "l2_hit_seq":
                    subjects.append(
                        Subject(
                            row,
                            "cashews",
                            f"redis://, {variant}",
                            sequential(cache.get, prefix + "k0"),
                            max_units=20_000,
                        )
                    )
                else:
                    width = concurrency(row)
                    subjects.append(
                        Subject(
                            row,
                            "cashews",
                            f"redis://, {variant}",
                            concurrent(cache.get, [prefix + k for k in key_names(width)]),
                            ops_per_unit=width,
                            max_units=2000,
                            note="errors are suppressed: a failed get returns None, counted",
                        )
                    )
    return subjects


async def aiocache_subjects(
    stack: AsyncExitStack, url: str, token: str, rows: Sequence[str]
) -> list[Subject]:
    """aiocache 0.12 in every row it has an equivalent for (it has no two-tier mode)."""
    from aiocache import RedisCache, SimpleMemoryCache, cached

    parsed = urlparse(url)
    options = {"endpoint": parsed.hostname or "127.0.0.1", "port": parsed.port or 6379}
    timeouts: list[tuple[str, dict[str, Any]]] = [
        ("defaults (timeout=5)", {}),
        ("timeout=None", {"timeout": None}),
    ]
    subjects: list[Subject] = []
    for variant, timeout in timeouts:
        mem = SimpleMemoryCache(**timeout)
        stack.push_async_callback(mem.clear)  # cancels its per-key TTL timers
        await mem.set("hot", VALUE, ttl=TTL)
        redis: Any = None
        for row in rows:
            if row == "l1_hit":
                subjects.append(
                    Subject(
                        row, "aiocache", f"SimpleMemoryCache, {variant}", sequential(mem.get, "hot")
                    )
                )
            elif row == "decorator_hit_model":
                f = cached(ttl=TTL, namespace=f"decm-{token}-{variant}", **timeout)(profile)
                stack.push_async_callback(f.cache.clear)
                await f(HIT_ARG)
                subjects.append(
                    Subject(row, "aiocache", f"@cached, {variant}", sequential(f, HIT_ARG))
                )
            elif row == "decorator_hit":
                f = cached(ttl=TTL, namespace=f"dec-{token}-{variant}", **timeout)(_user())
                stack.push_async_callback(f.cache.clear)
                await f(HIT_ARG)
                subjects.append(
                    Subject(row, "aiocache", f"@cached, {variant}", sequential(f, HIT_ARG))
                )
            elif row.startswith("l2_"):
                if redis is None:
                    redis = RedisCache(
                        namespace=f"aiocache-{token}-{len(subjects)}", **options, **timeout
                    )
                    stack.push_async_callback(close_quietly, redis.close)
                    await redis.multi_set([(k, VALUE) for k in key_names(KEYS)], ttl=TTL)
                if row == "l2_hit_seq":
                    subjects.append(
                        Subject(
                            row,
                            "aiocache",
                            f"RedisCache, {variant}",
                            sequential(redis.get, "k0"),
                            max_units=20_000,
                        )
                    )
                else:
                    width = concurrency(row)
                    subjects.append(
                        Subject(
                            row,
                            "aiocache",
                            f"RedisCache, {variant}",
                            concurrent(redis.get, key_names(width)),
                            ops_per_unit=width,
                            max_units=2000,
                        )
                    )
    return subjects
