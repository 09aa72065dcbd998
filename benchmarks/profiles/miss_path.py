"""How a decorated miss travels: key validations and entries into multitier.py, counted.

``python -m benchmarks.profiles.miss_path`` runs one decorated miss (L1 and L2 empty, a
private server) under ``sys.setprofile`` and prints the counts. A coroutine's resume is a
"call" event too, so an awaited function that suspends once counts twice. Issue 14
measured 4 validations and 12 multitier.py functions before the restructure; after it,
1 validation and 9 functions (peek, read, _fill_from_l2, begin_fill, _read_and_install,
end_fill, store, invalidate_local, _stale_fills_of).
"""

from __future__ import annotations

import asyncio
import collections
import sys
from types import FrameType
from typing import Any

from coherent_cache import CacheConfig, CacheManager
from coherent_cache.testing import RedisServer


async def main() -> None:
    """One warm-up call, then one profiled miss."""
    with RedisServer() as server:
        cfg = CacheConfig(redis_url=server.url, namespace="miss-path")
        async with CacheManager(cfg) as cache:

            @cache.cached(ttl=60, key_prefix="u")
            async def f(x: int) -> dict[str, int]:
                return {"x": x}

            await f(0)
            counts: collections.Counter[str] = collections.Counter()

            def profile(frame: FrameType, event: str, arg: Any) -> None:
                if event == "call":
                    code = frame.f_code
                    if code.co_name == "validate_key":
                        counts["validate_key"] += 1
                    if code.co_filename.endswith("multitier.py"):
                        counts[f"multitier.{code.co_name}"] += 1

            sys.setprofile(profile)
            await f(1)
            sys.setprofile(None)
            functions = sorted(k for k in counts if k.startswith("multitier."))
            print(f"validate_key calls: {counts['validate_key']}")
            print(f"multitier.py functions entered: {len(functions)}")
            for name in functions:
                print(f"  {name}: {counts[name]} call/resume events")


if __name__ == "__main__":
    asyncio.run(main())
