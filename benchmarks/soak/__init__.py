"""The soak test (not in CI): ``python -m benchmarks.soak --duration 600`` (see `__main__`).

Instances in separate processes under load for minutes, one fault per segment, every
segment's log through the fault suite's stale-read checker; writes
benchmarks/results/soak.{json,md}. It lives with the benchmarks, not the fault tests: it is
a long run with a report (operations, RSS over time), not a pass/fail test pytest collects,
and it reuses the fault suite's load, checker and bounds and the tests' worker and proxy.
"""
