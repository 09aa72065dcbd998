"""A writing instance's own call against the raw pipelined pair it sends (issue 20).

Run from the repository root, in the project's virtualenv::

    python -m benchmarks.profiles.send_path           # private valkey-server

One process: a `CacheManager` (bus on: its own subscriber receives every message on the
channel and skips those of its origin) and a plain ``redis.asyncio`` client (its default pool, the
cache's ``operation_timeout`` as ``socket_timeout``). Rows, interleaved in a rotating
order round by round, median µs per call over the rounds, of wall time and of the
process's CPU time (``time.process_time``: what the client itself spends, less disturbed
by other processes on a loaded machine than the wall time):

- ``raw UNLINK+PUBLISH``: ``pipeline(transaction=False)`` with ``UNLINK k`` and
  ``PUBLISH channel <a BusMessage>``, the limit of ``cache.delete``;
- ``cache.delete``: ``await cache.delete(k)`` (L1 and L2, the bus message in the same
  round trip);
- ``raw SET+PUBLISH``: the same pipeline with ``SET k <payload> PX ttl``, the limit of
  ``cache.set``;
- ``cache.set``: ``await cache.set(k, value, ttl)``;
- ``raw PUBLISH``: one ``PUBLISH`` alone (the issue's other reference).

The message and payload are encoded once for the raw rows (the cache encodes its own per
call: that is part of its cost); the raw message carries the manager's origin, so both
sides' messages reach the same one subscriber and are skipped alike.
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

import structlog
from redis.asyncio import Redis

from coherent_cache import BusMessage, CacheConfig, CacheManager
from coherent_cache.serializer import CacheSerializer
from coherent_cache.testing import RedisServer

VALUE = {"id": 7, "name": "user-7", "active": True}


async def main_async(url: str, rounds: int, calls: int) -> None:
    """Measure the rows; print medians and the ratios to each limit."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    config = CacheConfig(redis_url=url, namespace="sendpath", enable_monitoring=False)
    raw = Redis.from_url(url, socket_timeout=config.operation_timeout)
    async with CacheManager(config) as cache:
        channel = config.channel
        message = BusMessage.delete(("k0",), origin=cache.origin).encode()
        serializer = CacheSerializer.from_config(config)
        payload = serializer.pack(serializer.dumps(VALUE, key="k0"), key="k0")

        async def raw_unlink(i: int) -> Any:
            async with raw.pipeline(transaction=False) as pipe:
                _ = pipe.unlink(f"sendpath:raw{i % 100}")
                _ = pipe.publish(channel, message)
                return await pipe.execute()

        async def raw_set(i: int) -> Any:
            async with raw.pipeline(transaction=False) as pipe:
                _ = pipe.set(f"sendpath:raw{i % 100}", payload, px=60_000)
                _ = pipe.publish(channel, message)
                return await pipe.execute()

        async def raw_publish(i: int) -> Any:
            return await raw.publish(channel, message)

        async def delete(i: int) -> Any:
            return await cache.delete(f"k{i % 100}")

        async def set_(i: int) -> Any:
            return await cache.set(f"k{i % 100}", VALUE, 60)

        rows: dict[str, Callable[[int], Awaitable[Any]]] = {
            "raw UNLINK+PUBLISH": raw_unlink,
            "cache.delete": delete,
            "raw SET+PUBLISH": raw_set,
            "cache.set": set_,
            "raw PUBLISH": raw_publish,
        }
        samples: dict[str, list[float]] = {name: [] for name in rows}
        cpu: dict[str, list[float]] = {name: [] for name in rows}
        for op in rows.values():  # warm-up
            for i in range(200):
                await op(i)
        order = list(rows)
        for r in range(rounds):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                op = rows[name]
                started, cpu_started = time.perf_counter(), time.process_time()
                for i in range(calls):
                    await op(i)
                samples[name].append((time.perf_counter() - started) / calls * 1e6)
                cpu[name].append((time.process_time() - cpu_started) / calls * 1e6)
        med = {name: statistics.median(values) for name, values in samples.items()}
        cmed = {name: statistics.median(values) for name, values in cpu.items()}
        print(f"{'row':<20} {'wall µs':>8} {'ratio':>6} {'cpu µs':>8} {'ratio':>6}")
        limits = {"cache.delete": "raw UNLINK+PUBLISH", "cache.set": "raw SET+PUBLISH"}
        for name in samples:
            base = limits.get(name)
            wall = f"{med[name] / med[base]:.2f}x" if base else ""
            own = f"{cmed[name] / cmed[base]:.2f}x" if base else ""
            print(f"{name:<20} {med[name]:>8.1f} {wall:>6} {cmed[name]:>8.1f} {own:>6}")
    await raw.aclose()


def main() -> int:
    """Parse the options; run on a private server unless ``--redis-url`` is given."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300, help="calls per row per round")
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    if args.redis_url:
        asyncio.run(main_async(args.redis_url, args.rounds, args.calls))
        return 0
    with RedisServer() as server:
        asyncio.run(main_async(server.url, args.rounds, args.calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
