"""A server at its maxmemory: with an eviction policy, L2 evictions are plain misses; with
noeviction, writes fail with OOM and are dropped and counted, never raised. Two instances in
separate processes run a mixed load while the memory fills up."""

from __future__ import annotations

from pathlib import Path

import anyio
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from .conftest import assert_sound, run_loads, server, workers

FILLER = b"x" * 10_000


async def fill(admin: Redis, namespace: str, count: int) -> int:
    """Write ``count`` 10 kB keys into the namespace; return how many the server refused."""
    refused = 0
    for i in range(count):
        try:
            await admin.set(f"{namespace}:filler:{i}", FILLER)
        except redis_errors.OutOfMemoryError:
            refused += 1
    return refused


class TestMaxmemory:
    async def test_evictions_are_misses(self, tmp_path: Path, namespace: str) -> None:
        """allkeys-lru at 4 MB while 10 MB of filler goes in during the load."""
        with server("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru") as srv:
            admin = Redis.from_url(srv.url, socket_timeout=5)
            try:
                async with workers(2, srv.url, namespace) as procs:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(fill, admin, namespace, 1000)
                        run = await run_loads(procs, tmp_path, duration=3.0)
                    # The server may evict a tag index before its members, so an
                    # invalidate_tags may miss entries (docs/reliability.md).
                    assert_sound(run, tags_certain=False)
                    assert int((await admin.info("stats"))["evicted_keys"]) > 0
                    for worker in procs:
                        stats = (await worker.call("stats"))["l2_cache"]
                        # An eviction is not an error: anything counted was a timeout of
                        # the loaded machine, never an error reply.
                        assert stats["errors"] == stats["timeouts"]
                        assert stats["connected"]
            finally:
                await admin.aclose()

    async def test_noeviction_oom_drops_writes(self, tmp_path: Path, namespace: str) -> None:
        """noeviction at 2 MB, filled up: sets return False (counted as dropped writes),
        reads, deletes and loaders keep working, the breaker stays closed (the server
        answers), and nothing is raised."""
        with server("--maxmemory", "2mb", "--maxmemory-policy", "noeviction") as srv:
            admin = Redis.from_url(srv.url, socket_timeout=5)
            try:
                async with workers(2, srv.url, namespace) as procs:
                    assert await fill(admin, namespace, 400) > 0  # full: the server says OOM
                    run = await run_loads(procs, tmp_path, duration=2.0)
                    assert_sound(run)
                    sets = [op for op in run.ops if op["op"] == "set"]
                    assert sets and not any(op["ok"] for op in sets)
                    for worker in procs:
                        stats = (await worker.call("stats"))["l2_cache"]
                        assert stats["dropped_writes"] > 0
                        assert stats["errors"] > 0
                        assert "closed" == stats["breaker"]
                        assert stats["connected"]
            finally:
                await admin.aclose()
