"""Micro benchmark of concurrent L2 reads (auto-pipelining) and of one cold-key stampede.

Run from the repository root, in the project's virtualenv::

    python -m benchmarks.profiles.profile_concurrent   # private valkey-server

Rows, interleaved round by round, median µs per operation over the rounds:

- ``raw_pool_100``: 100 tasks, each ``GET`` + ``orjson.loads`` under ``asyncio.timeout``
  on a default ``redis.asyncio.Redis`` (its default pool);
- ``raw_pipeline_100``: one ``pipeline(transaction=False)`` of 100 ``GET``s (the limit);
- ``l2_get_100``: 100 tasks, ``await cache.get(k, CacheTier.L2)`` (L1 bypassed);
- ``l1miss_get_100``: 100 tasks, ``await cache.get(k)`` with L1 cleared before each
  round (the read-through fill: ``GET`` + ``PTTL``);
- at 1,000 tasks: errors of the raw default pool and of the cache.

Then a stampede: 200 callers of one cold key with a 50 ms loader (``get_or_set``), in one
process: loader calls, wall time, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import Redis

from coherent_cache import CacheConfig, CacheManager, CacheTier
from coherent_cache.testing import RedisServer

VALUE = {"id": 7, "name": "user-7", "active": True}


async def tasks(n: int, reps: int, op: Callable[[int], Awaitable[Any]]) -> tuple[float, int]:
    """µs per operation of n tasks doing reps operations each, and the errors."""
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        for _ in range(reps):
            try:
                await op(i)
            except Exception:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return (time.perf_counter() - started) / (n * reps) * 1e6, errors


async def main_async(url: str, args: argparse.Namespace) -> None:
    token = secrets.token_hex(3)
    raw = Redis.from_url(url)
    cache = CacheManager(CacheConfig(redis_url=url, namespace=f"pc-{token}"))
    await cache.start()
    try:
        names = [f"pc-{token}-raw:{i}" for i in range(100)]
        for i, name in enumerate(names):
            await raw.set(name, orjson.dumps(VALUE))
            await cache.set(f"k{i}", VALUE, 600)

        async def raw_get(i: int) -> Any:
            async with asyncio.timeout(0.5):
                return orjson.loads(await raw.get(names[i % 100]))

        async def l2_get(i: int) -> Any:
            return await cache.get(f"k{i % 100}", CacheTier.L2)

        async def l1miss_get(i: int) -> Any:
            return await cache.get(f"k{i % 100}")

        async def pipeline_100() -> tuple[float, int]:
            started = time.perf_counter()
            for _ in range(args.reps):
                async with raw.pipeline(transaction=False) as pipe:
                    for name in names:
                        _ = pipe.get(name)
                    for payload in await pipe.execute():
                        orjson.loads(payload)
            return (time.perf_counter() - started) / (100 * args.reps) * 1e6, 0

        async def l1miss_round() -> tuple[float, int]:
            total = 0.0
            errs = 0
            for _ in range(args.reps):
                cache.l1.clear()
                us, e = await tasks(100, 1, l1miss_get)
                total += us
                errs += e
            return total / args.reps, errs

        rows: dict[str, Callable[[], Awaitable[tuple[float, int]]]] = {
            "raw_pool_100": lambda: tasks(100, args.reps, raw_get),
            "raw_pipeline_100": pipeline_100,
            "l2_get_100": lambda: tasks(100, args.reps, l2_get),
            "l1miss_get_100": l1miss_round,
            "raw_pool_1000": lambda: tasks(1000, 1, raw_get),
            "l2_get_1000": lambda: tasks(1000, 1, l2_get),
        }
        samples: dict[str, list[float]] = {k: [] for k in rows}
        errors: dict[str, int] = dict.fromkeys(rows, 0)
        order = list(rows)
        for r in range(args.rounds):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                us, e = await rows[name]()
                samples[name].append(us)
                errors[name] += e
        base = statistics.median(samples["raw_pool_100"])
        print(f"{'row':<18} {'median µs/op':>12} {'min':>8} {'errors':>7}  vs raw_pool_100")
        for name in rows:
            med = statistics.median(samples[name])
            print(
                f"{name:<18} {med:>12.2f} {min(samples[name]):>8.2f} {errors[name]:>7}"
                f"  {med / base:.2f}x"
            )
        batcher = getattr(cache.l2, "_reads", None)
        if batcher is not None:
            print(f"pipelines sent {batcher.pipelines}, reads batched {batcher.batched}")

        # Stampede: 200 callers of one cold key, 50 ms loader.
        for attempt in range(args.stampedes):
            calls = 0

            async def loader() -> dict[str, Any]:
                nonlocal calls
                calls += 1
                await asyncio.sleep(0.05)
                return VALUE

            key = f"cold-{attempt}"
            started = time.perf_counter()
            results = await asyncio.gather(
                *(cache.get_or_set(key, loader, 60) for _ in range(200)), return_exceptions=True
            )
            wall = (time.perf_counter() - started) * 1000
            errs = sum(isinstance(r, BaseException) for r in results)
            print(
                f"stampede {attempt}: loader calls {calls}, wall {wall:.1f} ms "
                f"({wall / 50:.2f}x loader), errors {errs}"
            )
    finally:
        await cache.stop()
        await raw.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--stampedes", type=int, default=3)
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    if args.redis_url:
        asyncio.run(main_async(args.redis_url, args))
        return 0
    with RedisServer() as server:
        asyncio.run(main_async(server.url, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
