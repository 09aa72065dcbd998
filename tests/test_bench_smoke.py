"""Benchmark smoke run: the hot paths stay within generous ratios of the raw limits.

A regression guard, not a timing test: it runs the L1, decorator, two-tier and L2 rows of
the benchmark suite (`benchmarks.suite.micro`, coherent_cache and raw limits only) briefly, in
interleaved rounds, and compares each coherent_cache figure with a raw limit measured in
the same rounds (median of the per-round ratios). Only gross regressions fail, so a
loaded machine does not: the bounds are several times what the suite measures
(docs/benchmarks.md), and absolute times are never asserted.
"""

from __future__ import annotations

import re
import secrets
import tomllib
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from benchmarks.suite import micro, tracking

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 9
BATCH_S = 0.01

# (row, coherent_cache variant, row of the raw figure, raw variant, most allowed ratio)
BOUNDS = [
    ("l1_hit", "L1 only", "l1_hit", "cachetools.TTLCache in async def", 3.0),
    (
        "two_tier_l1_hit",
        "L2 + bus running",
        "two_tier_l1_hit",
        "cachetools.TTLCache in async def",
        3.0,
    ),
    (
        "decorator_hit",
        "@cache.cached, L1 only",
        "l1_hit",
        "cachetools.TTLCache in async def",
        5.0,
    ),
    ("l2_hit_seq", "get(k, CacheTier.L2)", "l2_hit_seq", "redis.asyncio GET + orjson.loads", 3.0),
]


async def test_hot_paths_stay_within_gross_ratios_of_the_raw_limits(redis_url: str) -> None:
    """L1 hit and two-tier hit <= 3x a cachetools.TTLCache get, decorator hit <= 5x it,
    L2 read <= 3x redis.asyncio GET + orjson.loads, all in the same run; no errors."""
    rows = list(micro.SEQUENTIAL_ROWS)
    token = secrets.token_hex(4)
    async with AsyncExitStack() as stack:
        subjects = await micro.raw_subjects(stack, redis_url, token, rows)
        subjects += await micro.coherent_subjects(stack, redis_url, token, rows)
        series = await micro.measure(subjects, rounds=ROUNDS, batch_s=BATCH_S)
    records = {(r["row"], r["variant"]): r for r in micro.summarize(subjects, series)}
    assert {r["failure"] for r in records.values()} == {None}
    assert {r["errors"] for r in records.values()} == {0}
    found: dict[str, float] = {}
    for row, ours, base_row, base, bound in BOUNDS:
        rounds = micro.round_ratios(
            records[(row, ours)]["rounds_us"], records[(base_row, base)]["rounds_us"]
        )
        found[row] = rounds["ratio"] or float("inf")
        assert found[row] <= bound, (row, found[row], bound, records[(row, ours)])
    assert len(found) == len(BOUNDS)


def _pins(lines: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+).*", line)
        if match:
            pins[match[1].lower()] = match[2]
    return pins


def test_bench_extra_pins_the_peers_of_benchmarks_requirements() -> None:
    """The ``bench`` extra and benchmarks/requirements.txt pin the same peer versions, and
    neither peer is a core dependency."""
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = _pins(project["optional-dependencies"]["bench"])
    listed = _pins((ROOT / "benchmarks" / "requirements.txt").read_text().splitlines())
    assert {"cashews", "aiocache"} <= extra.keys()
    assert listed == {name: extra[name] for name in listed}
    assert {"cashews", "aiocache"} <= listed.keys()
    core = " ".join(project["dependencies"])
    assert "cashews" not in core and "aiocache" not in core and "matplotlib" not in core


async def test_tracking_row_runs_and_every_foreign_write_is_seen(redis_url: str) -> None:
    """The tracking row (`benchmarks.suite.tracking`), briefly, coherent_cache and the raw
    limits only: it runs, and every receiver dropped the key after every foreign SET (no
    miss, no failure: the row's probes still fit the tracking code). No time is asserted."""
    records = await tracking.measure(
        redis_url, trials=5, warmup=1, systems=frozenset({"coherent_cache", "raw"})
    )
    assert {r["system"] for r in records} == {"coherent_cache", "raw"}
    assert [(r["variant"], r["failure"], r["missed"]) for r in records] == [
        (r["variant"], None, 0) for r in records
    ]
    assert all(r["measured"] + r["raced"] == 5 for r in records), records
    ours = next(r for r in records if r["system"] == "coherent_cache")
    assert ours["dropped_p50"] is not None and ours["read_p50"] is not None
