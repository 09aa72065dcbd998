"""Concurrent L2 gets against the pipeline limit, wall and CPU time (issue 20).

Run from the repository root, in the project's virtualenv::

    python -m benchmarks.profiles.concurrent_limits     # private valkey-server

Rows, interleaved in a rotating order round by round, median µs per get over the rounds,
of wall time and of the process's CPU time (``time.process_time``, less disturbed than the
wall time by other processes on a loaded machine); decoding is included on both sides
(``orjson.loads`` of each raw reply, the cache's own payload decoding):

- ``pipeline_N``: one ``pipeline(transaction=False)`` of N ``GET`` + ``orjson.loads``
  (redis.asyncio, its default pool, ``socket_timeout`` as the cache sets it): the limit;
- ``tasks_floor_N``: N tasks in one ``asyncio.gather``, each awaiting a future that one
  such pipeline resolves: what N tasks cost on top of the pipeline, before any cache code;
- ``l2_conc_N``: N tasks in one ``asyncio.gather``, each ``cache.get(k, CacheTier.L2)``,
  the suite's ``l2_conc_100`` / ``l2_conc_1000`` rows (errors: gets that did not return
  the value, e.g. an ``operation_timeout`` reached on a loaded machine, warm-up included).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis

from coherent_cache import CacheConfig, CacheManager, CacheTier
from coherent_cache.testing import RedisServer

VALUE = {"id": 7, "name": "user-7", "active": True}


async def main_async(url: str, rounds: int, widths: list[int]) -> None:
    """Measure the rows; print medians and the ratios to the pipeline of the same width."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    config = CacheConfig(redis_url=url, namespace="cl", enable_monitoring=False)
    raw = Redis.from_url(url, socket_timeout=config.operation_timeout)
    async with CacheManager(config) as cache:
        top = max(widths)
        keys = [f"k{i}" for i in range(top)]
        names = [f"cl:raw-{key}" for key in keys]
        async with raw.pipeline(transaction=False) as pipe:
            for name in names:
                _ = pipe.set(name, orjson.dumps(VALUE), px=600_000)
            await pipe.execute()
        for key in keys:
            await cache.set(key, VALUE, 600)
        rows: dict[str, tuple[int, Callable[[], Awaitable[Any]]]] = {}
        errors = {f"l2_conc_{width}": 0 for width in widths}
        for width in widths:
            wave, wave_keys = names[:width], keys[:width]

            async def pipeline(wave: list[str] = wave) -> Any:
                async with raw.pipeline(transaction=False) as pipe:
                    for name in wave:
                        _ = pipe.get(name)
                    return [orjson.loads(r) for r in await pipe.execute()]

            async def floor(wave: list[str] = wave) -> Any:
                loop = asyncio.get_running_loop()
                futures = [loop.create_future() for _ in wave]

                async def one(future: asyncio.Future[Any]) -> Any:
                    return orjson.loads(await future)

                gathered = asyncio.gather(*[one(f) for f in futures])
                async with raw.pipeline(transaction=False) as pipe:
                    for name in wave:
                        _ = pipe.get(name)
                    replies = await pipe.execute()
                for future, reply in zip(futures, replies, strict=True):
                    future.set_result(reply)
                return await gathered

            async def l2_conc(wave_keys: list[str] = wave_keys, width: int = width) -> Any:
                found = await asyncio.gather(*[cache.get(k, CacheTier.L2) for k in wave_keys])
                errors[f"l2_conc_{width}"] += sum(value != VALUE for value in found)
                return found

            rows[f"pipeline_{width}"] = (width, pipeline)
            rows[f"tasks_floor_{width}"] = (width, floor)
            rows[f"l2_conc_{width}"] = (width, l2_conc)
        wall: dict[str, list[float]] = {name: [] for name in rows}
        cpu: dict[str, list[float]] = {name: [] for name in rows}
        for _width, op in rows.values():  # warm-up
            for _ in range(5):
                await op()
        order = list(rows)
        for r in range(rounds):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                width, op = rows[name]
                waves = max(1, 3000 // width)
                started, cpu_started = time.perf_counter(), time.process_time()
                for _ in range(waves):
                    await op()
                wall[name].append((time.perf_counter() - started) / (waves * width) * 1e6)
                cpu[name].append((time.process_time() - cpu_started) / (waves * width) * 1e6)
        print(f"{'row':<16} {'wall µs':>8} {'ratio':>6} {'cpu µs':>8} {'ratio':>6}  errors")
        for name, (width, _op) in rows.items():
            base = f"pipeline_{width}"
            w, c = statistics.median(wall[name]), statistics.median(cpu[name])
            wr = w / statistics.median(wall[base])
            cr = c / statistics.median(cpu[base])
            print(f"{name:<16} {w:>8.2f} {wr:>5.2f}x {c:>8.2f} {cr:>5.2f}x  {errors.get(name, '')}")
    await raw.aclose()


def main() -> int:
    """Parse the options; run on a private server unless ``--redis-url`` is given."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--widths", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    if args.redis_url:
        asyncio.run(main_async(args.redis_url, args.rounds, args.widths))
        return 0
    with RedisServer() as server:
        asyncio.run(main_async(server.url, args.rounds, args.widths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
