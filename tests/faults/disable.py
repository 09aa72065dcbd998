"""Switch one resilience mechanism off, to prove the fault suite notices (tests only).

``COHERENT_CACHE_TEST_DISABLE=breaker|bus_flush|fill_guard`` (comma-separated for several)
is read by ``tests/faults/conftest.py`` (the pytest process) and by ``tests/support/worker.py``
(worker processes inherit the environment). Each mechanism is patched at class level,
before any manager is built. ``.ci/fault-teeth`` runs the fault suite once
per mechanism and expects failures. Never set it outside those checks.
"""

from __future__ import annotations

import os
from typing import Any, Final

__all__ = ["ENV", "MECHANISMS", "apply", "apply_from_env"]

ENV: Final = "COHERENT_CACHE_TEST_DISABLE"
MECHANISMS: Final = ("breaker", "bus_flush", "fill_guard")


def _disable_breaker() -> None:
    from coherent_cache._breaker import BreakerState, CircuitBreaker

    def allow(self: CircuitBreaker) -> bool:
        return True

    def failure(self: CircuitBreaker, *, probe: bool = False) -> bool:
        return False

    def trip(self: CircuitBreaker, cooldown: float | None = None) -> None:
        self.state = BreakerState.CLOSED

    CircuitBreaker.allow = allow  # type: ignore[method-assign]
    CircuitBreaker.failure = failure  # type: ignore[method-assign]
    CircuitBreaker.trip = trip  # type: ignore[method-assign]


def _disable_bus_flush() -> None:
    from coherent_cache.l1 import InMemoryCache
    from coherent_cache.manager import CacheManager

    def distrust(self: InMemoryCache, since: float, max_stale: float) -> None:
        return None

    def on_subscribed(self: CacheManager) -> None:
        self.l1.trust()

    InMemoryCache.distrust = distrust  # type: ignore[method-assign]
    CacheManager._on_bus_subscribed = on_subscribed  # type: ignore[method-assign]


def _disable_fill_guard() -> None:
    from coherent_cache import multitier

    class NeverStale:
        """A fill token that ignores invalidations."""

        __slots__ = ()

        @property
        def stale(self) -> bool:
            return False

        @stale.setter
        def stale(self, value: bool) -> None:
            return None

    setattr(multitier, "FillToken", NeverStale)  # noqa: B010 - module attribute patch


_PATCHES: Final[dict[str, Any]] = {
    "breaker": _disable_breaker,
    "bus_flush": _disable_bus_flush,
    "fill_guard": _disable_fill_guard,
}


def apply(names: str) -> list[str]:
    """Disable the comma-separated mechanisms; return their names."""
    done = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in _PATCHES:
            raise ValueError(f"{ENV}: unknown mechanism {name!r}, expected one of {MECHANISMS}")
        _PATCHES[name]()
        done.append(name)
    return done


def apply_from_env() -> list[str]:
    """`apply` what ``COHERENT_CACHE_TEST_DISABLE`` names (nothing when unset)."""
    return apply(os.environ.get(ENV, ""))
