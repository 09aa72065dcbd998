"""``GET /cache/dashboard``: the fleet page, its headers, and the page in a real headless
Chromium reading a fleet of instances in separate OS processes."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from urllib.parse import urljoin

import anyio
import httpx
import orjson
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from redis.asyncio import Redis

from coherent_cache import CacheConfig, CacheManager
from coherent_cache.fleet import fleet_key
from coherent_cache.integrations.fastapi import cache_lifespan, cache_router
from coherent_cache.testing import RedisServer
from tests.conftest import eventually
from tests.support.browser import (
    IN_CI,
    MISSING_REASON,
    DashboardDom,
    chromium,
    dump_dom,
    served,
)
from tests.support.multiproc import Worker

INTERVAL = 0.3
"""Every instance reports this often, so the fleet is complete within a second."""
HOSTILE_ORIGIN = "<img src=x onerror=\"document.title='pwned-origin'\">"
HOSTILE_HOST = "<script>document.title='pwned-host'</script>"
HOSTILE_REASON = "<b>bold</b> & <svg onload=\"document.title='pwned-reason'\"></svg>"


def sha256_source(block: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() + "'"


def require_chromium() -> None:
    """Skip without Chromium, except in CI (CI=true), where .ci/run installs it."""
    if chromium() is None:
        if IN_CI:
            pytest.fail("chromium is missing in CI: .ci/run installs Debian's chromium package")
        pytest.skip(MISSING_REASON)


class TestPage:
    async def test_one_self_contained_page_with_a_strict_policy(self) -> None:
        """The page is HTML with its CSS and script inline and no URL of another host
        (no http(s)://, no protocol-relative //, no src/href but the empty data: icon); it
        builds the table without HTML parsing (no innerHTML and the like); the CSP header
        allows exactly its own script and style by hash, requests to the same origin, and
        nothing else."""
        app = FastAPI()
        app.include_router(cache_router())
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://t"
        ) as http:
            response = await http.get("/cache/dashboard")
        assert 200 == response.status_code
        assert "text/html; charset=utf-8" == response.headers["content-type"]
        html = response.text
        assert "<table" in html and 'fetch("fleet"' in html
        for forbidden in ("http://", "https://", "//cdn", "@import", "url("):
            assert forbidden not in html
        assert ["data:,"] == re.findall(r"\b(?:src|href)\s*=\s*\"([^\"]*)\"", html)
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in html
        scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
        styles = re.findall(r"<style>(.*?)</style>", html, flags=re.DOTALL)
        assert 1 == len(scripts) == len(styles)
        assert 1 == html.count("<script") == html.count("<style")
        policy = dict(
            part.strip().split(" ", 1)
            for part in response.headers["content-security-policy"].split(";")
        )
        assert {
            "default-src": "'none'",
            "script-src": sha256_source(scripts[0]),
            "style-src": sha256_source(styles[0]),
            "connect-src": "'self'",
            "img-src": "data:",
            "base-uri": "'none'",
            "form-action": "'none'",
            "frame-ancestors": "'none'",
        } == policy
        assert "nosniff" == response.headers["x-content-type-options"]
        assert "no-store" == response.headers["cache-control"]

    async def test_under_a_prefix_and_behind_the_routers_dependencies(
        self, redis_url: str, namespace: str
    ) -> None:
        """Dependencies given to include_router guard the page like the other routes, and
        the page's relative ``fleet`` resolves to the fleet endpoint under the prefix."""

        def token(request: Request) -> None:
            if request.headers.get("x-token") != "let-me-in":
                raise HTTPException(status_code=401, detail="no token")

        config = CacheConfig(redis_url=redis_url, namespace=namespace, fleet_report_interval=0)
        app = FastAPI(lifespan=cache_lifespan(config))
        app.include_router(cache_router(prefix="/ops"), dependencies=[Depends(token)])
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as http,
        ):
            page = "http://t/ops/cache/dashboard"
            assert 401 == (await http.get(page)).status_code
            assert 401 == (await http.get(urljoin(page, "fleet"))).status_code
            allowed = {"x-token": "let-me-in"}
            assert 200 == (await http.get(page, headers=allowed)).status_code
            fleet = await http.get(urljoin(page, "fleet"), headers=allowed)
            assert (200, []) == (fleet.status_code, fleet.json())  # reporting is off


class TestInChromium:
    @pytest.mark.timeout(150)
    async def test_the_rendered_rows_show_every_instance_and_escape_reports(
        self, redis_url: str, namespace: str, raw_redis: Redis
    ) -> None:
        """A real headless Chromium opens the page of an app (uvicorn on 127.0.0.1, under
        a router prefix) whose fleet is the app's instance, two instances in separate
        processes and a report forged in Redis with markup in its origin, host and
        reasons. The rendered table has one row per instance with its origin and status,
        the unhealthy first; the forged strings appear as text, no element or script of
        theirs exists, and the console shows no error or policy violation."""
        require_chromium()
        config = CacheConfig(
            redis_url=redis_url, namespace=namespace, fleet_report_interval=INTERVAL
        )
        app = FastAPI(lifespan=cache_lifespan(config))
        app.include_router(cache_router(prefix="/ops"))
        async with (
            Worker(redis_url=redis_url, namespace=namespace, fleet_report_interval=INTERVAL) as a,
            Worker(redis_url=redis_url, namespace=namespace, fleet_report_interval=INTERVAL) as b,
        ):
            with served(app) as server:
                cache: CacheManager = app.state.cache
                real = sorted([cache.origin, a.origin, b.origin])
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:

                    async def listed() -> list[str]:
                        response = await http.get("/ops/cache/fleet")
                        return sorted(r["origin"] for r in response.json())

                    await eventually(listed, expect=real)
                    model = (await http.get("/ops/cache/fleet")).json()[0]
                await forge_report(raw_redis, namespace, model)
                dumped = await anyio.to_thread.run_sync(
                    lambda: dump_dom(server.url + "/ops/cache/dashboard")
                )
        dom = DashboardDom(dumped.dom)
        assert "loaded" == dom.main.get("data-state"), dumped.dom[-3000:]
        assert "applied" == dom.main.get("data-css")  # the style's hash let it in
        assert "data-error" not in dom.main
        shown = [(row.cells["status"], row.fields["origin"]) for row in dom.rows]
        assert [("unhealthy", HOSTILE_ORIGIN)] + [("healthy", o) for o in real] == shown
        assert [row.origin for row in dom.rows] == [HOSTILE_ORIGIN, *real]
        assert [row.status for row in dom.rows] == ["unhealthy", "healthy", "healthy", "healthy"]
        forged = dom.rows[0]
        assert HOSTILE_HOST == forged.fields["host"]
        assert {HOSTILE_ORIGIN: HOSTILE_REASON} == dom.reasons
        pids = {row.origin: int(row.fields["pid"]) for row in dom.rows[1:]}
        assert {cache.origin: os.getpid(), a.origin: a.pid, b.origin: b.pid} == pids
        for row in dom.rows[1:]:
            assert ("up", "up", "closed") == (
                row.fields["l2"],
                row.fields["bus"],
                row.fields["l2-breaker"],
            )
            assert row.fields["l1-hit-rate"].endswith("%")
        # Markup from Redis made no element and ran nothing.
        assert "coherent-cache fleet" == dom.title
        assert "img" not in dom.tags
        assert 6 == dom.tags.count("b")  # the summary's figures, none from the reason
        assert 1 == dom.tags.count("script")
        assert dom.tags.count("svg") == 1 + 3 * len(dom.rows)  # the template, 3 sparklines a row
        assert [] == [line for line in dumped.console if "pwned" in line or "Uncaught" in line]
        assert [] == [line for line in dumped.console if "Content Security Policy" in line]

    @pytest.mark.timeout(120)
    async def test_a_failed_read_shows_its_error(
        self, private_server: RedisServer, namespace: str
    ) -> None:
        """Redis down: the page shows the fleet endpoint's error (as text) above the table
        instead of rows, and keeps retrying."""
        require_chromium()
        config = CacheConfig(
            redis_url=private_server.url,
            namespace=namespace,
            fleet_report_interval=INTERVAL,
            operation_timeout=0.2,
        )
        app = FastAPI(lifespan=cache_lifespan(config))
        app.include_router(cache_router())
        with served(app) as server:
            private_server.kill()
            dumped = await anyio.to_thread.run_sync(
                lambda: dump_dom(server.url + "/cache/dashboard", budget_ms=3000)
            )
        dom = DashboardDom(dumped.dom)
        assert "1" == dom.main.get("data-error")
        assert "loading" == dom.main.get("data-state")  # no answer was ever rendered
        assert [] == dom.rows
        assert dom.error is not None
        assert dom.error.startswith("Reading the fleet failed: reading the fleet")
        assert dom.error.endswith(" (retrying every 2 s)")


async def forge_report(redis: Redis, namespace: str, model: dict[str, object]) -> None:
    """Write a report as a reporter would (``<expires_ms> <json>``, a minute to live),
    with markup in the strings a reader shows."""
    seconds, micros = await redis.time()
    expires = seconds * 1000 + micros // 1000 + 60_000
    forged = {
        **model,
        "origin": HOSTILE_ORIGIN,
        "host": HOSTILE_HOST,
        "status": "unhealthy",
        "reasons": [HOSTILE_REASON],
    }
    await redis.hset(
        fleet_key(namespace), HOSTILE_ORIGIN, f"{expires} ".encode() + orjson.dumps(forged)
    )
