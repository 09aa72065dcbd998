"""The ``coherent-cache`` command: ``coherent-cache demo`` shows the cache at work."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator, Sequence

import anyio

from .config import CacheConfig, CacheTier
from .manager import CacheManager, create_cache_manager
from .testing import RedisServer, ServerNotFoundError

__all__ = ["main"]


def _say(text: str = "") -> None:
    print(text, flush=True)


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs"


@contextlib.contextmanager
def _demo_server(url: str | None) -> Iterator[tuple[str | None, RedisServer | None]]:
    """Yield the Redis URL to use and the private server started for it (if any)."""
    if url is not None:
        yield url, None
        return
    try:
        server = RedisServer().start()
    except ServerNotFoundError as exc:
        _say(f"! {exc}")
        _say("! continuing with the in-memory L1 only (redis_url=None)")
        yield None, None
        return
    try:
        yield server.url, server
    finally:
        server.close()


async def _timed_get(cache: CacheManager, key: str) -> tuple[object, float]:
    start = time.perf_counter()
    value = await cache.get(key)
    return value, time.perf_counter() - start


async def _demo(url: str | None, server: RedisServer | None) -> None:
    config = CacheConfig(redis_url=url, namespace="demo", operation_timeout=0.25)
    _say(f"1. Two app instances, A and B, share the L2 at {config.redacted_url() or '(none)'}")
    async with create_cache_manager(config) as a, create_cache_manager(config) as b:
        await a.clear()
        profile = {"id": 42, "name": "Ada", "plan": "pro"}
        ok = await a.set("user_profile:42", profile, ttl=300)
        _say(f"2. A: set user_profile:42 -> L1 of A and L2 (written to L2: {ok})")

        value, took = await _timed_get(b, "user_profile:42")
        source = "L2, then copied into B's L1" if url else "nowhere: B has no L2"
        _say(f"3. B: get user_profile:42 = {value} in {_us(took)} (L1 miss, read from {source})")
        value, took = await _timed_get(b, "user_profile:42")
        _say(f"4. B: get again = {value} in {_us(took)} (L1 hit, no network)")

        n = 2000
        start = time.perf_counter()
        for _ in range(n):
            await b.get("user_profile:42")
        _say(f"   {n} more L1 hits on B: {_us((time.perf_counter() - start) / n)} each on average")

        for i in range(5):
            await a.set(f"user_profile:{100 + i}", {"id": 100 + i}, ttl=300)
        removed = await a.clear_pattern("user_profile:*")
        _say(f"5. A: clear_pattern('user_profile:*') removed {removed} L2 keys (SCAN + UNLINK)")
        in_l2 = await b.get("user_profile:42", tier=CacheTier.L2)
        _say(f"   B: L2 now holds user_profile:42 = {in_l2}")
        _say(
            "   (B's own L1 copy stays until its TTL in this release; the pub/sub"
            " invalidation bus that evicts it on every instance is the next milestone)"
        )

        await a.set("config:site", {"theme": "dark"}, ttl=300)
        if server is not None:
            server.kill()
            _say("6. Redis killed (SIGKILL). The cache keeps serving:")
            start = time.perf_counter()
            value = await a.get("config:site")
            _say(f"   A: get config:site = {value} in {_us(time.perf_counter() - start)} (L1)")
            ok = await a.set("config:new", 1, ttl=60)
            _say(
                f"   A: set config:new -> written to L2: {ok}; A reads {await a.get('config:new')}"
            )
            start = time.perf_counter()
            value = await a.get("never-cached")
            _say(f"   A: get never-cached = {value} in {_us(time.perf_counter() - start)}")
        stats = await a.get_stats()
        l1, l2 = stats["l1_cache"], stats["l2_cache"]
        _say("7. Stats of A:")
        _say(f"   l1_cache: hits={l1['hits']} misses={l1['misses']} size={l1['size']}")
        _say(
            f"   l2_cache: connected={l2['connected']} errors={l2['errors']} "
            f"breaker={l2['breaker']} short_circuited={l2['short_circuited']}"
        )
        _say(
            f"   totals: hits={stats['total_hits']} misses={stats['total_misses']} "
            f"sets={stats['total_sets']}"
        )


def _run_demo(args: argparse.Namespace) -> int:
    with _demo_server(args.redis_url) as (url, server):
        if server is not None:
            _say(f"Started a private {server.binary.name} on {server.url} (pid {server.pid})")
        anyio.run(_demo, url, server)
    _say("Done: every process started by the demo has been stopped.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coherent-cache`` command."""
    parser = argparse.ArgumentParser(prog="coherent-cache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a short demonstration on a private Valkey")
    demo.add_argument(
        "--redis-url",
        help="use this server instead of starting a private one (keys go to namespace 'demo')",
    )
    demo.set_defaults(handler=_run_demo)
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
