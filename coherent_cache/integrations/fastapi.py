"""FastAPI integration: a lifespan helper, a dependency, health and stats routes, and
HTTP response caching with ETags (the ``fastapi`` extra).

``import coherent_cache`` never imports FastAPI; this module needs it and says which
extra to install when it is missing. See ``docs/fastapi.md``.
"""

from __future__ import annotations

try:
    from fastapi import APIRouter, Depends, Request, Response
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "coherent_cache.integrations.fastapi needs FastAPI: pip install 'coherent-cache[fastapi]'"
    ) from exc

import base64
import hashlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, ParamSpec, TypeAlias, TypedDict
from urllib.parse import parse_qsl, quote, urlencode

from pydantic import TypeAdapter
from starlette.applications import Starlette

from coherent_cache._log import get_logger
from coherent_cache._supervisor import TaskState
from coherent_cache.config import CacheConfig
from coherent_cache.errors import BackendError, CacheClosedError, CacheError
from coherent_cache.integrations.dashboard import dashboard_page
from coherent_cache.keys import MAX_KEY_LENGTH
from coherent_cache.manager import CacheManager, create_cache_manager

__all__ = [
    "DEFAULT_CACHE_CONTROL",
    "STATE_ATTRIBUTE",
    "CachedResponse",
    "ManagerSource",
    "cache_lifespan",
    "cache_response",
    "cache_router",
    "get_cache",
    "response_cache_key",
    "response_etag",
]

log = get_logger()

P = ParamSpec("P")

STATE_ATTRIBUTE: Final = "cache"
"""`cache_lifespan` stores the running manager as ``app.state.cache``."""

DEFAULT_CACHE_CONTROL: Final = "public, max-age={max_age}"
"""`cache_response`'s default ``Cache-Control``; ``{max_age}`` is the remaining TTL."""

ManagerSource: TypeAlias = CacheManager | Callable[[Request], CacheManager]
"""A manager, or a function of the request returning one (such as `get_cache`)."""

AppLifespan: TypeAlias = Callable[[Any], AbstractAsyncContextManager[Any]]

# Never stored: hop-by-hop headers (RFC 9110 7.6.1), cookies, and what is recomputed.
_NOT_STORED: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "set-cookie",
        "content-length",
        "date",
        "etag",
        "vary",
        "x-cache",
    }
)
_ENTRY_VERSION: Final = 1


# -- lifespan and dependency --------------------------------------------------------------


def cache_lifespan(
    config: CacheConfig | None = None,
    *,
    manager: CacheManager | None = None,
    lifespan: AppLifespan | None = None,
) -> Callable[[Starlette], AbstractAsyncContextManager[Any]]:
    """A FastAPI/Starlette lifespan running a `CacheManager` for the app's lifetime.

    ``FastAPI(lifespan=cache_lifespan(config))``. On startup it enters the manager
    (``async with``, so ``start()`` has returned: Redis answered and the bus is
    subscribed, or Redis proved unreachable), stores it as ``app.state.cache``, then runs
    the app's own ``lifespan`` (if given) inside it, so the app's startup code can use
    the cache. On shutdown the app's lifespan exits first, then the manager stops. A
    state mapping yielded by the app's lifespan is passed through.

    Args:
        config: configuration of a manager made per app start (`create_cache_manager`;
            ``None`` reads the environment, `CacheConfig.from_env`).
        manager: an existing, not yet started manager to run instead (usable once).
        lifespan: the app's own lifespan, run inside this one.

    Raises:
        ValueError: both ``config`` and ``manager`` were given.
    """
    if config is not None and manager is not None:
        raise ValueError("pass either config or manager, not both")

    @asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[Any]:
        cache = manager if manager is not None else create_cache_manager(config)
        async with cache:
            setattr(app.state, STATE_ATTRIBUTE, cache)
            if lifespan is None:
                yield None
            else:
                async with lifespan(app) as state:
                    yield state

    return run


def get_cache(request: Request) -> CacheManager:
    """FastAPI dependency returning the app's manager: ``cache = Depends(get_cache)``.

    Returns the manager `cache_lifespan` stored on ``app.state.cache`` (after shutdown it
    is the stopped manager, whose operations raise `CacheClosedError`).

    Raises:
        RuntimeError: no manager on ``app.state.cache`` (the lifespan is not installed).
    """
    cache = getattr(request.app.state, STATE_ATTRIBUTE, None)
    if not isinstance(cache, CacheManager):
        raise RuntimeError(
            "no CacheManager on app.state.cache: create the app with "
            "FastAPI(lifespan=cache_lifespan(config)) from coherent_cache.integrations.fastapi"
        )
    return cache


# -- health and stats routes --------------------------------------------------------------


def cache_router(prefix: str = "", *, tags: list[str] | None = None) -> APIRouter:
    """An `APIRouter` with ``GET /health/cache``, ``/cache/stats``, ``/cache/fleet`` and
    ``/cache/dashboard``.

    ``/health/cache`` answers the seed's shape, ``{"status", "l1_cache": {"status"},
    "l2_cache": {"status"}}`` plus ``reasons``; the overall status is
    `CacheManager.health`'s (``healthy``, ``degraded`` or ``unhealthy``) and the HTTP
    status is 503 when it is ``unhealthy``, else 200 (``degraded``: Redis or the bus is
    down, L1 still serves). ``/cache/stats`` returns `CacheManager.get_stats`;
    ``/cache/fleet`` the JSON array of `CacheManager.fleet` (every live instance of the
    namespace, the unhealthy first), or 503 with ``{"error": ...}`` when Redis does not
    answer or the cache is stopped. All use `get_cache`, so the app needs `cache_lifespan`.
    ``/cache/dashboard`` is an HTML page showing ``/cache/fleet`` as a table with
    sparklines, refreshed every 2 s in the browser (``?every=SECONDS``); it loads nothing
    from another host and is served with a Content-Security-Policy allowing only its own
    inline script and style and requests to the same origin. Dependencies given to
    ``include_router`` (authentication) apply to every route, the page's data included.
    """
    router = APIRouter(prefix=prefix, tags=list(tags) if tags is not None else ["cache"])

    @router.get("/health/cache")
    async def cache_health(cache: CacheManager = Depends(get_cache)) -> JSONResponse:  # noqa: B008 - FastAPI's dependency idiom
        """Health of the cache in the seed's shape; 503 when unhealthy."""
        report = await cache.health()
        stats = await cache.get_stats()
        l1_task = stats["tasks"].get("l1_actor")
        l1_failed = l1_task is not None and l1_task["state"] == TaskState.FAILED
        l1_status = "healthy" if cache.running and not l1_failed else "unhealthy"
        l2_connected = report["l2_connected"]
        if cache.l2 is None:
            l2_status = "disabled"
        elif l2_connected:
            l2_status = "healthy"
        else:
            l2_status = "unhealthy"
        body = {
            "status": report["status"],
            "l1_cache": {"status": l1_status, "hit_rate": stats["l1_cache"]["hit_rate"]},
            "l2_cache": {
                "status": l2_status,
                "connected": l2_connected,
                "errors": stats["l2_cache"]["errors"],
            },
            "bus_connected": report["bus_connected"],
            "reasons": report["reasons"],
        }
        code = 503 if report["status"] == "unhealthy" else 200
        return JSONResponse(jsonable_encoder(body), status_code=code)

    @router.get("/cache/stats")
    async def cache_stats(cache: CacheManager = Depends(get_cache)) -> JSONResponse:  # noqa: B008 - FastAPI's dependency idiom
        """`CacheManager.get_stats` as JSON."""
        return JSONResponse(jsonable_encoder(await cache.get_stats()))

    @router.get("/cache/fleet")
    async def cache_fleet(cache: CacheManager = Depends(get_cache)) -> JSONResponse:  # noqa: B008 - FastAPI's dependency idiom
        """`CacheManager.fleet` as a JSON array; 503 when Redis does not answer."""
        try:
            reports = await cache.fleet()
        except (BackendError, CacheClosedError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse(jsonable_encoder(reports))

    @router.get("/cache/dashboard", response_class=HTMLResponse)
    async def cache_dashboard() -> HTMLResponse:
        """The fleet dashboard: an HTML page reading ``fleet`` beside it every few seconds."""
        page = dashboard_page()
        return HTMLResponse(page.html, headers=page.headers)

    return router


# -- response caching ---------------------------------------------------------------------


class CachedResponse(TypedDict):
    """A cached HTTP response as stored in the cache (JSON)."""

    v: int
    status: int
    headers: list[list[str]]
    body: str  # base64
    etag: str
    expires_at: float  # wall clock (time.time()), for the remaining max-age


def response_etag(body: bytes) -> str:
    """The strong, quoted ETag of ``body``: 32 hex digits of BLAKE2b (same on every replica)."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def _normal_query(query: str) -> str:
    """The query string with parameters sorted by name (repeated names keep their order)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    pairs.sort(key=lambda pair: pair[0])
    return urlencode(pairs, quote_via=quote)


def response_cache_key(
    method: str,
    path: str,
    query: str = "",
    *,
    vary: Mapping[str, str] | None = None,
    key_prefix: str = "http",
) -> str:
    """The cache key `cache_response` uses: ``<key_prefix>:<path>:<METHOD>:<query>``.

    ``query`` is normalised (parameters sorted by name, re-encoded); ``HEAD`` is keyed as
    ``GET``; each ``vary`` header adds ``:<lower-case name>=<value>`` in name order. A key
    longer than `MAX_KEY_LENGTH` bytes keeps ``<key_prefix>:<path>:<METHOD>:`` and
    replaces the rest with ``#`` and 32 hex digits of its BLAKE2b digest.
    """
    method = method.upper()
    if method == "HEAD":
        method = "GET"
    head = f"{key_prefix}:{path}:{method}:"
    tail = _normal_query(query)
    for name, value in sorted((n.lower(), v) for n, v in (vary or {}).items()):
        tail += f":{name}={value}"
    key = head + tail
    if len(key.encode()) > MAX_KEY_LENGTH:
        key = head + "#" + hashlib.blake2b(tail.encode(), digest_size=16).hexdigest()
    return key


def _request_directives(request: Request) -> set[str]:
    """The request's ``Cache-Control`` directive names (``Pragma: no-cache`` counts too)."""
    value = request.headers.get("cache-control")
    if value is None:
        return {"no-cache"} if "no-cache" in request.headers.get("pragma", "").lower() else set()
    return {part.split("=", 1)[0].strip().lower() for part in value.split(",")}


def _matches(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` matches ``etag`` (weak comparison, RFC 9110 13.1.2)."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


def _add_vary(response: Response, names: Collection[str]) -> None:
    """Merge ``names`` into the response's ``Vary``."""
    if not names:
        return
    present = [v.strip() for v in response.headers.get("vary", "").split(",") if v.strip()]
    lowered = {v.lower() for v in present}
    present += [n for n in names if n.lower() not in lowered]
    response.headers["vary"] = ", ".join(present)


def _cacheable(response: Response) -> bool:
    """Whether a handler's response may be stored (2xx but 206, a body, no cookie)."""
    if not (200 <= response.status_code < 300) or response.status_code == 206:
        return False
    if not isinstance(getattr(response, "body", None), bytes):
        return False  # streaming and file responses
    if "set-cookie" in response.headers:
        return False
    directives = response.headers.get("cache-control", "").lower()
    return "no-store" not in directives and "private" not in directives


def _to_entry(response: Response, ttl: float) -> CachedResponse:
    body = bytes(response.body)
    headers = [
        [k.decode("latin-1"), v.decode("latin-1")]
        for k, v in response.raw_headers
        if k.decode("latin-1").lower() not in _NOT_STORED
    ]
    return {
        "v": _ENTRY_VERSION,
        "status": response.status_code,
        "headers": headers,
        "body": base64.b64encode(body).decode("ascii"),
        "etag": response_etag(body),
        "expires_at": time.time() + ttl,
    }


def _from_entry(entry: CachedResponse) -> Response:
    response = Response(content=base64.b64decode(entry["body"]), status_code=entry["status"])
    response.raw_headers.extend(
        (k.encode("latin-1"), v.encode("latin-1")) for k, v in entry["headers"]
    )
    return response


def _valid_entry(value: Any) -> CachedResponse | None:
    if isinstance(value, dict) and value.get("v") == _ENTRY_VERSION:
        return value  # type: ignore[return-value]  # written by _to_entry
    return None


def _not_modified(response: Response, etag: str) -> Response:
    """A 304 carrying the validators and caching headers of ``response``, no body."""
    kept = {
        k: v
        for k, v in response.headers.items()
        if k.lower() in {"cache-control", "vary", "expires", "content-location", "x-cache"}
    }
    kept["etag"] = etag
    return Response(status_code=304, headers=kept, background=response.background)


def cache_response(
    manager: ManagerSource,
    *,
    ttl: float,
    vary: Collection[str] = (),
    key_prefix: str | None = None,
    cache_control: str | None = DEFAULT_CACHE_CONTROL,
    honour_no_cache: bool = True,
) -> Callable[[Callable[P, Any]], Callable[P, Awaitable[Any]]]:
    """Decorator caching a GET/HEAD endpoint's HTTP responses; put it under ``@app.get``.

    The key is `response_cache_key` of the method, path, normalised query and the
    ``vary`` request headers. A hit returns the stored status, headers and body without
    running the handler, with a strong ``ETag`` (BLAKE2b of the body), ``Cache-Control``
    and ``Vary``; an ``If-None-Match`` matching the current response's ETag gets a 304
    without a body. Only 2xx responses (not 206) with a body and without ``Set-Cookie``,
    ``no-store`` or ``private`` are stored. Other methods run the handler unchanged. The
    route's signature, and so its OpenAPI schema, stays the same.

    Args:
        manager: a `CacheManager`, or a function of the request returning one (`get_cache`).
        ttl: seconds a response stays cached (and the ``max-age`` of a fresh one).
        vary: request header names that select separate entries (``Vary``).
        key_prefix: first part of the key (default ``"http"``).
        cache_control: ``Cache-Control`` added when the handler set none; ``{max_age}``
            is the remaining TTL in whole seconds; ``None`` adds nothing.
        honour_no_cache: a request ``Cache-Control: no-cache`` (or ``Pragma: no-cache``)
            runs the handler and refreshes the entry; ``no-store`` neither reads nor writes.

    Raises:
        ValueError: ``ttl`` is not positive.
    """
    if not ttl > 0:
        raise ValueError(f"ttl must be positive, got {ttl!r}")
    prefix = "http" if key_prefix is None else key_prefix
    vary_names = tuple(dict.fromkeys(h.lower() for h in vary))
    vary_header = tuple(dict.fromkeys(vary))

    def decorate(func: Callable[P, Any]) -> Callable[P, Awaitable[Any]]:
        signature = inspect.signature(func, eval_str=True)
        request_param = next(
            (
                p.name
                for p in signature.parameters.values()
                if isinstance(p.annotation, type) and issubclass(p.annotation, Request)
            ),
            None,
        )
        # A `response: Response` parameter: FastAPI merges its headers and status into a
        # plain return value; this wrapper returns a Response, so it merges them itself.
        sub_response_param = next(
            (
                p.name
                for p in signature.parameters.values()
                if isinstance(p.annotation, type) and issubclass(p.annotation, Response)
            ),
            None,
        )
        added = request_param is None
        if request_param is None:
            request_param = "coherent_cache_request"
            params = list(signature.parameters.values())
            extra = inspect.Parameter(
                request_param, inspect.Parameter.KEYWORD_ONLY, annotation=Request
            )
            where = next(
                (i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD),
                len(params),
            )
            params.insert(where, extra)
            signature = signature.replace(parameters=params)
        is_async = inspect.iscoroutinefunction(func)
        adapters: dict[Any, TypeAdapter[Any]] = {}

        async def call(kwargs: dict[str, Any]) -> Any:
            if is_async:
                return await func(**kwargs)  # type: ignore[call-arg]  # FastAPI passes keywords
            return await run_in_threadpool(func, **kwargs)  # type: ignore[call-arg]  # as above

        def as_response(request: Request, value: Any, sub: Any) -> Response:
            """Render a plain return value as FastAPI would (response_model, status)."""
            if isinstance(value, Response):
                return value
            route = request.scope.get("route")
            model = getattr(route, "response_model", None)
            content: Any = value
            if model is not None:
                adapter = adapters.get(model)
                if adapter is None:
                    adapter = adapters[model] = TypeAdapter(model)
                content = adapter.validate_python(value, from_attributes=True)
            content = jsonable_encoder(
                content,
                include=getattr(route, "response_model_include", None),
                exclude=getattr(route, "response_model_exclude", None),
                by_alias=getattr(route, "response_model_by_alias", True),
                exclude_unset=getattr(route, "response_model_exclude_unset", False),
                exclude_defaults=getattr(route, "response_model_exclude_defaults", False),
                exclude_none=getattr(route, "response_model_exclude_none", False),
            )
            response_class = getattr(route, "response_class", JSONResponse)
            response_class = getattr(response_class, "value", response_class)
            status = getattr(route, "status_code", None) or 200
            rendered: Response = response_class(content=content, status_code=status)
            if isinstance(sub, Response):
                if sub.status_code:
                    rendered.status_code = sub.status_code
                rendered.raw_headers.extend(h for h in sub.raw_headers if h[0] != b"content-length")
            return rendered

        def finish(response: Response, etag: str, max_age: int, hit: bool) -> Response:
            response.headers["etag"] = etag
            if cache_control is not None and "cache-control" not in response.headers:
                response.headers["cache-control"] = cache_control.format(max_age=max_age)
            _add_vary(response, vary_header)
            response.headers["x-cache"] = "HIT" if hit else "MISS"
            return response

        async def endpoint(*args: P.args, **kwargs: P.kwargs) -> Any:
            request = kwargs[request_param]
            assert isinstance(request, Request)
            if added:
                del kwargs[request_param]
            if request.method not in {"GET", "HEAD"}:
                return await call(kwargs)
            cache = manager(request) if callable(manager) else manager
            key = response_cache_key(
                request.method,
                request.url.path,
                request.url.query,
                vary={name: ",".join(request.headers.getlist(name)) for name in vary_names},
                key_prefix=prefix,
            )
            directives = _request_directives(request) if honour_no_cache else set()
            bypass = "no-cache" in directives or "no-store" in directives
            if_none_match = request.headers.get("if-none-match")
            if not bypass:
                try:
                    entry = _valid_entry(await cache.get(key))
                except CacheError as exc:
                    log.warning("response_cache_get_failed", key=key, error=repr(exc))
                    entry = None
                if entry is not None:
                    max_age = max(0, int(entry["expires_at"] - time.time()))
                    response = finish(_from_entry(entry), entry["etag"], max_age, hit=True)
                    if _matches(if_none_match, entry["etag"]):
                        return _not_modified(response, entry["etag"])
                    return response
            sub = kwargs.get(sub_response_param) if sub_response_param is not None else None
            response = as_response(request, await call(kwargs), sub)
            if not _cacheable(response):
                return response
            entry = _to_entry(response, ttl)
            if "no-store" not in directives:
                try:
                    await cache.set(key, entry, ttl)
                except CacheError as exc:
                    log.warning("response_cache_set_failed", key=key, error=repr(exc))
            response = finish(response, entry["etag"], int(ttl), hit=False)
            if _matches(if_none_match, entry["etag"]):
                return _not_modified(response, entry["etag"])
            return response

        # No __wrapped__: FastAPI would unwrap to a sync handler and run this in a thread.
        endpoint.__name__ = func.__name__
        endpoint.__qualname__ = func.__qualname__
        endpoint.__module__ = func.__module__
        endpoint.__doc__ = func.__doc__
        endpoint.__signature__ = signature  # type: ignore[attr-defined]  # read by FastAPI
        return endpoint

    return decorate
