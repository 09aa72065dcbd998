"""One process of the "hot key under expiry" row (driven by `benchmarks.suite.hotkey`).

``python -m benchmarks.workers._hotkey_worker '<json args>'``: sets up every system on the
server given (``{"url": ..., "token": ...}``), prints ``{"ready": true, "systems": [...]}``,
then answers commands read from stdin, one JSON object a line:

- ``{"op": "run", "system": name, "tasks": n, "at": t, "warmup": w, "duration": d}``: at
  ``time.monotonic() == t`` start ``n`` tasks that read the system's one hot key in a loop
  (a read, then ``asyncio.sleep(0.001)``) until ``t + d``; reply with a histogram of the
  read latencies after ``t + w`` (``{µs: count}``), the slowest, the loader calls made in
  this process and the errors (exceptions and wrong values);
- ``{"op": "exit"}``: close everything and exit (EOF on stdin too).

Every system caches the same function, ``async def load()``, which sleeps ``LOADER_S``
(50 ms), with a 1 s TTL (``TTL_S``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import warnings
from collections import Counter as Histogram
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Final
from urllib.parse import urlparse

import orjson
import structlog

from coherent_cache import CacheConfig, CacheManager

LOADER_S: Final = 0.05
TTL_S: Final = 1.0
REFRESH_AHEAD: Final = 0.8
VALUE: Final = {"id": 1, "name": "hot", "active": True}
Fn = Callable[[], Awaitable[Any]]


class Calls:
    """Loader calls of one system in this process."""

    def __init__(self) -> None:
        self.n = 0


def loader(calls: Calls) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A fresh copy of the slow function (each system decorates its own)."""

    async def load() -> dict[str, Any]:
        calls.n += 1
        await asyncio.sleep(LOADER_S)
        return dict(VALUE)

    return load


async def setup(stack: AsyncExitStack, url: str, token: str) -> dict[str, tuple[Fn, Calls]]:
    """Every system's cached function (keys shared by the processes of this run)."""
    systems: dict[str, tuple[Fn, Calls]] = {}
    manager = CacheManager(CacheConfig(redis_url=url, namespace=f"hk-{token}"))
    await asyncio.wait_for(manager.start(), 30)
    stack.push_async_callback(manager.stop)
    calls = Calls()
    baseline = manager.cached(ttl=3600, key_prefix="never-expires")(loader(calls))
    systems["raw/coherent_cache L1 hit, key never expires"] = (baseline, calls)
    for variant, lock, refresh in (
        (f"@cache.cached(refresh_ahead={REFRESH_AHEAD}, lock=True)", True, REFRESH_AHEAD),
        ("@cache.cached, no refresh_ahead", False, None),
    ):
        calls = Calls()
        f = manager.cached(
            ttl=TTL_S, key_prefix=f"hot-{len(systems)}", lock=lock, refresh_ahead=refresh
        )(loader(calls))
        systems[f"coherent_cache/{variant}"] = (f, calls)

    try:
        from cashews import Cache
    except ImportError:
        pass
    else:
        cache = Cache(name=f"hk-{token}")
        cache.setup(url)
        await asyncio.wait_for(cache.init(), 30)
        stack.push_async_callback(cache.close)
        calls = Calls()
        g = cache.early(ttl=TTL_S, early_ttl=TTL_S * REFRESH_AHEAD, prefix=f"cashews-{token}")(
            loader(calls)
        )
        systems[f"cashews/@cache.early(early_ttl={TTL_S * REFRESH_AHEAD:g}s)"] = (g, calls)

    try:
        from aiocache import Cache as AioCache  # type: ignore[import-untyped]
        from aiocache import cached
    except ImportError:
        pass
    else:
        parsed = urlparse(url)
        calls = Calls()
        h = cached(
            ttl=TTL_S,
            namespace=f"aiocache-{token}",
            cache=AioCache.REDIS,
            endpoint=parsed.hostname or "127.0.0.1",
            port=parsed.port or 6379,
        )(loader(calls))
        stack.push_async_callback(h.cache.close)
        systems["aiocache/@cached (no refresh-ahead)"] = (h, calls)
    return systems


async def run(fn: Fn, calls: Calls, cmd: dict[str, Any]) -> dict[str, Any]:
    """``tasks`` readers of ``fn()`` from monotonic ``at`` for ``duration`` s."""
    at, before = float(cmd["at"]), calls.n
    measure_from, end = at + float(cmd["warmup"]), at + float(cmd["duration"])
    histogram: Histogram[int] = Histogram()
    slowest = [0.0]
    errors: list[str] = []
    await asyncio.sleep(max(0.0, at - time.monotonic()))

    async def reader() -> None:
        while (started := time.monotonic()) < end:
            try:
                value = await fn()
            except Exception as exc:
                errors.append(repr(exc)[:300])
                value = VALUE
            took = time.monotonic() - started
            if value != VALUE:
                errors.append(f"wrong value {value!r}"[:300])
            if started >= measure_from:
                histogram[round(took * 1e6)] += 1
                slowest[0] = max(slowest[0], took)
            await asyncio.sleep(0.001)

    await asyncio.wait_for(
        asyncio.gather(*(reader() for _ in range(int(cmd["tasks"])))),
        float(cmd["duration"]) + 30,
    )
    return {
        "histogram": {str(us): n for us, n in histogram.items()},
        "slowest_us": slowest[0] * 1e6,
        "calls": calls.n - before,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
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
            fn, calls = systems[cmd["system"]]
            try:
                reply = await run(fn, calls, cmd)
            except Exception as exc:
                reply = {"histogram": {}, "slowest_us": None, "calls": None, "errors": 1}
                reply["first_error"] = repr(exc)[:300]
            print(orjson.dumps(reply).decode(), file=PROTOCOL, flush=True)


# The protocol owns the real stdout; anything else printed goes to stderr.
PROTOCOL = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

if __name__ == "__main__":
    warnings.simplefilter("ignore", DeprecationWarning)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.disable(logging.CRITICAL)
    asyncio.run(main(orjson.loads(sys.argv[1])))
