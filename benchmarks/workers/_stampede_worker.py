"""One process of the stampede rows (driven by `benchmarks.suite.stampede` over JSON lines).

``python -m benchmarks.workers._stampede_worker '<json args>'``: sets up every system on the
server given (``{"url": ..., "token": ...}``), prints ``{"ready": true}``, then answers
commands read from stdin, one JSON object a line:

- ``{"op": "run", "system": name, "arg": x, "callers": c, "at": t}``: at ``time.monotonic()
  == t`` (one clock for every process on Linux) start ``c`` tasks calling the system's
  cached function with the cold argument ``x``; reply with the loader calls made in this
  process, the errors (exceptions and wrong values) and the monotonic time the last
  caller finished;
- ``{"op": "exit"}``: close everything and exit (EOF on stdin too).

Every system caches the same function, ``async def load(x)``, which sleeps ``LOADER_S``
(50 ms) and returns ``{"id": x, ...}``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Final
from urllib.parse import urlparse

import orjson
import structlog
from redis.asyncio import Redis

from coherent_cache import CacheConfig, CacheManager

LOADER_S: Final = 0.05
TTL: Final = 600
Fn = Callable[[int], Awaitable[Any]]


class Counter:
    """Loader calls of one system in this process."""

    def __init__(self) -> None:
        self.n = 0


def loader(counter: Counter) -> Callable[[int], Awaitable[dict[str, Any]]]:
    """A fresh copy of the slow function (each system decorates its own)."""

    async def load(x: int) -> dict[str, Any]:
        counter.n += 1
        await asyncio.sleep(LOADER_S)
        return expected(x)

    return load


def expected(x: int) -> dict[str, Any]:
    """What the function returns for ``x``."""
    return {"id": x, "name": f"user-{x}", "active": True}


def raw_single_flight(client: Redis, token: str, counter: Counter) -> Fn:
    """The raw limit: an in-process future per key, and across processes SET NX PX as a
    lock (the winner loads and SETs, the others poll GET every 2 ms, at most 5 s)."""
    load = loader(counter)
    flights: dict[int, asyncio.Future[Any]] = {}

    async def across(x: int) -> Any:
        key, lock = f"raw-{token}:st:{x}", f"raw-{token}:lock:{x}"
        for _ in range(2500):
            if await client.set(lock, b"1", nx=True, px=5000):
                value = await load(x)
                await client.set(key, orjson.dumps(value), ex=TTL)
                await client.delete(lock)
                return value
            await asyncio.sleep(0.002)
            found = await client.get(key)
            if found is not None:
                return orjson.loads(found)
        raise TimeoutError("raw: no value within 5 s")

    async def call(x: int) -> Any:
        flight = flights.get(x)
        if flight is not None:
            return await asyncio.shield(flight)
        flight = flights[x] = asyncio.get_running_loop().create_future()
        try:
            found = await client.get(f"raw-{token}:st:{x}")
            value = orjson.loads(found) if found is not None else await across(x)
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved: the waiters (if any) re-raise it
            raise
        finally:
            del flights[x]
        flight.set_result(value)
        return value

    return call


async def setup(stack: AsyncExitStack, url: str, token: str) -> dict[str, tuple[Fn, Counter]]:
    """Every system's cached function, keys shared by all processes of this run."""
    systems: dict[str, tuple[Fn, Counter]] = {}
    client = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    stack.push_async_callback(client.aclose)
    counter = Counter()
    systems["raw/single-flight + SET NX lock"] = (
        raw_single_flight(client, token, counter),
        counter,
    )

    manager = CacheManager(CacheConfig(redis_url=url, namespace=f"st-{token}"))
    await asyncio.wait_for(manager.start(), 30)
    stack.push_async_callback(manager.stop)
    for variant, lock in (("@cache.cached, defaults", None), ("@cache.cached(lock=True)", True)):
        counter = Counter()
        f = manager.cached(ttl=TTL, key_prefix=f"f-{lock}", lock=lock)(loader(counter))
        systems[f"coherent_cache/{variant}"] = (f, counter)

    try:
        from cashews import Cache
    except ImportError:
        pass
    else:
        cache = Cache(name=f"st-{token}")
        cache.setup(url)
        await asyncio.wait_for(cache.init(), 30)
        stack.push_async_callback(cache.close)
        for variant, options in (
            ("@cache, defaults (protected=True)", {}),
            ("@cache(lock=True)", {"lock": True}),
        ):
            counter = Counter()
            g = cache(ttl=TTL, prefix=f"cashews-{token}-{len(systems)}", **options)(loader(counter))
            systems[f"cashews/{variant}"] = (g, counter)

    try:
        from aiocache import Cache as AioCache
        from aiocache import cached, cached_stampede
    except ImportError:
        pass
    else:
        parsed = urlparse(url)
        options = {
            "cache": AioCache.REDIS,
            "endpoint": parsed.hostname or "127.0.0.1",
            "port": parsed.port or 6379,
        }
        for variant, decorator in (
            ("@cached, defaults", cached),
            ("@cached_stampede(lease=2)", cached_stampede),
        ):
            counter = Counter()
            h = decorator(ttl=TTL, namespace=f"aiocache-{token}-{len(systems)}", **options)(
                loader(counter)
            )
            stack.push_async_callback(h.cache.close)
            systems[f"aiocache/{variant}"] = (h, counter)
    return systems


async def run(fn: Fn, counter: Counter, arg: int, callers: int, at: float) -> dict[str, Any]:
    """Start ``callers`` tasks on ``fn(arg)`` at monotonic ``at``; calls, errors, end."""
    before = counter.n
    await asyncio.sleep(max(0.0, at - time.monotonic() - 0.002))
    while time.monotonic() < at:
        pass
    want = expected(arg)
    results = await asyncio.wait_for(
        asyncio.gather(*(fn(arg) for _ in range(callers)), return_exceptions=True), 30
    )
    end = time.monotonic()
    failures = [r for r in results if r != want]
    return {
        "calls": counter.n - before,
        "errors": len(failures),
        "end": end,
        "first_error": repr(failures[0])[:300] if failures else None,
    }


async def main(args: dict[str, Any]) -> None:
    """Set up, say ready, serve commands until exit or EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with AsyncExitStack() as stack:
        systems = await setup(stack, args["url"], args["token"])
        print(
            orjson.dumps({"ready": True, "systems": list(systems)}).decode(),
            file=PROTOCOL,
            flush=True,
        )
        while line := await reader.readline():
            cmd = orjson.loads(line)
            if cmd["op"] == "exit":
                break
            fn, counter = systems[cmd["system"]]
            try:
                reply = await run(fn, counter, cmd["arg"], cmd["callers"], cmd["at"])
            except Exception as exc:
                reply = {"calls": None, "errors": cmd["callers"], "end": time.monotonic()}
                reply["first_error"] = repr(exc)[:300]
            print(orjson.dumps(reply).decode(), file=PROTOCOL, flush=True)


# The protocol owns the real stdout; anything else printed (a library's log line) goes to
# stderr, so it cannot corrupt a reply.
PROTOCOL = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

if __name__ == "__main__":
    warnings.simplefilter("ignore", DeprecationWarning)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.disable(logging.CRITICAL)  # aiocache logs every failed call with its traceback
    asyncio.run(main(orjson.loads(sys.argv[1])))
