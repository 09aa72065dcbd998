"""A second service that only invalidates: it holds no cache, it tells the others to drop.

A billing job or an admin tool changes data that the API instances cache; with an
`InvalidationPublisher` it removes the keys from the shared L2 and publishes the
invalidation, so every running instance drops its L1 copy within the bus latency::

    COHERENT_CACHE_REDIS_URL=redis://127.0.0.1:6379/0 COHERENT_CACHE_NAMESPACE=shop \\
        python -m examples.publisher

It drops entries of the FastAPI example (``examples/fastapi_app``): two products and every
category listing.

The same works from any language with one ``PUBLISH`` (see docs/protocol.md), or from
the shell with ``coherent-cache invalidate``. Tags are not offered by the publisher:
removing an entry by tag needs the tag index, which `CacheManager.invalidate_tags` keeps.
"""

from __future__ import annotations

import asyncio
import os

from coherent_cache import CacheConfig, InvalidationPublisher
from coherent_cache.bus import make_origin


async def main(redis_url: str | None = None, namespace: str = "shop") -> dict[str, int]:
    """Delete two products and clear the category listings in ``namespace``; return the
    subscriber counts.

    Each count is how many subscribers (running cache instances, ``watch`` commands)
    received the message.
    """
    url = redis_url or "redis://localhost:6379"
    received: dict[str, int] = {}
    async with InvalidationPublisher(url, namespace, origin=make_origin("publisher")) as publisher:
        received["delete"] = await publisher.delete("product:1", "product:2")
        received["clear_pattern"] = await publisher.clear_pattern("category:*")
    for what, count in received.items():
        print(f"{what}: {count} subscriber(s) received it")
    return received


if __name__ == "__main__":
    # COHERENT_CACHE_REDIS_URL, COHERENT_CACHE_NAMESPACE, ... as the app instances read them.
    settings = CacheConfig.from_env(namespace=os.environ.get("COHERENT_CACHE_NAMESPACE", "shop"))
    asyncio.run(main(settings.redis_url, settings.namespace))
