"""coherent_cache: a multi-tier async cache (in-process L1, Redis/Valkey L2) for FastAPI."""

from __future__ import annotations

from ._version import __version__
from .bus import BusMessage, BusOp, InvalidationBus, InvalidationPublisher
from .config import CacheConfig, CacheStrategy, CacheTier
from .errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    CacheClosedError,
    CacheError,
    ConfigurationError,
    DeserializationError,
    InvalidKeyError,
    InvalidTTLError,
    LoaderTimeoutError,
    MalformedMessageError,
    SerializationError,
    ValueTooLargeError,
)
from .fleet import FleetReport
from .keys import CacheKeyGenerator
from .l1 import InMemoryCache
from .l2 import RedisCache
from .manager import CacheManager, CacheStats, HealthReport, create_cache_manager
from .monitoring import CacheMonitor
from .multitier import MultiTierCache
from .serializer import CacheSerializer
from .types import USE_DEFAULT, UseDefault
from .warming import CacheWarmer, WarmHandle, WarmResult, WarmSchedule

__all__ = [
    "USE_DEFAULT",
    "BackendError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "BusMessage",
    "BusOp",
    "CacheClosedError",
    "CacheConfig",
    "CacheError",
    "CacheKeyGenerator",
    "CacheManager",
    "CacheMonitor",
    "CacheSerializer",
    "CacheStats",
    "CacheStrategy",
    "CacheTier",
    "CacheWarmer",
    "ConfigurationError",
    "DeserializationError",
    "FleetReport",
    "HealthReport",
    "InMemoryCache",
    "InvalidKeyError",
    "InvalidTTLError",
    "InvalidationBus",
    "InvalidationPublisher",
    "LoaderTimeoutError",
    "MalformedMessageError",
    "MultiTierCache",
    "RedisCache",
    "SerializationError",
    "UseDefault",
    "ValueTooLargeError",
    "WarmHandle",
    "WarmResult",
    "WarmSchedule",
    "__version__",
    "create_cache_manager",
]
