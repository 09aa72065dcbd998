"""Where a writing instance spends its time before its invalidation reaches the wire.

Run from the repository root, in the project's virtualenv::

    python -m benchmarks.profiles.sender_waterfall    # private valkey-server, 2000 calls each

One process, one `CacheManager` (bus on) and one plain ``redis.asyncio`` client. Each
layer of the call path is wrapped to record when it is first entered; the table shows the
median offset of each entry from the start of the call, for ``cache.delete``,
``cache.set`` and a raw ``PUBLISH``. A diagnostic for docs/benchmarks.md: the wrappers
add well under a microsecond each, and nothing else runs in the process.
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any, Final

import anyio
import structlog
from redis.asyncio import Redis
from redis.asyncio import client as redis_client
from redis.asyncio import connection as redis_connection

from coherent_cache import CacheConfig, CacheManager
from coherent_cache import bus as cc_bus
from coherent_cache import l2 as cc_l2
from coherent_cache import multitier as cc_multitier
from coherent_cache.testing import RedisServer

marks: dict[str, float] = {}

LAYERS: Final = (
    (cc_multitier.MultiTierCache, "delete", "MultiTierCache.delete"),
    (cc_multitier.MultiTierCache, "set", "MultiTierCache.set"),
    (cc_bus.BusMessage, "encode", "BusMessage.encode"),
    (cc_l2.RedisCache, "delete", "RedisCache.delete"),
    (cc_l2.RedisCache, "set_payload", "RedisCache.set_payload"),
    (cc_l2.RedisCache, "_call", "RedisCache._call (breaker, fail_after)"),
    (redis_client.Pipeline, "execute", "Pipeline.execute"),
    (redis_connection.ConnectionPool, "get_connection", "pool.get_connection"),
    (redis_connection.BlockingConnectionPool, "get_connection", "pool.get_connection"),
    (redis_client.Pipeline, "_execute_pipeline", "Pipeline._execute_pipeline"),
    (redis_connection.AbstractConnection, "send_packed_command", "send_packed_command"),
    (
        redis_connection.AbstractConnection,
        "_send_packed_command",
        "_send_packed_command (socket write)",
    ),
    (redis_connection.AbstractConnection, "read_response", "read_response (first)"),
)


def install() -> None:
    """Wrap every layer in `LAYERS` to record its first entry per call in `marks`."""
    for owner, attr, label in LAYERS:
        original = getattr(owner, attr)
        if getattr(original, "_waterfall_probe", False):
            continue  # inherited and already wrapped
        if attr in {"encode"}:

            @functools.wraps(original)
            def sync_probe(*args: Any, _f: Any = original, _l: str = label, **kw: Any) -> Any:
                marks.setdefault(_l, time.monotonic())
                return _f(*args, **kw)

            sync_probe._waterfall_probe = True  # type: ignore[attr-defined]
            setattr(owner, attr, sync_probe)
        else:

            @functools.wraps(original)
            async def async_probe(
                *args: Any, _f: Any = original, _l: str = label, **kw: Any
            ) -> Any:
                marks.setdefault(_l, time.monotonic())
                return await _f(*args, **kw)

            async_probe._waterfall_probe = True  # type: ignore[attr-defined]
            setattr(owner, attr, async_probe)


async def waterfall(name: str, call: Callable[[int], Awaitable[object]], n: int) -> None:
    """Run ``call`` ``n`` times after a warm-up; print median entry offsets per layer."""
    offsets: dict[str, list[float]] = {}
    for i in range(-200, n):
        with anyio.fail_after(1):
            marks.clear()
            started = time.monotonic()
            await call(i)
            returned = time.monotonic()
        if i < 0:
            continue
        for label, at in marks.items():
            offsets.setdefault(label, []).append(at - started)
        offsets.setdefault("returned", []).append(returned - started)
    print(f"\n{name} ({n} calls): median microseconds from the call's start")
    for label, values in sorted(offsets.items(), key=lambda kv: statistics.median(kv[1])):
        print(f"  {statistics.median(values) * 1e6:8.1f}  {label}")


async def main(url: str, n: int) -> None:
    """Measure the three call paths."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    install()
    config = CacheConfig(redis_url=url, namespace="waterfall")
    async with CacheManager(config) as cache, Redis.from_url(url) as raw:
        with anyio.fail_after(5):
            await raw.ping()
        message = cc_bus.BusMessage.delete(("k",), origin="raw").encode()

        async def delete(i: int) -> object:
            return await cache.delete(f"k{i}")

        async def set_(i: int) -> object:
            return await cache.set(f"k{i}", {"trial": i, "v": 2}, 60)

        async def publish(i: int) -> object:
            return await raw.publish("waterfall:raw", message)

        await waterfall("cache.delete", delete, n)
        await waterfall("cache.set", set_, n)
        await waterfall("raw PUBLISH (Redis.from_url)", publish, n)
        await cache.clear()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--redis-url", help="use this server instead of a private one")
    args = parser.parse_args()
    with ExitStack() as stack:
        url = args.redis_url or stack.enter_context(RedisServer()).url
        anyio.run(main, url, args.calls)
