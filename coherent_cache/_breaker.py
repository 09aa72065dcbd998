"""A small circuit breaker: stop calling a dead Redis, probe it again after a growing cooldown."""

from __future__ import annotations

import enum
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Final, final

__all__ = ()

RATE_WINDOW: Final = 20
"""Calls remembered for the failure-rate trip."""
FAILURE_RATE: Final = 0.5
"""The breaker also opens once this share of the last `RATE_WINDOW` calls failed (with at
least `RATE_WINDOW` calls seen), so a flapping server that answers every other call is not
hammered forever by a consecutive-failure count that keeps being reset."""


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@final
class CircuitBreaker:
    """Closed → open after ``threshold`` consecutive failures, or when ``failure_rate`` of
    the last ``rate_window`` calls failed → half-open probe after a cooldown.

    The cooldown starts at ``initial_cooldown`` and doubles (with ±20 % jitter, so replicas
    do not probe in step) on every failed probe, up to ``max_cooldown``. One success closes
    the breaker and resets the cooldown. While half-open, exactly one call is let through:
    the call for which `allow` returned True and left the state `HALF_OPEN` is the probe,
    and its caller reports ``success(probe=True)``, ``failure(probe=True)`` or
    ``release(probe=True)`` (cancelled) to end it.
    """

    __slots__ = (
        "_cooldown",
        "_failures",
        "_open_until",
        "_outcomes",
        "_probing",
        "_random",
        "_timer",
        "failure_rate",
        "initial_cooldown",
        "max_cooldown",
        "opened",
        "state",
        "threshold",
    )

    def __init__(
        self,
        *,
        threshold: int,
        max_cooldown: float,
        initial_cooldown: float = 0.1,
        timer: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        failure_rate: float = FAILURE_RATE,
        rate_window: int = RATE_WINDOW,
    ) -> None:
        self.threshold = threshold
        self.failure_rate = failure_rate
        self._outcomes: deque[bool] = deque(maxlen=rate_window)
        self.max_cooldown = max_cooldown
        self.initial_cooldown = min(initial_cooldown, max_cooldown)
        self.state = BreakerState.CLOSED
        self.opened = 0
        self._timer = timer
        self._random = rng or random.Random()
        self._failures = 0
        self._cooldown = self.initial_cooldown
        self._open_until = 0.0
        self._probing = False

    def allow(self) -> bool:
        """Whether a call may go to the server now (a True in open state starts the probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self._probing or self._timer() < self._open_until:
            return False
        self.state = BreakerState.HALF_OPEN
        self._probing = True
        return True

    def success(self, *, probe: bool = False) -> bool:
        """Record a successful call; return True if this closed an open breaker.

        Any answer from the server proves it is up, so a straggler's success closes too.
        """
        self._failures = 0
        if probe:
            self._probing = False
        if self.state is BreakerState.CLOSED:
            self._outcomes.append(True)
            return False
        self._outcomes.clear()
        self.state = BreakerState.CLOSED
        self._probing = False
        self._cooldown = self.initial_cooldown
        return True

    def failure(self, *, probe: bool = False) -> bool:
        """Record a failed call; return True if this opened the breaker.

        A failed probe re-opens the breaker with a doubled cooldown. A failure of a call
        that was sent before the breaker opened (a straggler) changes nothing.
        """
        if probe and self._probing:
            self._probing = False
            self._cooldown = min(self._cooldown * 2, self.max_cooldown)
            self.trip(self._cooldown)
            return False
        if self.state is not BreakerState.CLOSED:
            return False
        self._failures += 1
        self._outcomes.append(False)
        if self._failures < self.threshold and not self._rate_exceeded():
            return False
        self.trip(self._cooldown)
        return True

    def _rate_exceeded(self) -> bool:
        outcomes = self._outcomes
        if len(outcomes) < (outcomes.maxlen or 0):
            return False
        return outcomes.count(False) >= self.failure_rate * len(outcomes)

    def trip(self, cooldown: float | None = None) -> None:
        """Open the breaker now, for ``cooldown`` seconds (default: the current cooldown)."""
        if self.state is BreakerState.CLOSED:
            self.opened += 1
        wait = self._cooldown if cooldown is None else cooldown
        jitter = 1.0 + self._random.uniform(-0.2, 0.2)
        self.state = BreakerState.OPEN
        self._open_until = self._timer() + min(wait * jitter, self.max_cooldown)

    def release(self, *, probe: bool = False) -> None:
        """End a call whose outcome is unknown (cancelled); a cancelled probe allows a new one."""
        if probe and self._probing:
            self._probing = False
            self.state = BreakerState.OPEN
