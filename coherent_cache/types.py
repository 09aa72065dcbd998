"""Shared type aliases and sentinels of the public API."""

from __future__ import annotations

import enum
from typing import Final, Literal, TypeAlias

__all__ = ["TTL", "USE_DEFAULT", "UseDefault"]


class UseDefault(enum.Enum):
    """Type of `USE_DEFAULT`."""

    USE_DEFAULT = "USE_DEFAULT"

    def __repr__(self) -> str:
        return "USE_DEFAULT"


USE_DEFAULT: Final = UseDefault.USE_DEFAULT
"""Sentinel meaning "use the configured default" (``None`` means "no expiry")."""

TTL: TypeAlias = float | Literal[UseDefault.USE_DEFAULT] | None
"""A TTL argument: seconds, ``None`` for no expiry, or `USE_DEFAULT` for ``default_ttl``."""
