"""Stampede across processes: 3 processes x 200 callers of one cold key, 50 ms loader, lock=True.

Run from the repository root, in the project's virtualenv::

    python -m benchmarks.profiles.profile_stampede     # private valkey-server, 5 rounds

Each process runs a started `CacheManager`; on "go" (one line on its stdin, sent to all at
once) it starts 200 ``get_or_set(key, loader, lock=True)`` callers and reports its wall
time until every caller returned, and its errors. The loader counts its calls with an
``INCR`` in Redis, so the total across processes is exact. Prints, per round, the loader
calls and the slowest process's wall time against the loader's 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import time
from typing import Any

import structlog
from redis.asyncio import Redis

from coherent_cache import CacheConfig, CacheManager
from coherent_cache.testing import RedisServer

LOADER_S = 0.05
CALLERS = 200


async def child(url: str, namespace: str) -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    raw = Redis.from_url(url)
    cache = CacheManager(CacheConfig(redis_url=url, namespace=namespace))
    await cache.start()
    loop = asyncio.get_running_loop()
    try:
        print("ready", flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                return
            key, counter = line.split()

            async def loader(counter: str = counter) -> dict[str, Any]:
                await raw.incr(counter)
                await asyncio.sleep(LOADER_S)
                return {"v": 1}

            started = time.monotonic()
            results = await asyncio.gather(
                *(cache.get_or_set(key, loader, 60, lock=True) for _ in range(CALLERS)),
                return_exceptions=True,
            )
            wall = time.monotonic() - started
            errors = sum(isinstance(r, BaseException) for r in results)
            print(json.dumps({"wall_ms": wall * 1000, "errors": errors}), flush=True)
    finally:
        await cache.stop()
        await raw.aclose()


def drive(url: str, rounds: int) -> None:
    namespace = f"ps-{secrets.token_hex(3)}"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", url, namespace],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        raw = None
        for r in range(rounds):
            key, counter = f"cold{r}", f"{namespace}-counter{r}"
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(f"{key} {counter}\n")
                p.stdin.flush()
            reports = []
            for p in procs:
                assert p.stdout is not None
                reports.append(json.loads(p.stdout.readline()))
            raw = raw or __import__("redis").Redis.from_url(url)
            calls = int(raw.get(counter) or 0)
            walls = [rep["wall_ms"] for rep in reports]
            errors = sum(rep["errors"] for rep in reports)
            print(
                f"round {r}: loader calls {calls}, wall per process "
                + ", ".join(f"{w:.1f}" for w in walls)
                + f" ms, slowest {max(walls) / (LOADER_S * 1000):.2f}x loader, errors {errors}"
            )
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis-url")
    parser.add_argument("--child", nargs=2, metavar=("URL", "NAMESPACE"))
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(*args.child))
        return 0
    if args.redis_url:
        drive(args.redis_url, args.rounds)
        return 0
    with RedisServer() as server:
        drive(server.url, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
