"""Regenerate docs/img/dashboard.png: the fleet dashboard of three real instances.

    PYTHONPATH=$PWD python docs/gen_dashboard_screenshot.py [--seconds 20] [--out PATH]

Needs Debian's ``chromium`` (``apt-get install chromium``) and the test extra. It starts
a private Valkey (`coherent_cache.testing.RedisServer`), an app serving `cache_router`
with uvicorn on 127.0.0.1 (one instance), and two instances in separate processes
(``tests.support.worker``); one of them reaches Redis through a TCP proxy
(``tests.support.proxy``) that cuts its bus connection part-way, so it is honestly
``degraded`` (L2 up, bus down). Each instance serves a small read workload with its own
key reuse. A headless Chromium shows ``/ops/cache/dashboard?every=1`` for ``--seconds``
(the sparklines fill up, one point a second) and then captures the page, 1280 pixels
wide.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
from fastapi import Depends, FastAPI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coherent_cache import CacheConfig, CacheManager  # noqa: E402
from coherent_cache.integrations.fastapi import (  # noqa: E402
    cache_lifespan,
    cache_router,
    get_cache,
)
from coherent_cache.testing import RedisServer  # noqa: E402
from tests.support.browser import DevToolsPipe, served  # noqa: E402
from tests.support.multiproc import Worker  # noqa: E402
from tests.support.proxy import HoldingProxy  # noqa: E402

NAMESPACE = "shop"
INTERVAL = 1.0


def make_app(url: str) -> FastAPI:
    """The app: the cache router under /ops and one cached route to give it traffic."""
    config = CacheConfig(
        redis_url=url, namespace=NAMESPACE, fleet_report_interval=INTERVAL, origin_prefix="api"
    )
    app = FastAPI(lifespan=cache_lifespan(config))
    app.include_router(cache_router(prefix="/ops"))

    @app.get("/items/{n}")
    async def item(n: int, cache: CacheManager = Depends(get_cache)) -> Any:  # noqa: B008
        async def load() -> dict[str, int]:
            return {"n": n}

        return await cache.get_or_set(f"item:{n}", load, ttl=30)

    return app


async def worker_traffic(worker: Worker, keys: int, until: float, seed: int) -> None:
    """Reads of ``keys`` keys (a miss is filled), a few a tick, until ``until``."""
    rng = random.Random(seed)
    while time.monotonic() < until:
        for _ in range(5):
            key = f"product:{rng.randrange(keys)}"
            if (await worker.call("get", key=key)) == {"__missing__": True}:
                await worker.call("set", key=key, value={"id": key}, ttl=30)
        await anyio.sleep(0.05)


async def app_traffic(url: str, keys: int, until: float) -> None:
    rng = random.Random(1)
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        while time.monotonic() < until:
            for _ in range(5):
                (await http.get(f"/items/{rng.randrange(keys)}")).raise_for_status()
            await anyio.sleep(0.05)


def capture(url: str, seconds: float, out: Path) -> None:
    """Show ``url`` in headless Chromium for ``seconds``, then write a PNG to ``out``."""
    with DevToolsPipe(window=(1280, 800), timeout=60) as browser:
        session = browser.open(url)
        deadline = time.monotonic() + 30
        while (
            browser.evaluate(session, "document.getElementById('dashboard').dataset.count") != "3"
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("the dashboard never showed three instances")
            time.sleep(0.2)
        time.sleep(seconds)
        out.write_bytes(browser.screenshot(session, full_height=True))
    print(f"wrote {out} ({out.stat().st_size} bytes)")


async def main(seconds: float, out: Path) -> None:
    with RedisServer() as server:
        async with HoldingProxy("127.0.0.1", server.port) as proxy:
            app = make_app(server.url)
            with served(app) as web:
                async with (
                    Worker(
                        redis_url=server.url,
                        namespace=NAMESPACE,
                        fleet_report_interval=INTERVAL,
                        origin_prefix="worker",
                    ) as healthy,
                    Worker(
                        redis_url=proxy.url,
                        namespace=NAMESPACE,
                        fleet_report_interval=INTERVAL,
                        origin_prefix="worker",
                    ) as degraded,
                ):
                    until = time.monotonic() + seconds + 15
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(app_traffic, web.url, 60, until)
                        tg.start_soon(worker_traffic, healthy, 40, until, 2)
                        tg.start_soon(worker_traffic, degraded, 400, until, 3)

                        async def cut_the_bus() -> None:
                            await anyio.sleep(seconds * 0.6)
                            proxy.block_subscribers()  # its bus drops; L2 still answers

                        tg.start_soon(cut_the_bus)
                        page = f"{web.url}/ops/cache/dashboard?every=1"
                        await anyio.to_thread.run_sync(capture, page, seconds, out)
                        tg.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    anyio.run(main, args.seconds, args.out)
