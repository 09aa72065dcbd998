"""Tests of the circuit breaker guarding Redis calls, on a fake clock with seeded jitter."""

from __future__ import annotations

import random

import pytest

from coherent_cache._breaker import RATE_WINDOW, BreakerState, CircuitBreaker

from .conftest import FakeClock

SEED = 1234


class Jitter:
    """Replays the breaker's jitter draws from the same seed, to predict its deadlines."""

    def __init__(self, seed: int = SEED) -> None:
        self._random = random.Random(seed)

    def open_until(self, now: float, wait: float, max_cooldown: float) -> float:
        """The deadline the breaker computes for its next trip (same formula, same draw)."""
        jitter = 1.0 + self._random.uniform(-0.2, 0.2)
        return now + min(wait * jitter, max_cooldown)


def make(
    clock: FakeClock,
    *,
    threshold: int = 3,
    initial_cooldown: float = 1.0,
    max_cooldown: float = 10.0,
) -> CircuitBreaker:
    """A breaker on the fake clock with a seeded random source."""
    return CircuitBreaker(
        threshold=threshold,
        initial_cooldown=initial_cooldown,
        max_cooldown=max_cooldown,
        timer=clock,
        rng=random.Random(SEED),
    )


def fail(breaker: CircuitBreaker, times: int) -> list[bool]:
    """Report ``times`` failures; return what each failure() returned."""
    return [breaker.failure() for _ in range(times)]


def assert_closed_until(clock: FakeClock, breaker: CircuitBreaker, deadline: float) -> None:
    """No call is allowed just before ``deadline``; exactly one probe is allowed at it."""
    clock.now = deadline - 1e-6
    assert False is breaker.allow()
    clock.now = deadline
    assert (True, False) == (breaker.allow(), breaker.allow())
    assert BreakerState.HALF_OPEN is breaker.state


class TestClosed:
    """A closed breaker lets every call through until enough consecutive failures."""

    def test_initially_closed(self, clock: FakeClock) -> None:
        """A new breaker is closed and allows calls."""
        breaker = make(clock)
        assert (BreakerState.CLOSED, True, 0) == (breaker.state, breaker.allow(), breaker.opened)

    def test_opens_at_threshold(self, clock: FakeClock) -> None:
        """Failures below the threshold keep it closed; the threshold-th one opens it."""
        breaker = make(clock, threshold=3)
        assert [False, False] == fail(breaker, 2)
        assert (BreakerState.CLOSED, True) == (breaker.state, breaker.allow())
        assert True is breaker.failure()
        assert (BreakerState.OPEN, False, 1) == (breaker.state, breaker.allow(), breaker.opened)

    def test_success_resets_failure_count(self, clock: FakeClock) -> None:
        """Only consecutive failures count: a success in between starts over."""
        breaker = make(clock, threshold=3)
        fail(breaker, 2)
        assert False is breaker.success()
        assert [False, False] == fail(breaker, 2)
        assert BreakerState.CLOSED is breaker.state

    def test_threshold_one(self, clock: FakeClock) -> None:
        """With threshold 1 the first failure opens the breaker."""
        breaker = make(clock, threshold=1)
        assert True is breaker.failure()
        assert False is breaker.allow()


class TestOpen:
    """An open breaker refuses calls until its cooldown ends, then lets one probe through."""

    def test_one_probe_after_cooldown(self, clock: FakeClock) -> None:
        """After the (jittered) initial cooldown exactly one probe is allowed."""
        breaker = make(clock)
        jitter = Jitter()
        deadline = jitter.open_until(clock(), 1.0, 10.0)
        fail(breaker, 3)
        assert_closed_until(clock, breaker, deadline)

    def test_jitter_within_twenty_percent(self, clock: FakeClock) -> None:
        """The cooldown is the nominal one ±20 %: refused at 0.8 s, allowed by 1.2 s."""
        breaker = make(clock)
        start = clock()
        fail(breaker, 3)
        clock.now = start + 0.8 - 1e-9
        assert False is breaker.allow()
        clock.now = start + 1.2
        assert True is breaker.allow()

    def test_probe_success_closes_and_resets(self, clock: FakeClock) -> None:
        """A successful probe closes the breaker and restores the initial cooldown."""
        breaker = make(clock)
        jitter = Jitter()
        deadline = jitter.open_until(clock(), 1.0, 10.0)
        fail(breaker, 3)
        assert_closed_until(clock, breaker, deadline)
        breaker.failure(probe=True)  # failed probe: cooldown doubles to 2 s
        jitter.open_until(clock(), 2.0, 10.0)
        clock.tick(10)
        assert True is breaker.allow()
        assert True is breaker.success(probe=True)
        assert (BreakerState.CLOSED, True, True) == (
            breaker.state,
            breaker.allow(),
            breaker.allow(),
        )
        # Reset: it takes the full threshold to open again, and the cooldown is 1 s again.
        assert [False, False, True] == fail(breaker, 3)
        assert_closed_until(clock, breaker, jitter.open_until(clock(), 1.0, 10.0))

    def test_probe_failure_doubles_cooldown(self, clock: FakeClock) -> None:
        """Each failed probe doubles the cooldown: 1, 2, 4, 8 s, then capped at 10 s."""
        breaker = make(clock, initial_cooldown=1.0, max_cooldown=10.0)
        jitter = Jitter()
        deadline = jitter.open_until(clock(), 1.0, 10.0)
        fail(breaker, 3)
        for wait in [2.0, 4.0, 8.0, 10.0, 10.0]:
            assert_closed_until(clock, breaker, deadline)
            assert False is breaker.failure(probe=True)  # the probe failed; already open
            assert BreakerState.OPEN is breaker.state
            deadline = jitter.open_until(clock(), wait, 10.0)
        assert_closed_until(clock, breaker, deadline)

    def test_cooldown_never_exceeds_max(self, clock: FakeClock) -> None:
        """Even with jitter, an open breaker probes again within max_cooldown."""
        breaker = make(clock, initial_cooldown=4.0, max_cooldown=5.0)
        fail(breaker, 3)
        for _ in range(10):
            clock.tick(5.0)
            assert True is breaker.allow()
            breaker.failure(probe=True)

    def test_initial_cooldown_capped(self, clock: FakeClock) -> None:
        """An initial cooldown above max_cooldown is cut to max_cooldown."""
        breaker = make(clock, initial_cooldown=30.0, max_cooldown=2.0)
        assert 2.0 == breaker.initial_cooldown

    def test_release_allows_new_probe(self, clock: FakeClock) -> None:
        """release() after a cancelled probe lets the next call probe at once."""
        breaker = make(clock)
        jitter = Jitter()
        deadline = jitter.open_until(clock(), 1.0, 10.0)
        fail(breaker, 3)
        assert_closed_until(clock, breaker, deadline)
        breaker.release(probe=True)
        assert BreakerState.OPEN is breaker.state
        assert (True, False) == (breaker.allow(), breaker.allow())

    def test_release_without_probe_is_noop(self, clock: FakeClock) -> None:
        """release() when no probe is running changes nothing."""
        breaker = make(clock)
        breaker.release()
        assert (BreakerState.CLOSED, True) == (breaker.state, breaker.allow())
        fail(breaker, 3)
        breaker.release()
        assert (BreakerState.OPEN, False) == (breaker.state, breaker.allow())

    def test_straggler_failure_does_not_double_cooldown(self, clock: FakeClock) -> None:
        """A failure reported while open but not by a probe leaves the cooldown as it is."""
        # Calls already in flight when the breaker opens fail later; only failed probes
        # double the cooldown, so such stragglers must not push it towards max_cooldown.
        breaker = make(clock, initial_cooldown=1.0, max_cooldown=60.0)
        fail(breaker, 3)
        fail(breaker, 5)  # five calls that were in flight fail after the breaker opened
        clock.tick(1.2)
        assert True is breaker.allow()


class TestTrip:
    """trip() opens the breaker directly."""

    @pytest.mark.parametrize("cooldown", [0.5, 3.0])
    def test_trip(self, clock: FakeClock, cooldown: float) -> None:
        """trip(cooldown) opens a closed breaker for that long (with jitter) and counts it."""
        breaker = make(clock)
        jitter = Jitter()
        breaker.trip(cooldown)
        assert (BreakerState.OPEN, 1) == (breaker.state, breaker.opened)
        assert_closed_until(clock, breaker, jitter.open_until(clock(), cooldown, 10.0))

    def test_opened_counts_transitions(self, clock: FakeClock) -> None:
        """opened counts closed → open transitions, not re-trips of an open breaker."""
        breaker = make(clock)
        fail(breaker, 3)
        breaker.trip()
        clock.tick(100)
        breaker.allow()
        breaker.success()
        fail(breaker, 3)
        assert 2 == breaker.opened


class TestFailureRate:
    """A flapping server (failures interleaved with successes) opens the breaker too."""

    def test_alternating_failures_open_after_a_full_window(self, clock: FakeClock) -> None:
        """Every other call failing never reaches 3 consecutive failures, yet opens it
        once the last RATE_WINDOW calls are half failures."""
        breaker = make(clock)
        opened = []
        for _ in range(RATE_WINDOW // 2):
            breaker.success()
            opened.append(breaker.failure())
        assert [False] * (RATE_WINDOW // 2 - 1) + [True] == opened
        assert BreakerState.OPEN is breaker.state

    def test_rare_failures_keep_it_closed(self, clock: FakeClock) -> None:
        """One failure in four stays under the rate: the breaker stays closed."""
        breaker = make(clock)
        for _ in range(4 * RATE_WINDOW):
            for _ in range(3):
                breaker.success()
            assert False is breaker.failure()
        assert BreakerState.CLOSED is breaker.state

    def test_window_restarts_after_closing(self, clock: FakeClock) -> None:
        """Outcomes from before an outage do not count after the breaker closed again."""
        breaker = make(clock)
        for _ in range(RATE_WINDOW // 2):
            breaker.success()
            breaker.failure()
        clock.tick(100)
        assert True is breaker.allow()
        assert True is breaker.success(probe=True)
        assert False is breaker.failure()  # one failure after closing: far below the rate
        assert BreakerState.CLOSED is breaker.state
