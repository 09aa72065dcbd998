"""Exceptions raised by coherent_cache.

::

    CacheError
    ├── ConfigurationError(CacheError, ValueError)
    ├── InvalidKeyError(CacheError, ValueError)
    ├── InvalidTTLError(CacheError, ValueError)
    ├── SerializationError(CacheError, TypeError)
    ├── ValueTooLargeError(CacheError, ValueError)
    ├── DeserializationError(CacheError, ValueError)
    ├── MalformedMessageError(CacheError, ValueError)
    ├── CacheClosedError(CacheError, RuntimeError)
    ├── LoaderTimeoutError(CacheError, TimeoutError)
    └── BackendError
        ├── BackendUnavailableError
        └── BackendTimeoutError(BackendError, TimeoutError)

Every class mixes in the closest builtin, so ``except ValueError`` keeps working
for code that does not know this package.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "CacheClosedError",
    "CacheError",
    "ConfigurationError",
    "DeserializationError",
    "InvalidKeyError",
    "InvalidTTLError",
    "LoaderTimeoutError",
    "MalformedMessageError",
    "SerializationError",
    "ValueTooLargeError",
]


class CacheError(Exception):
    """Base class of every error raised by coherent_cache."""


class ConfigurationError(CacheError, ValueError):
    """Raised when a setting is invalid; ``field`` names the offending setting."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidKeyError(CacheError, ValueError):
    """Raised when a key or pattern is empty, too long, not a string or otherwise unusable."""

    def __init__(self, message: str, *, key: object = None) -> None:
        super().__init__(message)
        self.key = key


class InvalidTTLError(CacheError, ValueError):
    """Raised when a TTL is not a positive number of seconds (or ``None`` for no expiry)."""

    def __init__(self, message: str, *, ttl: object = None) -> None:
        super().__init__(message)
        self.ttl = ttl


class SerializationError(CacheError, TypeError):
    """Raised at write time when a value cannot be encoded; nothing is written to any tier.

    ``value_type`` is the type that could not be encoded (the innermost one when known).
    """

    def __init__(
        self, message: str, *, value_type: type | None = None, key: str | None = None
    ) -> None:
        super().__init__(message)
        self.value_type = value_type
        self.key = key


class ValueTooLargeError(CacheError, ValueError):
    """Raised at write time when an encoded value exceeds ``CacheConfig.max_value_size``.

    Nothing is written to any tier. ``size`` and ``limit`` are in bytes.
    """

    def __init__(self, message: str, *, size: int, limit: int, key: str | None = None) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit
        self.key = key


class DeserializationError(CacheError, ValueError):
    """Raised by `CacheSerializer.deserialize` for corrupt or foreign bytes.

    The cache itself never lets this reach a caller of ``get``: such a payload is a miss,
    counted in the stats and logged.
    """


class MalformedMessageError(CacheError, ValueError):
    """Raised by `BusMessage.decode` for a bus message that breaks the wire format.

    The bus listener drops such messages and counts them; it never stops on one.
    ``reason`` says what was wrong.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed bus message: {reason}")
        self.reason = reason


class CacheClosedError(CacheError, RuntimeError):
    """Raised when a `CacheManager` is used before ``start()`` or after ``stop()``."""


class LoaderTimeoutError(CacheError, TimeoutError):
    """Raised to a caller of ``get_or_set`` or a `cached` function that waited
    ``loader_hard_timeout`` seconds for a loader without getting its result.

    The load itself goes on in the background (other callers of the key join it) and
    fills L1 and L2 when it ends; ``stop()`` cancels it. ``key`` is the key and
    ``timeout`` the hard timeout in seconds.
    """

    def __init__(self, message: str, *, key: str, timeout: float) -> None:
        super().__init__(message)
        self.key = key
        self.timeout = timeout


class BackendError(CacheError):
    """A Redis operation failed. The manager's operations count and log it instead of raising."""


class BackendUnavailableError(BackendError):
    """Redis could not be reached, or the circuit breaker is open."""


class BackendTimeoutError(BackendError, TimeoutError):
    """A Redis operation did not finish within ``operation_timeout``."""
