"""The jittered exponential backoff of every reconnect and restart loop."""

from __future__ import annotations

import random

__all__ = ("backoff_delay",)


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): ``base * 2**attempt`` up to
    ``cap``, then scaled by a random factor in [0.5, 1] so many waiters do not retry in step.
    """
    return float(min(cap, base * 2 ** min(attempt, 16)) * rng.uniform(0.5, 1.0))
