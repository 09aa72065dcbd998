"""CacheManager, the per-instance coordinator, and create_cache_manager."""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Self, final

import anyio
import structlog
from redis.asyncio import Redis

from .config import CacheConfig, CacheTier
from .errors import CacheClosedError
from .l1 import InMemoryCache
from .l2 import RedisCache
from .multitier import CacheStats, MultiTierCache
from .serializer import CacheSerializer
from .types import TTL, USE_DEFAULT

__all__ = ["CacheManager", "create_cache_manager"]

log = structlog.get_logger("coherent_cache")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


@final
class CacheManager(anyio.AsyncContextManagerMixin):
    """The cache of one app instance: an L1 in memory and, when configured, a Redis L2.

    Use it as ``async with create_cache_manager(config) as cache:`` or call `start` and
    `stop` yourself (in the same task, as FastAPI's lifespan does). Operations before
    ``start()`` or after ``stop()`` raise `CacheClosedError`. Redis being down never makes
    an operation raise: reads fall back to L1, writes go to L1, and the failure is counted
    in `get_stats`.

    Args:
        config: the settings; `CacheConfig.from_env` when omitted.
        redis_client: a ready ``redis.asyncio.Redis`` to use for the L2 (tests, custom
            connection setups); the manager does not close it.
        timer: the monotonic clock of the L1 TTLs and the circuit breaker (tests).
    """

    def __init__(
        self,
        config: CacheConfig | None = None,
        *,
        redis_client: Redis | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config if config is not None else CacheConfig.from_env()
        cfg = self.config
        self._state = _State.NEW
        self.serializer = CacheSerializer(
            compression=cfg.enable_compression,
            threshold=cfg.compression_threshold,
            algorithm=cfg.compression_algorithm,
            max_size=cfg.max_value_size,
        )
        self.l1 = InMemoryCache(
            cfg.memory_cache_size, cfg.memory_cache_ttl, cfg.memory_cache_strategy, timer=timer
        )
        self.l2: RedisCache | None = None
        if cfg.enable_multi_tier and (cfg.redis_url is not None or redis_client is not None):
            self.l2 = RedisCache(cfg, client=redis_client, serializer=self.serializer, timer=timer)
        self._cache = MultiTierCache(
            self.l1,
            self.l2,
            serializer=self.serializer,
            default_ttl=cfg.default_ttl,
            namespace=cfg.namespace,
        )

    def __repr__(self) -> str:
        return (
            f"<CacheManager namespace={self.config.namespace!r} state={self._state.value} "
            f"l2={self.config.redacted_url() if self.l2 is not None else None!r}>"
        )

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the manager has been started and not stopped."""
        return self._state is _State.RUNNING

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[Self]:
        if self._state is _State.CLOSED:
            raise CacheClosedError(
                "this CacheManager was stopped; create a new one instead of restarting it"
            )
        if self.l2 is not None:
            connected = await self.l2.connect()
            log.info(
                "cache_started",
                namespace=self.config.namespace,
                l2=self.config.redacted_url(),
                connected=connected,
            )
        else:
            log.info("cache_started", namespace=self.config.namespace, l2=None)
        self._state = _State.RUNNING
        try:
            yield self
        finally:
            self._state = _State.CLOSED
            if self.l2 is not None:
                await self.l2.aclose()
            log.info("cache_stopped", namespace=self.config.namespace)

    async def start(self) -> None:
        """Connect to Redis (if configured) and accept operations.

        Returns once L2 answered a PING, or once it proved unreachable within
        ``connect_timeout``; then the manager runs on L1 and reconnects by itself. Calling
        it on a running manager does nothing. Call `stop` from the same task.

        Raises:
            CacheClosedError: the manager was stopped before.
        """
        if self._state is _State.RUNNING:
            return
        await self.__aenter__()

    async def stop(self) -> None:
        """Close connections; idempotent. Later operations raise `CacheClosedError`."""
        if self._state is _State.RUNNING:
            await self.__aexit__(None, None, None)
        self._state = _State.CLOSED

    async def aclose(self) -> None:
        """Same as `stop`."""
        await self.stop()

    def _closed_error(self) -> CacheClosedError:
        if self._state is _State.NEW:
            return CacheClosedError(
                "CacheManager is not started: call 'await cache.start()' or use "
                "'async with create_cache_manager(config) as cache:'"
            )
        return CacheClosedError("CacheManager is stopped; create a new one")

    # -- operations ------------------------------------------------------------------------

    async def get(self, key: str, tier: CacheTier = CacheTier.BOTH, *, default: Any = None) -> Any:
        """Return the cached value of ``key``, or ``default`` (``None``) when absent.

        With ``tier=BOTH`` an L1 miss reads L2 and copies the value into L1 for at most its
        remaining L2 TTL (capped by ``memory_cache_ttl``).

        Raises:
            InvalidKeyError: ``key`` is not a non-empty str of at most 1024 bytes.
            CacheClosedError: the manager is not running.
        """
        if self._state is not _State.RUNNING:
            raise self._closed_error()
        return await self._cache.get(key, tier, default=default)

    async def set(
        self, key: str, value: Any, ttl: TTL = USE_DEFAULT, tier: CacheTier = CacheTier.BOTH
    ) -> bool:
        """Store ``value`` under ``key`` for ``ttl`` seconds.

        ``ttl`` defaults to ``default_ttl``; ``None`` means no expiry in L2 (L1 entries
        still live at most ``memory_cache_ttl``). Returns ``False`` if a requested L2 write
        failed (Redis down); the L1 write still happened.

        Raises:
            InvalidKeyError, InvalidTTLError: bad arguments; nothing is written.
            SerializationError: ``value`` is not JSON-encodable; nothing is written.
            ValueTooLargeError: the encoded value exceeds ``max_value_size``.
            CacheClosedError: the manager is not running.
        """
        if self._state is not _State.RUNNING:
            raise self._closed_error()
        return await self._cache.set(key, value, ttl, tier)

    async def delete(self, key: str, tier: CacheTier = CacheTier.BOTH) -> bool:
        """Remove ``key``; return whether a tier held it. This instance's L1 forgets it now."""
        if self._state is not _State.RUNNING:
            raise self._closed_error()
        return await self._cache.delete(key, tier)

    async def clear_pattern(self, pattern: str, tier: CacheTier = CacheTier.BOTH) -> int:
        """Remove keys matching the Redis glob ``pattern`` (``user:*``) from this namespace.

        L2 is cleared with SCAN + UNLINK batches, never KEYS. Returns the number of L2 keys
        removed (L1 keys when running on L1 alone).
        """
        if self._state is not _State.RUNNING:
            raise self._closed_error()
        return await self._cache.clear_pattern(pattern, tier)

    async def clear(self, tier: CacheTier = CacheTier.BOTH) -> int:
        """Remove every key of this namespace (other namespaces are untouched)."""
        if self._state is not _State.RUNNING:
            raise self._closed_error()
        return await self._cache.clear(tier)

    async def get_stats(self) -> CacheStats:
        """Statistics in the seed's shape: ``l1_cache``, ``l2_cache``, ``total_*``.

        Works in any state, so a health endpoint can report a stopped cache.
        """
        return self._cache.stats()

    @property
    def multi_tier(self) -> MultiTierCache:
        """The `MultiTierCache` this manager drives."""
        return self._cache


def create_cache_manager(config: CacheConfig | None = None) -> CacheManager:
    """Build a `CacheManager` (not started) from ``config``, or from the environment.

    Args:
        config: the settings; when omitted, `CacheConfig.from_env` reads
            ``COHERENT_CACHE_*`` variables over the defaults.
    """
    return CacheManager(config)
