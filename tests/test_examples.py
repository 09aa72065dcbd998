"""The scripts and the app in examples/ run against a real server and do what they say."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from coherent_cache import CacheConfig, CacheManager
from examples import plain_asyncio, publisher
from examples.fastapi_app.app import Database, create_app
from tests.conftest import ManagerFactory, eventually


class TestPlainAsyncio:
    async def test_every_step_observes_what_it_promises(
        self, redis_url: str, namespace: str
    ) -> None:
        """The plain asyncio script reads back, loads once for ten callers, caches a
        decorated call, re-runs it after the invalidation, and clears by tag and pattern."""
        seen = await plain_asyncio.main(redis_url, namespace)
        assert {"text": "hello"} == seen["get"]
        assert {"visits": 1234} == seen["get_or_set"]
        assert 1 == seen["get_or_set_loads"]
        assert 1 == seen["cached_calls_after_two_reads"]
        assert "user:7" == seen["cache_key"]
        assert 2 == seen["cached_calls_after_invalidation"]
        assert seen["tag_removed"] >= 1
        assert None is seen["after_tags"]
        assert None is seen["after_delete"]
        assert 3 == seen["cleared"]
        assert True is seen["stats"]["l2_connected"]
        assert seen["stats"]["total_hits"] >= 1


class TestPublisher:
    async def test_a_running_instance_drops_what_the_publisher_invalidates(
        self, make_manager: ManagerFactory, namespace: str, redis_url: str
    ) -> None:
        """Keys deleted and a pattern cleared by the publishing service leave a running
        manager's L1 and the L2; keys outside them stay."""
        cache = await make_manager()
        for key in ("product:1", "product:2", "product:3", "category:books"):
            await cache.set(key, {"k": key}, ttl=60)
        received = await publisher.main(redis_url, namespace)
        assert {"delete": 1, "clear_pattern": 1} == received
        for key in ("product:1", "product:2", "category:books"):
            await eventually(lambda key=key: cache.l1.peek(key) is None)  # type: ignore[misc]
            assert None is await cache.get(key)
        assert {"k": "product:3"} == await cache.get("product:3")


@pytest.fixture
async def app(redis_url: str, namespace: str) -> AsyncIterator[FastAPI]:
    """The example app, started through its lifespan, on this test's namespace."""
    application = create_app(CacheConfig(redis_url=redis_url, namespace=namespace))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client calling the app in process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
        yield client


class TestFastAPIApp:
    async def test_startup_warms_the_products(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        """Products are in the cache after startup: reading one sends no query."""
        db: Database = app.state.db
        before = db.selects
        response = await client.get("/products/1")
        assert 200 == response.status_code
        assert {"id": 1, "name": "Dune", "category": "books", "price": 12.0} == response.json()
        assert before == db.selects

    async def test_a_cached_read_queries_the_database_once(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        """Two reads of a category listing send one SELECT."""
        db: Database = app.state.db
        before = db.selects
        first = await client.get("/products", params={"category": "books"})
        second = await client.get("/products", params={"category": "books"})
        assert ["Dune", "Neuromancer"] == [p["name"] for p in first.json()]
        assert first.json() == second.json()
        assert before + 1 == db.selects

    async def test_a_write_invalidates_the_product_and_the_listings(
        self, app: FastAPI, client: httpx.AsyncClient, make_manager: ManagerFactory
    ) -> None:
        """A price change drops the product entry (decorator) and the listings (tag) on this
        instance and on another one; the next reads query again and see the new price."""
        other = await make_manager()
        await client.get("/products", params={"category": "books"})
        assert await other.get("product:1") is not None
        assert await other.get("category:books") is not None
        db: Database = app.state.db
        response = await client.put("/products/1", json={"price": 9.5})
        assert 200 == response.status_code
        await eventually(lambda: other.l1.peek("product:1") is None)
        await eventually(lambda: other.l1.peek("category:books") is None)
        before = db.selects
        product = (await client.get("/products/1")).json()
        listing = (await client.get("/products", params={"category": "books"})).json()
        assert 9.5 == product["price"]
        assert 9.5 == listing[0]["price"]
        assert before + 2 == db.selects

    async def test_adding_a_product_refreshes_its_category(self, client: httpx.AsyncClient) -> None:
        """A new product shows in its (cached) category listing right after the POST."""
        assert 1 == len((await client.get("/products", params={"category": "kitchen"})).json())
        created = await client.post(
            "/products", json={"name": "Teapot", "category": "kitchen", "price": 18.0}
        )
        assert 201 == created.status_code
        listing = (await client.get("/products", params={"category": "kitchen"})).json()
        assert ["Kettle", "Teapot"] == [p["name"] for p in listing]

    async def test_unknown_product_is_404_and_not_cached(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        """A missing product is a 404 and is not stored in the cache."""
        assert 404 == (await client.get("/products/999")).status_code
        cache: CacheManager = app.state.cache
        assert None is await cache.get("product:999", default=None)

    async def test_health_reports_the_cache(self, client: httpx.AsyncClient) -> None:
        """/health/cache (from `cache_router`) has the seed's shape and says healthy."""
        response = await client.get("/health/cache")
        assert 200 == response.status_code
        body: dict[str, Any] = response.json()
        assert "healthy" == body["status"]
        assert [] == body["reasons"]
        assert "healthy" == body["l1_cache"]["status"]
        assert {"status": "healthy", "connected": True, "errors": 0} == body["l2_cache"]
        stats = (await client.get("/cache/stats")).json()
        assert {"total_hits", "total_misses", "total_sets", "l1_cache"} <= set(stats)

    async def test_a_cached_response_is_served_until_a_write_drops_it(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        """/categories is a cached HTTP response: the second GET is a hit without a query;
        adding a product in a new category drops it."""
        db: Database = app.state.db
        first = await client.get("/categories")
        before = db.selects
        second = await client.get("/categories")
        assert ["books", "kitchen"] == first.json() == second.json()
        assert "HIT" == second.headers["x-cache"]
        assert before == db.selects
        await client.post("/products", json={"name": "Lamp", "category": "lighting", "price": 30})
        third = await client.get("/categories")
        assert ["books", "kitchen", "lighting"] == third.json()

    def test_tracing_is_off_without_an_endpoint(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without OTEL_EXPORTER_OTLP_ENDPOINT no provider is set up."""
        from examples.fastapi_app.app import setup_tracing

        monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
        assert None is setup_tracing()
