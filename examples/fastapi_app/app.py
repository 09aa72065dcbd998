"""A FastAPI service whose reads go through coherent_cache, in front of a real database.

SQLite through SQLAlchemy's async engine (aiosqlite) stands in for the database: product
reads are cached with ``@cache.cached``, writes invalidate with ``cache_invalidate`` and
tags, the cache is warmed from the database on startup, the FastAPI integration
(`coherent_cache.integrations.fastapi`) runs the manager in the lifespan, hands it to
handlers (``get_cache``), serves ``/health/cache`` and ``/cache/stats`` and caches a whole
HTTP response with ETags, and OpenTelemetry traces go to an OTLP collector when ``OTEL_*``
variables configure one. Run several replicas against one Redis and they stay coherent::

    pip install 'coherent-cache[fastapi,otel]' sqlalchemy aiosqlite uvicorn
    COHERENT_CACHE_REDIS_URL=redis://127.0.0.1:6379/0 \\
        uvicorn examples.fastapi_app.app:app --port 8000

    curl localhost:8000/products/1            # warmed on startup: no query
    curl 'localhost:8000/products?category=books'
    curl -X PUT localhost:8000/products/1 -H 'content-type: application/json' -d '{"price": 9.5}'
    curl -i localhost:8000/categories         # a cached HTTP response (ETag, X-Cache)
    curl localhost:8000/health/cache

Tracing (optional): with ``opentelemetry-sdk`` and ``opentelemetry-exporter-otlp-proto-http``
installed, set ``OTEL_EXPORTER_OTLP_ENDPOINT`` (and ``OTEL_SERVICE_NAME``); without the
variable, or without those packages, the app runs untraced (``examples/tracing.py``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool

from coherent_cache import CacheConfig, CacheManager
from coherent_cache.integrations.fastapi import (
    cache_lifespan,
    cache_response,
    cache_router,
    get_cache,
)

from ..tracing import setup_tracing

__all__ = [
    "Database",
    "NewProduct",
    "PriceUpdate",
    "Product",
    "app",
    "create_app",
    "setup_tracing",
]

log = structlog.get_logger("examples.fastapi_app")

IN_MEMORY = "sqlite+aiosqlite:///:memory:"
SEED = [
    ("Dune", "books", 12.0),
    ("Neuromancer", "books", 10.0),
    ("Kettle", "kitchen", 25.0),
]


class Base(DeclarativeBase):
    """Declarative base of the example's tables."""


class Product(Base):
    """A row of the ``products`` table."""

    __tablename__ = "products"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    category: Mapped[str]
    price: Mapped[float]

    def as_dict(self) -> dict[str, Any]:
        """The row as the JSON the API returns (and the cache stores)."""
        return {"id": self.id, "name": self.name, "category": self.category, "price": self.price}


class PriceUpdate(BaseModel):
    """Body of ``PUT /products/{id}``."""

    price: float


class NewProduct(BaseModel):
    """Body of ``POST /products``."""

    name: str
    category: str
    price: float


class Database:
    """The async engine, a session factory, and a count of the SELECTs sent (to show hits).

    ``sqlite+aiosqlite:///:memory:`` uses one shared connection (`StaticPool`), so every
    session sees the same in-memory database.
    """

    def __init__(self, url: str = IN_MEMORY) -> None:
        memory = url.endswith(":memory:")
        self.engine: AsyncEngine = create_async_engine(
            url,
            poolclass=StaticPool if memory else None,
            connect_args={"check_same_thread": False} if memory else {},
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.selects = 0
        event.listen(self.engine.sync_engine, "before_cursor_execute", self._count)

    def _count(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.selects += 1

    async def create(self) -> None:
        """Create the table and add the seed rows if it is empty."""
        async with self.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with self.sessions.begin() as session:
            if (await session.execute(select(Product.id).limit(1))).first() is None:
                session.add_all(Product(name=n, category=c, price=p) for n, c, p in SEED)

    async def all_products(self) -> list[dict[str, Any]]:
        """Every product, for warming."""
        async with self.sessions() as session:
            rows = await session.scalars(select(Product).order_by(Product.id))
            return [row.as_dict() for row in rows]


def create_app(config: CacheConfig | None = None, *, database_url: str = IN_MEMORY) -> FastAPI:
    """Build the app; the cache and the database start and stop with its lifespan.

    Args:
        config: the cache settings; ``CacheConfig.from_env()`` (``COHERENT_CACHE_*``
            variables) when omitted, in namespace ``shop`` unless one is set.
        database_url: an SQLAlchemy async URL; an in-memory SQLite database by default.
    """
    if config is None:
        config = CacheConfig.from_env(namespace=os.environ.get("COHERENT_CACHE_NAMESPACE", "shop"))
    tracer_provider = setup_tracing()
    cache = CacheManager(config, tracer_provider=tracer_provider)
    db = Database(database_url)

    @cache.cached(ttl=600, key_prefix="product", cache_none=False)
    async def load_product(product_id: int) -> dict[str, Any] | None:
        async with db.sessions() as session:
            row = await session.get(Product, product_id)
            return row.as_dict() if row is not None else None

    @cache.cached(ttl=300, key_prefix="category", tags=["catalog"])
    async def load_category(category: str) -> list[dict[str, Any]]:
        async with db.sessions() as session:
            rows = await session.scalars(
                select(Product).where(Product.category == category).order_by(Product.id)
            )
            return [row.as_dict() for row in rows]

    @cache.cache_invalidate("product:{product_id}")
    async def save_price(product_id: int, price: float) -> dict[str, Any] | None:
        async with db.sessions.begin() as session:
            row = await session.get(Product, product_id)
            if row is None:
                return None
            row.price = price
            return row.as_dict()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Runs inside cache_lifespan: the cache is already running here.
        try:
            await db.create()
            # Warm the product entries under the keys the decorator reads.
            products = await db.all_products()
            warmed = await cache.warm_cache((load_product.cache_key(p["id"]), p) for p in products)
            log.info("cache_warmed", written=warmed.written)
            yield
        finally:
            await db.engine.dispose()
            if tracer_provider is not None:
                tracer_provider.shutdown()

    app = FastAPI(
        title="coherent_cache example",
        lifespan=cache_lifespan(manager=cache, lifespan=lifespan),
    )
    app.state.db = db
    app.include_router(cache_router())  # GET /health/cache and GET /cache/stats

    @app.get("/products/{product_id}")
    async def get_product(product_id: int) -> dict[str, Any]:
        product = await load_product(product_id)
        if product is None:
            raise HTTPException(status_code=404, detail="no such product")
        return product

    @app.get("/products")
    async def list_products(category: str) -> list[dict[str, Any]]:
        return await load_category(category)

    @app.get("/categories")
    @cache_response(get_cache, ttl=60)
    async def list_categories() -> list[str]:
        """A whole HTTP response cached (ETag, ``304 Not Modified``, ``X-Cache``)."""
        async with db.sessions() as session:
            rows = await session.scalars(
                select(Product.category).distinct().order_by(Product.category)
            )
            return list(rows)

    @app.put("/products/{product_id}")
    async def update_price(
        product_id: int,
        body: PriceUpdate,
        cache: CacheManager = Depends(get_cache),  # noqa: B008 - FastAPI's dependency idiom
    ) -> dict[str, Any]:
        product = await save_price(product_id, body.price)
        if product is None:
            raise HTTPException(status_code=404, detail="no such product")
        # The category listings hold the old price: drop them on every instance.
        await cache.invalidate_tags("catalog")
        return product

    @app.post("/products", status_code=201)
    async def add_product(
        body: NewProduct,
        cache: CacheManager = Depends(get_cache),  # noqa: B008 - FastAPI's dependency idiom
    ) -> dict[str, Any]:
        async with db.sessions.begin() as session:
            row = Product(name=body.name, category=body.category, price=body.price)
            session.add(row)
            await session.flush()
            product = row.as_dict()
        await cache.invalidate_tags("catalog")
        await cache.clear_pattern("http:/categories:*")  # a new category may have appeared
        return product

    return app


app = create_app()
"""The app uvicorn serves (``examples.fastapi_app.app:app``), configured from the
environment; building it connects to nothing until its lifespan starts."""
