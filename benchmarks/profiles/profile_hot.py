"""Micro benchmark of the hot paths, for profiling optimisations (not the full suite).

Run from the repository root, in the project's virtualenv::

    python -m benchmarks.profiles.profile_hot                 # every case, private valkey-server
    python -m benchmarks.profiles.profile_hot --only l1       # cases whose name contains "l1"
    python -m benchmarks.profiles.profile_hot --profile dec_hit_l1only   # cProfile one case

Cases run round by round (every case once per round, in rotating order) so that slow
phases of a shared machine hit them alike; each prints the median µs per call over the
rounds, its min and max, and the ratio to its baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import cachetools
import orjson
from redis.asyncio import Redis

from coherent_cache import CacheConfig, CacheManager, CacheTier
from coherent_cache.testing import RedisServer

Call = Callable[[], Awaitable[Any]]
VALUE = {"id": 7, "name": "user-7", "active": True}


async def build(url: str) -> tuple[dict[str, tuple[Call, str | None]], list[Any]]:
    """Cases: name -> (zero-argument coroutine function, name of its baseline)."""
    token = secrets.token_hex(3)
    closers: list[Any] = []
    cases: dict[str, tuple[Call, str | None]] = {}

    memo: dict[str, Any] = {"k": VALUE}

    async def dict_get() -> Any:
        return memo.get("k")

    ttl_cache: cachetools.TTLCache[str, Any] = cachetools.TTLCache(1000, 300)
    ttl_cache["k"] = VALUE

    async def ttl_get() -> Any:
        return ttl_cache.get("k")

    cases["raw_dict"] = (dict_get, None)
    cases["raw_ttlcache"] = (ttl_get, None)

    l1only = CacheManager(CacheConfig(redis_url=None, namespace=f"ph-{token}-a"))
    multi = CacheManager(CacheConfig(redis_url=url, namespace=f"ph-{token}-b"))
    for m in (l1only, multi):
        await m.start()
        closers.append(m)
    await l1only.set("k", VALUE, 600)
    await multi.set("k", VALUE, 600)

    get_a = l1only.get
    get_b = multi.get

    async def l1_get_l1only() -> Any:
        return await get_a("k")

    async def l1_get_multi() -> Any:
        return await get_b("k")

    cases["l1_get_l1only"] = (l1_get_l1only, "raw_ttlcache")
    cases["l1_get_multi_bus"] = (l1_get_multi, "raw_ttlcache")

    calls = [0]

    async def user(x: int) -> dict[str, Any]:
        calls[0] += 1
        return {"id": x, "name": f"user-{x}", "active": True}

    fa = l1only.cached(ttl=600, key_prefix="user")(user)
    fb = multi.cached(ttl=600, key_prefix="user")(user)
    await fa(7)
    await fb(7)

    async def dec_hit_l1only() -> Any:
        return await fa(7)

    async def dec_hit_multi() -> Any:
        return await fb(7)

    cases["dec_hit_l1only"] = (dec_hit_l1only, "raw_dict")
    cases["dec_hit_multi"] = (dec_hit_multi, "raw_dict")

    # L2 reads, L1 bypassed, against raw redis.asyncio GET + orjson.loads under a timeout.
    raw = Redis.from_url(url, socket_timeout=0.5)
    closers.append(raw)
    await raw.set(f"ph-{token}-raw", orjson.dumps(VALUE))
    raw_name = f"ph-{token}-raw"

    async def raw_l2_get() -> Any:
        async with asyncio.timeout(0.5):
            return orjson.loads(await raw.get(raw_name))

    async def l2_get() -> Any:
        return await get_b("k", CacheTier.L2)

    cases["raw_redis_get"] = (raw_l2_get, None)
    cases["l2_get_seq"] = (l2_get, "raw_redis_get")
    return cases, closers


async def run_case(fn: Call, n: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(n):
        await fn()
    return (time.perf_counter_ns() - started) / n / 1000


async def main_async(args: argparse.Namespace, url: str) -> None:
    cases, closers = await build(url)
    try:
        names = [n for n in cases if args.only is None or any(o in n for o in args.only)]
        for name in list(names):
            base = cases[name][1]
            if base is not None and base not in names:
                names.append(base)
        if args.profile:
            fn = cases[args.profile][0]
            n = 20_000 if "l2" in args.profile or "redis" in args.profile else 300_000
            prof = cProfile.Profile()
            prof.enable()
            await run_case(fn, n)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return
        counts: dict[str, int] = {}
        for name in names:  # calibrate to ~args.batch_ms per batch
            fn = cases[name][0]
            await run_case(fn, 200)
            per = await run_case(fn, 1000)
            counts[name] = max(100, int(args.batch_ms * 1000 / max(per, 0.01)))
        samples: dict[str, list[float]] = {n: [] for n in names}
        gc.collect()
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                samples[name].append(await run_case(cases[name][0], counts[name]))
        print(f"{'case':<20} {'median µs':>10} {'min':>8} {'max':>8}  ratio to baseline")
        for name in names:
            med = statistics.median(samples[name])
            base = cases[name][1]
            rat = ""
            if base is not None:
                rat = f"{med / statistics.median(samples[base]):.2f}x {base}"
            print(
                f"{name:<20} {med:>10.3f} {min(samples[name]):>8.3f} "
                f"{max(samples[name]):>8.3f}  {rat}"
            )
    finally:
        for c in closers:
            await c.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--profile")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch-ms", type=float, default=40)
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    if args.redis_url:
        asyncio.run(main_async(args, args.redis_url))
        return 0
    with RedisServer() as server:
        asyncio.run(main_async(args, server.url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
