"""Run as ``python -W error::ResourceWarning -m tests.faults.stop_script <dead|paused>``.

Starts a server of its own and two managers on it, makes the server dead (SIGKILL) or
paused (SIGSTOP), uses the managers, then stops them and prints ``{"stop_seconds": [...]}``.
The caller checks the timing and that stderr carries no warning ("Event loop is closed",
unclosed connections or transports, ResourceWarning).
"""

from __future__ import annotations

import gc
import sys
import time

import anyio
import orjson

from coherent_cache import CacheConfig, CacheManager
from coherent_cache.testing import RedisServer


async def main(mode: str) -> None:
    """Stop two managers whose server is dead or paused; report how long each stop took."""
    with RedisServer() as server:
        managers = [
            CacheManager(
                CacheConfig(
                    redis_url=server.url,
                    namespace="stop",
                    operation_timeout=0.25,
                    connect_timeout=0.5,
                )
            )
            for _ in range(2)
        ]
        for manager in managers:
            await manager.start()
            await manager.set("k", 1)
            assert 1 == await manager.get("k")
        if mode == "dead":
            server.kill()
        else:
            server.pause()
        for manager in managers:
            await manager.set("k2", 2)
            await manager.get("cold")
        took = []
        for manager in managers:
            started = time.monotonic()
            await manager.stop()
            took.append(time.monotonic() - started)
        server.resume()
    gc.collect()
    sys.stdout.write(orjson.dumps({"stop_seconds": took}).decode() + "\n")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
    gc.collect()
