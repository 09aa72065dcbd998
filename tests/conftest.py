"""Shared fixtures: a real Redis/Valkey server per test module, a namespace per test."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import pytest
from redis.asyncio import Redis

from coherent_cache import CacheConfig, CacheManager
from coherent_cache.testing import RedisServer, ServerNotFoundError, server_url_from_env

from .support.proxy import HoldingProxy


@pytest.fixture
def anyio_backend() -> str:
    """redis.asyncio runs on asyncio only."""
    return "asyncio"


class FakeClock:
    """A manually advanced monotonic clock (cachetools' ``Timer.tick()`` idea)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at t=1000."""
    return FakeClock()


def _start_private_server(extra_args: tuple[str, ...] = ()) -> RedisServer:
    try:
        return RedisServer(extra_args=extra_args).start()
    except ServerNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """URL of a real server: COHERENT_CACHE_TEST_REDIS_URL, else a private one per module.

    Fails (never skips) with instructions when no server binary can be found.
    """
    external = server_url_from_env()
    if external is not None:
        yield external
        return
    server = _start_private_server()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def private_server() -> Iterator[RedisServer]:
    """A server of this test's own, which the test may stop, kill, pause or restart."""
    server = _start_private_server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def namespace() -> str:
    """A fresh namespace per test, so tests sharing a server never see each other's keys."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def raw_redis(redis_url: str, namespace: str) -> AsyncIterator[Redis]:
    """A plain redis.asyncio client to inspect the server; deletes this test's keys after."""
    client = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        yield client
    finally:
        async for name in client.scan_iter(match=f"{namespace}:*", count=1000):
            await client.unlink(name)
        await client.aclose()


ManagerFactory = Callable[..., Awaitable[CacheManager]]


@pytest.fixture
async def make_manager(
    redis_url: str, namespace: str, raw_redis: Redis
) -> AsyncIterator[ManagerFactory]:
    """Build and start managers on the module's server and this test's namespace.

    Keyword arguments override `CacheConfig` fields; ``timer=`` is passed to the manager.
    Every manager made is stopped at teardown.
    """
    made: list[CacheManager] = []

    async def factory(*, timer: Callable[[], float] | None = None, **fields: Any) -> CacheManager:
        fields.setdefault("redis_url", redis_url)
        fields.setdefault("namespace", namespace)
        config = CacheConfig(**fields)
        manager = CacheManager(config) if timer is None else CacheManager(config, timer=timer)
        made.append(manager)
        await manager.start()
        return manager

    try:
        yield factory
    finally:
        for manager in reversed(made):
            await manager.stop()


T = TypeVar("T")
_TRUTHY: Any = object()


async def eventually(
    check: Callable[[], Awaitable[Any] | Any],
    *,
    expect: Any = _TRUTHY,
    within: float = 5.0,
    interval: float = 0.001,
) -> None:
    """Poll ``check`` until it returns ``expect`` (or anything true); fail after ``within`` s.

    For state that has no event to await (another instance's L1, a counter in stats).
    """
    last: Any = None
    try:
        with anyio.fail_after(within):
            while True:
                last = check()
                if inspect.isawaitable(last):
                    last = await last
                if (last == expect) if expect is not _TRUTHY else bool(last):
                    return
                await anyio.sleep(interval)
    except TimeoutError:
        wanted = "a true value" if expect is _TRUTHY else repr(expect)
        raise AssertionError(f"waited {within}s for {wanted}, last saw {last!r}") from None


def l1_applied(cache: CacheManager) -> int:
    """Bus invalidations ``cache`` has applied to its L1 (its mailbox's count)."""
    return cache.stats()["bus"]["mailbox"]["applied"]


async def settle(write: Awaitable[T], *readers: CacheManager) -> T:
    """Await ``write`` (made through another manager of this process), then wait (bounded)
    until each of ``readers`` has applied a bus invalidation since.

    The bus is asynchronous: a writer's call returns once Redis has answered, and the other
    instances drop their copies when the message reaches them, a few event-loop turns later
    even in one process. A test reading through another manager right after a write waits
    here first, or the late message drops (or marks stale) the very fill it checks.
    """
    before = [l1_applied(reader) for reader in readers]
    result = await write
    for reader, count in zip(readers, before, strict=True):

        def applied(reader: CacheManager = reader, count: int = count) -> bool:
            return l1_applied(reader) > count

        await eventually(applied)
    return result


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which kind of TLS endpoint the TLS tests ran against (tests/support/tls.py)."""
    from .support.tls import ENDPOINTS

    for kind in dict.fromkeys(ENDPOINTS):
        terminalreporter.write_line(f"TLS tests ran against: {kind}")


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[HoldingProxy]:
    """A reply-holding proxy in front of the module's server (replies pass straight through
    until a test holds or delays them)."""
    parts = urlsplit(redis_url)
    assert parts.hostname is not None and parts.port is not None
    async with HoldingProxy(parts.hostname, parts.port) as running:
        yield running
