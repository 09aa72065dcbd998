"""Shared type aliases and sentinels of the public API."""

from __future__ import annotations

import enum
from typing import Any, Final, Literal, TypeAlias

from .errors import InvalidTTLError

__all__ = ["MISSING", "TTL", "USE_DEFAULT", "UseDefault", "check_ttl"]


class UseDefault(enum.Enum):
    """Type of `USE_DEFAULT`."""

    USE_DEFAULT = "USE_DEFAULT"

    def __repr__(self) -> str:
        return "USE_DEFAULT"


USE_DEFAULT: Final = UseDefault.USE_DEFAULT
"""Sentinel meaning "use the configured default" (``None`` means "no expiry")."""

TTL: TypeAlias = float | Literal[UseDefault.USE_DEFAULT] | None
"""A TTL argument: seconds, ``None`` for no expiry, or `USE_DEFAULT` for ``default_ttl``."""


class _Missing(enum.Enum):
    MISSING = "MISSING"
    NOT_LOOKED = "NOT_LOOKED"

    def __repr__(self) -> str:
        return self.value


MISSING: Final[Any] = _Missing.MISSING
"""The package's one "no value" sentinel (a cached value may be ``None``)."""

NOT_LOOKED: Final[Any] = _Missing.NOT_LOOKED
"""`LoadEngine.fast_hit`: L1 was not consulted (the call is traced, or the cache is closed)."""


def check_ttl(ttl: object) -> float | None:
    """Return ``ttl`` as seconds if it is ``None`` or a positive finite number, else raise."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < float("inf"):
        raise InvalidTTLError(
            f"ttl must be a positive number of seconds or None, got {ttl!r}", ttl=ttl
        )
    return float(ttl)
