"""The FastAPI integration: lifespan, dependency, health and stats routes, response caching."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Response
from pydantic import BaseModel
from redis.asyncio import Redis

from coherent_cache import CacheConfig, CacheManager
from coherent_cache.integrations.fastapi import (
    cache_lifespan,
    cache_response,
    cache_router,
    get_cache,
    response_cache_key,
    response_etag,
)
from tests.conftest import eventually
from tests.support.multiproc import MISSING, Worker

FASTAPI_DOC = (Path(__file__).resolve().parent.parent / "docs" / "fastapi.md").read_text()


def python_blocks(text: str) -> list[str]:
    """The ```python code blocks of a Markdown text, in order."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def make_app(config: CacheConfig, calls: list[str], **lifespan_args: Any) -> FastAPI:
    """An app with cached item routes, a write route, the cache router and a counter."""
    app = FastAPI(lifespan=cache_lifespan(config, **lifespan_args))
    app.include_router(cache_router())
    cache = get_cache

    @app.get("/items/{item_id}")
    @cache_response(cache, ttl=60)
    async def get_item(item_id: int, q: str | None = None) -> dict[str, Any]:
        calls.append(f"item:{item_id}")
        return {"id": item_id, "q": q, "version": app.state.version}

    @app.get("/greeting")
    @cache_response(cache, ttl=60, vary=("Accept-Language",))
    async def greeting(response: Response) -> dict[str, str]:
        calls.append("greeting")
        response.headers["X-Greeted"] = "yes"
        return {"hello": "world"}

    @app.get("/cookie")
    @cache_response(cache, ttl=60)
    async def cookie() -> Response:
        calls.append("cookie")
        response = Response(b"with cookie")
        response.set_cookie("session", "abc")
        return response

    @app.get("/missing")
    @cache_response(cache, ttl=60)
    async def missing() -> Response:
        calls.append("missing")
        return Response(b"nope", status_code=404)

    @app.api_route("/echo", methods=["GET", "POST"])
    @cache_response(cache, ttl=60)
    async def echo() -> dict[str, int]:
        calls.append("echo")
        return {"n": len(calls)}

    @app.put("/items/{item_id}")
    async def put_item(item_id: int, cache: CacheManager = Depends(get_cache)) -> dict[str, int]:  # noqa: B008 - FastAPI's dependency idiom
        @cache.cache_invalidate("http:/items/{item_id}:*")
        async def write(item_id: int) -> None:
            app.state.version += 1

        await write(item_id)
        return {"id": item_id}

    @app.get("/whoami")
    async def whoami(cache: CacheManager = Depends(get_cache)) -> dict[str, str]:  # noqa: B008 - FastAPI's dependency idiom
        return {"origin": cache.origin}

    app.state.version = 1
    return app


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield a client talking to it in process."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client,
    ):
        yield client


@pytest.fixture
def config(redis_url: str, namespace: str, raw_redis: Redis) -> CacheConfig:
    """A config on the module's server and this test's namespace (keys removed after)."""
    return CacheConfig(redis_url=redis_url, namespace=namespace)


class TestLifespan:
    async def test_starts_stores_and_stops_manager(self, config: CacheConfig) -> None:
        """The lifespan starts the manager, puts it on app.state.cache, stops it on exit."""
        app = make_app(config, [])
        async with running(app) as client:
            cache = app.state.cache
            assert isinstance(cache, CacheManager)
            assert True is cache.running
            reply = await client.get("/whoami")
            assert {"origin": cache.origin} == reply.json()
        assert False is cache.running

    async def test_composes_with_app_lifespan(self, config: CacheConfig) -> None:
        """The app's own lifespan runs inside, with the cache already running; its state
        is passed through."""
        seen: list[str] = []

        @asynccontextmanager
        async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
            await app.state.cache.set("boot", "ok")
            seen.append("started")
            yield {"answer": "42"}
            seen.append("stopped")

        app = FastAPI(lifespan=cache_lifespan(config, lifespan=app_lifespan))
        async with app.router.lifespan_context(app) as state:
            assert {"answer": "42"} == state
            assert "ok" == await app.state.cache.get("boot")
            cache = app.state.cache
        assert (["started", "stopped"], False) == (seen, cache.running)

    async def test_existing_manager(self, config: CacheConfig) -> None:
        """`manager=` runs the given manager."""
        manager = CacheManager(config)
        app = FastAPI(lifespan=cache_lifespan(manager=manager))
        async with app.router.lifespan_context(app):
            assert (manager, True) == (app.state.cache, manager.running)

    async def test_get_cache_without_lifespan(self) -> None:
        """Without the lifespan, the dependency fails with a message naming the fix."""
        app = FastAPI()

        @app.get("/x")
        async def x(cache: CacheManager = Depends(get_cache)) -> str:  # noqa: B008 - FastAPI's dependency idiom
            return cache.origin

        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            with pytest.raises(RuntimeError, match="cache_lifespan"):
                await client.get("/x")


class TestHealthAndStats:
    async def test_health_in_seed_shape(self, config: CacheConfig) -> None:
        """/health/cache: 200 and healthy tiers while running, 503 once stopped."""
        app = make_app(config, [])
        async with running(app) as client:
            reply = await client.get("/health/cache")
            body = reply.json()
            assert (200, "healthy", "healthy", "healthy") == (
                reply.status_code,
                body["status"],
                body["l1_cache"]["status"],
                body["l2_cache"]["status"],
            )
            await app.state.cache.stop()
            reply = await client.get("/health/cache")
            body = reply.json()
            assert (503, "unhealthy", "unhealthy") == (
                reply.status_code,
                body["status"],
                body["l1_cache"]["status"],
            )

    async def test_stats(self, config: CacheConfig) -> None:
        """/cache/stats returns get_stats() as JSON."""
        app = make_app(config, [])
        async with running(app) as client:
            await client.get("/items/1")
            await client.get("/items/1")
            body = (await client.get("/cache/stats")).json()
        assert {"l1_cache", "l2_cache", "total_hits", "bus", "tasks"} <= set(body)
        assert body["total_hits"] >= 1
        assert config.namespace == body["namespace"]


class TestResponseCache:
    async def test_hit_and_miss(self, config: CacheConfig) -> None:
        """The second identical GET is served from the cache (the handler runs once);
        query parameter order does not matter; another query is another entry."""
        calls: list[str] = []
        app = make_app(config, calls)
        async with running(app) as client:
            first = await client.get("/items/7?q=a&x=1")
            second = await client.get("/items/7?x=1&q=a")
            other = await client.get("/items/7?q=b")
        assert ["item:7", "item:7"] == calls
        assert ("MISS", "HIT", "MISS") == tuple(
            r.headers["x-cache"] for r in (first, second, other)
        )
        assert first.json() == second.json() == {"id": 7, "q": "a", "version": 1}
        assert first.headers["etag"] == second.headers["etag"] == response_etag(first.content)
        assert "public, max-age=60" == first.headers["cache-control"]
        assert second.headers["cache-control"].startswith("public, max-age=")
        assert "application/json" == second.headers["content-type"]

    async def test_key_layout(self, config: CacheConfig, raw_redis: Redis) -> None:
        """The entry lives under the documented key."""
        app = make_app(config, [])
        async with running(app) as client:
            await client.get("/items/7?x=1&q=a%20b")
        key = response_cache_key("GET", "/items/7", "x=1&q=a+b")
        assert "http:/items/7:GET:q=a%20b&x=1" == key
        assert 1 == await raw_redis.exists(f"{config.namespace}:{key}")

    async def test_if_none_match_gets_304(self, config: CacheConfig) -> None:
        """A matching If-None-Match gets 304 without a body; a stale one gets the body."""
        calls: list[str] = []
        app = make_app(config, calls)
        async with running(app) as client:
            etag = (await client.get("/items/1")).headers["etag"]
            not_modified = await client.get("/items/1", headers={"If-None-Match": etag})
            weak = await client.get("/items/1", headers={"If-None-Match": f'"x", W/{etag}'})
            other = await client.get("/items/1", headers={"If-None-Match": '"other"'})
        assert (304, b"", etag) == (
            not_modified.status_code,
            not_modified.content,
            not_modified.headers["etag"],
        )
        assert (304, 200) == (weak.status_code, other.status_code)
        assert ["item:1"] == calls

    async def test_no_304_after_invalidation(self, config: CacheConfig) -> None:
        """After the entry is invalidated, the old ETag gets a new full response."""
        calls: list[str] = []
        app = make_app(config, calls)
        async with running(app) as client:
            etag = (await client.get("/items/1")).headers["etag"]
            await client.put("/items/1")
            reply = await client.get("/items/1", headers={"If-None-Match": etag})
        assert (200, 2) == (reply.status_code, reply.json()["version"])
        assert etag != reply.headers["etag"]
        assert ["item:1", "item:1"] == calls

    async def test_etag_same_on_two_instances(self, config: CacheConfig) -> None:
        """Two apps with their own managers on one server give the same ETag for the
        same body (whichever stored it), and each can answer 304 to the other's ETag."""
        calls_a: list[str] = []
        calls_b: list[str] = []
        app_a, app_b = make_app(config, calls_a), make_app(config, calls_b)
        async with running(app_a) as a, running(app_b) as b:
            assert app_a.state.cache.origin != app_b.state.cache.origin
            from_a = await a.get("/items/3")
            from_b = await b.get("/items/3")
            again = await b.get("/items/3", headers={"If-None-Match": from_a.headers["etag"]})
        assert from_a.headers["etag"] == from_b.headers["etag"]
        assert ("MISS", "HIT", 304) == (
            from_a.headers["x-cache"],
            from_b.headers["x-cache"],
            again.status_code,
        )
        assert (["item:3"], []) == (calls_a, calls_b)

    async def test_etag_same_for_separately_rendered_bodies(self, config: CacheConfig) -> None:
        """Two instances each rendering the same body (separate keys) agree on the ETag."""
        app_a = make_app(config.model_copy(update={"namespace": config.namespace + "a"}), [])
        app_b = make_app(config.model_copy(update={"namespace": config.namespace + "b"}), [])
        async with running(app_a) as a, running(app_b) as b:
            one = await a.get("/items/4")
            two = await b.get("/items/4")
            await app_a.state.cache.clear()
            await app_b.state.cache.clear()
        assert ("MISS", "MISS") == (one.headers["x-cache"], two.headers["x-cache"])
        assert one.headers["etag"] == two.headers["etag"]

    async def test_vary_separates_entries(self, config: CacheConfig) -> None:
        """A header named in `vary` selects its own entry and is listed in Vary."""
        calls: list[str] = []
        app = make_app(config, calls)
        async with running(app) as client:
            en = await client.get("/greeting", headers={"Accept-Language": "en"})
            fr = await client.get("/greeting", headers={"Accept-Language": "fr"})
            en_again = await client.get("/greeting", headers={"Accept-Language": "en"})
        assert ["greeting", "greeting"] == calls
        assert ("MISS", "MISS", "HIT") == tuple(r.headers["x-cache"] for r in (en, fr, en_again))
        assert "Accept-Language" == en_again.headers["vary"]
        assert ("yes", "yes") == (en.headers["x-greeted"], en_again.headers["x-greeted"])

    async def test_post_not_cached(self, config: CacheConfig) -> None:
        """POST runs the handler every time and is never stored."""
        calls: list[str] = []
        app = make_app(config, calls)
        async with running(app) as client:
            first = await client.post("/echo")
            second = await client.post("/echo")
        assert (["echo", "echo"], {"n": 1}, {"n": 2}) == (calls, first.json(), second.json())
        assert "x-cache" not in second.headers

    async def test_set_cookie_not_cached(self, config: CacheConfig) -> None:
        """A response setting a cookie is passed through and not stored."""
        calls: list[str] = []
        app = make_app(config, calls)
        async with running(app) as client:
            await client.get("/cookie")
            second = await client.get("/cookie")
        assert ["cookie", "cookie"] == calls
        assert "session=abc" in second.headers["set-cookie"]

    async def test_error_not_cached(self, config: CacheConfig) -> None:
        """A non-2xx response is not stored."""
        calls: list[str] = []
        app = make_app(config, calls)
        async with running(app) as client:
            await client.get("/missing")
            second = await client.get("/missing")
        assert (["missing", "missing"], 404) == (calls, second.status_code)

    async def test_no_cache_refreshes(self, config: CacheConfig) -> None:
        """`Cache-Control: no-cache` runs the handler and refreshes the entry."""
        calls: list[str] = []
        app = make_app(config, calls)
        async with running(app) as client:
            await client.get("/items/5")
            app.state.version = 9
            fresh = await client.get("/items/5", headers={"Cache-Control": "no-cache"})
            cached = await client.get("/items/5")
        assert (["item:5", "item:5"], 9, 9) == (
            calls,
            fresh.json()["version"],
            cached.json()["version"],
        )
        assert "HIT" == cached.headers["x-cache"]

    async def test_invalidation_reaches_other_process(
        self, config: CacheConfig, redis_url: str
    ) -> None:
        """A write endpoint's cache_invalidate removes the entry from another process's L1."""
        calls: list[str] = []
        app = make_app(config, calls)
        key = response_cache_key("GET", "/items/8")
        async with (
            running(app) as client,
            Worker(redis_url=redis_url, namespace=config.namespace) as other,
        ):
            stored = await client.get("/items/8")
            entry = await other.call("get", key=key)
            assert stored.headers["etag"] == entry["etag"]

            async def in_other_l1() -> bool:
                # Read again until the fill sticks: a fill that raced with the writer's own
                # bus message is dropped on purpose (the fill-race guard).
                if MISSING != await other.call("peek", key=key):
                    return True
                await other.call("get", key=key)
                return False

            await eventually(in_other_l1)
            await client.put("/items/8")
            assert None is not await other.call("wait_gone", key=key)
            assert MISSING == await other.call("get", key=key)

    async def test_response_model_and_sync_handler(self, config: CacheConfig) -> None:
        """A sync handler's value is rendered through the route's response_model (extra
        fields dropped) and status_code, on the miss and on the hit."""
        calls: list[str] = []
        app = FastAPI(lifespan=cache_lifespan(config))

        class Item(BaseModel):
            id: int

        @app.get("/sync/{item_id}", response_model=Item, status_code=203)
        @cache_response(get_cache, ttl=30)
        def read(item_id: int) -> dict[str, Any]:
            calls.append("sync")
            return {"id": item_id, "secret": "x"}

        async with running(app) as client:
            first = await client.get("/sync/2")
            second = await client.get("/sync/2")
            head = await client.head("/sync/2")
        assert (203, {"id": 2}, ["sync"]) == (first.status_code, first.json(), calls)
        assert (203, {"id": 2}, "HIT") == (
            second.status_code,
            second.json(),
            second.headers["x-cache"],
        )
        assert 405 == head.status_code  # FastAPI's @app.get does not route HEAD

    async def test_openapi_unchanged(self, config: CacheConfig) -> None:
        """A route with path and query parameters has the same OpenAPI schema with and
        without the decorator."""

        def build(decorate: bool) -> dict[str, Any]:
            app = FastAPI()

            async def read(item_id: int, q: str | None = None, limit: int = 10) -> dict[str, Any]:
                """Read an item."""
                return {"id": item_id}

            endpoint = cache_response(get_cache, ttl=5)(read) if decorate else read
            app.get("/items/{item_id}")(endpoint)
            schema: dict[str, Any] = app.openapi()
            return schema

        assert build(False) == build(True)


class TestSeedExample:
    async def test_seed_fastapi_example_with_lifespan(
        self, redis_url: str, namespace: str, raw_redis: Redis
    ) -> None:
        """docs/fastapi.md's seed example runs with the lifespan instead of on_event."""
        block = next(b for b in python_blocks(FASTAPI_DOC) if "# seed example" in b)
        source = block.replace("redis://redis:6379", redis_url).replace(
            "CacheConfig(redis_url=", f'CacheConfig(namespace="{namespace}", redis_url='
        )
        scope: dict[str, Any] = {}
        exec(compile(source, "docs/fastapi.md", "exec"), scope)
        app = scope["app"]
        async with running(app) as client:
            reply = await client.get("/users/42")
            assert {"id": 42, "name": "User 42"} == reply.json()
            assert 1 == await raw_redis.exists(f"{namespace}:user:42")
            assert 200 == (await client.get("/health/cache")).status_code


class TestImport:
    def test_missing_fastapi_names_the_extra(self) -> None:
        """Without FastAPI, importing the integration says which extra to install."""
        code = (
            "import sys; sys.modules['fastapi'] = None\n"
            "try:\n"
            "    import coherent_cache.integrations.fastapi\n"
            "except ImportError as exc:\n"
            "    print(exc)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        assert "pip install 'coherent-cache[fastapi]'" in result.stdout
