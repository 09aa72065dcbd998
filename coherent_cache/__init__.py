"""coherent_cache: a multi-tier async cache (in-process L1, Redis/Valkey L2) for FastAPI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .warming import CacheWarmer, WarmHandle, WarmResult, WarmSchedule

_ON_FIRST_USE: dict[str, str] = {
    "CacheWarmer": "warming",
    "WarmHandle": "warming",
    "WarmResult": "warming",
    "WarmSchedule": "warming",
}
"""Names imported from their module when first used (issue 20: a plain get/set never
needs them); ``from coherent_cache import CacheWarmer`` works as for the others."""

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


def __getattr__(name: str) -> Any:  # PEP 562: the names of _ON_FIRST_USE
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
