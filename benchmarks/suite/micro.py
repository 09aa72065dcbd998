"""The per-operation rows of the suite: L1 hit, decorator hit, two-tier hit, L2 reads.

Every row has subjects: the raw limits (``system="raw"``), coherent_cache, and the peers
(`benchmarks.suite.peers`, added by ``python -m benchmarks`` when cashews and aiocache are
installed). A subject runs ``n`` units (one call, or one wave of concurrent calls) and
returns how many of them failed; `measure` calibrates each subject to a batch length,
then runs one batch of every subject per round, in a rotating order, so that a slow
phase of a shared machine hits all systems alike. Each row's ratios are taken to its
``baseline`` subject, a raw limit measured in the same run.

This module imports neither peer, so the CI smoke test (tests/test_bench_smoke.py) can
use it with the test extra alone.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import gc
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.lowlevel
import cachetools
import orjson
from pydantic import BaseModel
from redis.asyncio import Redis

from benchmarks.suite._common import ratio, spread
from coherent_cache import CacheConfig, CacheManager, CacheTier

VALUE: Final[dict[str, Any]] = {"id": 7, "name": "user-7", "active": True}
TTL: Final = 600
HIT_ARG: Final = 7
KEYS: Final = 1000
"""Keys stored in L2 by every system (the concurrent rows read k0..k999)."""
RAW_TIMEOUT: Final = 0.5
"""socket_timeout of the raw redis.asyncio client: coherent_cache's operation_timeout."""


class Profile(BaseModel):
    """The 20-field model of the ``decorator_hit_model`` row (a typical API response)."""

    id: int
    name: str
    email: str = "user@example.com"
    active: bool = True
    age: int = 33
    score: float = 0.75
    country: str = "NL"
    city: str = "Utrecht"
    street: str = "Oudegracht 1"
    zip_code: str = "3511"
    phone: str = "+31 30 000 0000"
    created: datetime.datetime = datetime.datetime(2026, 1, 2, 3, 4, 5)
    updated: datetime.datetime = datetime.datetime(2026, 2, 3, 4, 5, 6)
    plan: str = "pro"
    seats: int = 5
    tags: list[str] = ["a", "b", "c"]
    locale: str = "nl-NL"
    timezone: str = "Europe/Amsterdam"
    verified: bool = True
    notes: str | None = None


async def profile(x: int) -> Profile:
    """The function of the ``decorator_hit_model`` row, for every system."""
    return Profile(id=x, name=f"user-{x}")


Runner = Callable[[int], Awaitable[int]]
"""Run ``n`` units; return how many operations failed or returned a wrong value."""


@dataclass(frozen=True)
class Row:
    """One row of the issue's table."""

    key: str
    title: str
    unit: str
    target: str


ROWS: Final[dict[str, Row]] = {
    r.key: r
    for r in (
        Row("l1_hit", "L1 hit, `await cache.get(k)`", "µs/op", "≤ 1.35× cachetools"),
        Row("l1_hit_copy", "L1 hit, copy-on-read on", "µs/op", "reported"),
        Row("decorator_hit", "decorator hit, `await f(7)`", "µs/op", "≤ 2.5 µs"),
        Row(
            "decorator_hit_model",
            "decorator hit returning a 20-field Pydantic model",
            "µs/op",
            "≤ 2.5 µs",
        ),
        Row(
            "two_tier_l1_hit",
            "two-tier L1 hit, bus running",
            "µs/op",
            "same as L1-only",
        ),
        Row(
            "l2_hit_seq",
            "L2 hit, sequential, L1 bypassed",
            "µs/op",
            "≤ 1.1× raw GET + orjson.loads",
        ),
        Row(
            "l2_conc_100",
            "L2 gets, 100 concurrent tasks",
            "µs/op",
            "≤ 0.5× redis.asyncio default pool",
        ),
        Row(
            "l2_conc_1000",
            "L2 gets, 1,000 concurrent tasks",
            "µs/op",
            "0 errors",
        ),
    )
}
MICRO_ROWS: Final = tuple(ROWS)
SEQUENTIAL_ROWS: Final = ("l1_hit", "decorator_hit", "two_tier_l1_hit", "l2_hit_seq")


@dataclass
class Subject:
    """One system (or raw limit) in one row."""

    row: str
    system: str
    variant: str
    run: Runner
    ops_per_unit: int = 1
    baseline: bool = False
    max_units: int = 200_000
    note: str = ""

    @property
    def ident(self) -> str:
        """Unique name: row/system/variant."""
        return f"{self.row}/{self.system}/{self.variant}"


@dataclass
class Series:
    """The batches of one subject."""

    units: int = 0
    us_per_op: list[float] = field(default_factory=list)
    errors: int = 0
    ops: int = 0
    failure: str | None = None


def sequential(op: Callable[[Any], Awaitable[Any]], arg: Any) -> Runner:
    """``n`` awaits of ``op(arg)``, one after the other."""

    async def run(n: int) -> int:
        for _ in itertools.repeat(None, n):
            await op(arg)
        return 0

    return run


class concurrent:
    """``n`` waves of ``len(args)`` tasks, each awaiting ``op(arg)``; counts wrong results
    and keeps the first few errors (``samples``) for the report."""

    def __init__(
        self, op: Callable[[Any], Awaitable[Any]], args: Sequence[Any], expected: Any = VALUE
    ) -> None:
        self.op = op
        self.args = args
        self.expected = expected
        self.samples: list[str] = []

    async def __call__(self, n: int) -> int:
        errors = 0
        for _ in range(n):
            results = await asyncio.gather(*[self.op(a) for a in self.args], return_exceptions=True)
            wrong = [r for r in results if r != self.expected]
            errors += len(wrong)
            for r in wrong[: max(0, 3 - len(self.samples))]:
                self.samples.append(repr(r)[:200])
        return errors


def key_names(n: int) -> list[str]:
    """``k0`` .. ``k<n-1>``."""
    return [f"k{i}" for i in range(n)]


def concurrency(row: str) -> int:
    """Tasks per wave of a concurrent row."""
    return 1000 if row == "l2_conc_1000" else 100


async def raw_subjects(
    stack: AsyncExitStack, url: str, token: str, rows: Sequence[str]
) -> list[Subject]:
    """The raw limits of every row, in the same process and event loop as the systems."""
    subjects: list[Subject] = []
    plain: dict[str, Any] = {"hot": VALUE}
    ttl_cache: cachetools.TTLCache[str, Any] = cachetools.TTLCache(maxsize=1000, ttl=TTL)
    ttl_cache["hot"] = VALUE

    async def dict_get(key: str) -> Any:
        return plain.get(key)

    async def ttl_get(key: str) -> Any:
        return ttl_cache.get(key)

    async def ttl_get_copy(key: str) -> Any:
        return copy.deepcopy(ttl_cache.get(key))

    missing = object()
    memo: dict[int, Any] = {}
    memo_ttl: cachetools.TTLCache[int, Any] = cachetools.TTLCache(maxsize=1000, ttl=TTL)

    async def user(x: int) -> dict[str, Any]:
        return {"id": x, "name": f"user-{x}", "active": True}

    async def dict_memo(x: int) -> Any:
        value = memo.get(x, missing)
        if value is missing:
            value = memo[x] = await user(x)
        return value

    async def ttl_memo(x: int) -> Any:
        value = memo_ttl.get(x, missing)
        if value is missing:
            value = memo_ttl[x] = await user(x)
        return value

    model_memo: dict[int, Any] = {}

    async def dict_memo_model(x: int) -> Any:
        value = model_memo.get(x, missing)
        if value is missing:
            value = model_memo[x] = await profile(x)
        return value

    for row in rows:
        if row in ("l1_hit", "two_tier_l1_hit"):
            subjects += [
                Subject(row, "raw", "dict in async def", sequential(dict_get, "hot")),
                Subject(
                    row,
                    "raw",
                    "cachetools.TTLCache in async def",
                    sequential(ttl_get, "hot"),
                    baseline=True,
                ),
            ]
        elif row == "l1_hit_copy":
            subjects += [
                Subject(row, "raw", "cachetools.TTLCache in async def", sequential(ttl_get, "hot")),
                Subject(
                    row,
                    "raw",
                    "cachetools.TTLCache + copy.deepcopy",
                    sequential(ttl_get_copy, "hot"),
                    baseline=True,
                ),
            ]
        elif row == "decorator_hit_model":
            await dict_memo_model(HIT_ARG)
            subjects.append(
                Subject(
                    row, "raw", "dict memo", sequential(dict_memo_model, HIT_ARG), baseline=True
                )
            )
        elif row == "decorator_hit":
            await dict_memo(HIT_ARG)
            await ttl_memo(HIT_ARG)
            subjects += [
                Subject(row, "raw", "dict memo", sequential(dict_memo, HIT_ARG), baseline=True),
                Subject(row, "raw", "cachetools.TTLCache memo", sequential(ttl_memo, HIT_ARG)),
            ]
    l2_rows = [r for r in rows if r.startswith("l2_")]
    if not l2_rows:
        return subjects
    # One client per row, so a row's broken pool (1,000 tasks) cannot slow the others.
    payload = orjson.dumps(VALUE)
    names = [f"raw-{token}:{k}" for k in key_names(KEYS)]
    for row in l2_rows:
        client = Redis.from_url(url, socket_timeout=RAW_TIMEOUT, socket_connect_timeout=5)
        stack.push_async_callback(close_client, client)
        if row == l2_rows[0]:
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    _ = pipe.set(name, payload, ex=TTL)
                await pipe.execute()

        async def get_loads(key: str, client: Redis = client) -> Any:
            raw = await client.get(key)
            return None if raw is None else orjson.loads(raw)

        if row == "l2_hit_seq":
            subjects.append(
                Subject(
                    row,
                    "raw",
                    "redis.asyncio GET + orjson.loads",
                    sequential(get_loads, names[0]),
                    baseline=True,
                    max_units=20_000,
                )
            )
            continue
        width = concurrency(row)
        wave = names[:width]

        async def pipelined(n: int, client: Redis = client, wave: list[str] = wave) -> int:
            errors = 0
            for _ in range(n):
                async with client.pipeline(transaction=False) as pipe:
                    for name in wave:
                        _ = pipe.get(name)
                    replies = await pipe.execute(raise_on_error=False)
                errors += sum(
                    1 for r in replies if not isinstance(r, bytes) or orjson.loads(r) != VALUE
                )
            return errors

        subjects += [
            Subject(
                row,
                "raw",
                f"pipeline of {width} GETs",
                pipelined,
                ops_per_unit=width,
                baseline=row == "l2_conc_1000",
                max_units=2000,
            ),
            Subject(
                row,
                "raw",
                "redis.asyncio default pool",
                concurrent(get_loads, wave),
                ops_per_unit=width,
                baseline=row == "l2_conc_100",
                max_units=2000,
            ),
        ]
    return subjects


async def close_client(client: Redis) -> None:
    """Close a raw client (bounded, shielded)."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        await client.aclose()


async def coherent_subjects(
    stack: AsyncExitStack, url: str, token: str, rows: Sequence[str]
) -> list[Subject]:
    """coherent_cache, default configuration: an L1-only manager and a multi-tier one."""
    subjects: list[Subject] = []
    single = CacheManager(CacheConfig(redis_url=None, namespace=f"bench-{token}-l1"))
    multi = CacheManager(CacheConfig(redis_url=url, namespace=f"bench-{token}-mt"))
    copying = CacheManager(
        CacheConfig(redis_url=None, namespace=f"bench-{token}-cp", l1_copy_on_read=True)
    )
    for manager in (single, multi, copying):
        with anyio.fail_after(30):
            await manager.start()
        stack.push_async_callback(manager.stop)
    await single.set("hot", VALUE, TTL)
    await multi.set("hot", VALUE, TTL)
    await copying.set("hot", VALUE, TTL)

    calls = 0

    async def user(x: int) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"id": x, "name": f"user-{x}", "active": True}

    decorated = single.cached(ttl=TTL, key_prefix="user")(user)
    l2_rows = [r for r in rows if r.startswith("l2_")]
    if l2_rows:
        for name in key_names(KEYS):
            await multi.set(name, VALUE, TTL)

    async def l2_get(key: str) -> Any:
        return await multi.get(key, CacheTier.L2)

    for row in rows:
        if row == "l1_hit":
            subjects.append(
                Subject(row, "coherent_cache", "L1 only", sequential(single.get, "hot"))
            )
        elif row == "l1_hit_copy":
            subjects.append(
                Subject(
                    row,
                    "coherent_cache",
                    "L1 only, l1_copy_on_read=True",
                    sequential(copying.get, "hot"),
                )
            )
        elif row == "decorator_hit_model":
            typed = single.cached(ttl=TTL, key_prefix="profile")(profile)
            await typed(HIT_ARG)
            subjects.append(
                Subject(
                    row,
                    "coherent_cache",
                    "@cache.cached -> Profile, L1 only",
                    sequential(typed, HIT_ARG),
                )
            )
        elif row == "decorator_hit":
            await decorated(HIT_ARG)
            subjects.append(
                Subject(
                    row, "coherent_cache", "@cache.cached, L1 only", sequential(decorated, HIT_ARG)
                )
            )
        elif row == "two_tier_l1_hit":
            subjects.append(
                Subject(row, "coherent_cache", "L2 + bus running", sequential(multi.get, "hot"))
            )
        elif row == "l2_hit_seq":
            subjects.append(
                Subject(
                    row,
                    "coherent_cache",
                    "get(k, CacheTier.L2)",
                    sequential(l2_get, "k0"),
                    max_units=20_000,
                )
            )
        elif row.startswith("l2_conc"):
            width = concurrency(row)
            subjects.append(
                Subject(
                    row,
                    "coherent_cache",
                    "get(k, CacheTier.L2)",
                    concurrent(l2_get, key_names(width)),
                    ops_per_unit=width,
                    max_units=2000,
                )
            )
    return subjects


# -- measuring -------------------------------------------------------------------------


async def timed(subject: Subject, units: int, limit: float) -> tuple[float, int]:
    """Seconds for ``units`` units of ``subject`` and the errors counted."""
    with anyio.fail_after(limit):
        start = time.perf_counter()
        errors = await subject.run(units)
        return time.perf_counter() - start, errors


async def calibrate(subject: Subject, batch_s: float, limit: float) -> int:
    """Units per batch for about ``batch_s`` seconds (the runs double as warm-up)."""
    n = 1
    while True:
        elapsed, _ = await timed(subject, n, limit)
        if elapsed >= batch_s / 4 or n >= subject.max_units:
            break
        n = min(subject.max_units, n * 2)
    again, _ = await timed(subject, n, limit)  # one slow first run must not set the size
    elapsed = min(elapsed, again)
    return max(1, min(subject.max_units, round(batch_s * n / max(elapsed, 1e-9))))


async def measure(
    subjects: list[Subject],
    *,
    rounds: int,
    batch_s: float,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Series]:
    """Calibrate every subject, then ``rounds`` rounds of one batch each, order rotating.

    The harness's own heap (every subject's clients and caches, the peers' libraries) is
    frozen first (``gc.freeze()``, as services do after startup): otherwise each full
    collection that the 1,000-task rows' allocations trigger scans it all, and the
    1,000-task rows measured the size of this process more than the systems (the raw
    default pool and coherent_cache alike 1.1-1.2x the pipeline with the collector off,
    1.8-1.9x with it on; docs/benchmarks.md, "Performance round 2"). Objects made while
    measuring are collected as usual.
    """
    limit = max(10.0, 50 * batch_s)
    series: dict[str, Series] = {}
    gc.collect()
    gc.freeze()
    try:
        return await _measure(
            subjects, series, rounds=rounds, batch_s=batch_s, limit=limit, progress=progress
        )
    finally:
        gc.unfreeze()


async def _measure(
    subjects: list[Subject],
    series: dict[str, Series],
    *,
    rounds: int,
    batch_s: float,
    limit: float,
    progress: Callable[[str], None] | None,
) -> dict[str, Series]:
    for subject in subjects:
        s = series[subject.ident] = Series()
        try:
            s.units = await calibrate(subject, batch_s, limit)
        except Exception as exc:
            s.failure = f"{type(exc).__name__}: {exc}"
    live = [x for x in subjects if series[x.ident].failure is None]
    for n in range(rounds):
        if progress:
            progress(f"round {n + 1}/{rounds}")
        shift = n % max(1, len(live))
        gc.collect()  # a full collection per round; young generations before each batch
        for subject in live[shift:] + live[:shift]:
            s = series[subject.ident]
            if s.failure is not None:
                continue
            await anyio.lowlevel.checkpoint()
            gc.collect(1)
            try:
                elapsed, errors = await timed(subject, s.units, limit)
            except Exception as exc:
                s.failure = f"{type(exc).__name__}: {exc}"
                continue
            ops = s.units * subject.ops_per_unit
            s.us_per_op.append(elapsed / ops * 1e6)
            s.errors += errors
            s.ops += ops
    return series


def summarize(subjects: list[Subject], series: dict[str, Series]) -> list[dict[str, Any]]:
    """One record per subject: µs/op median and spread over rounds, errors, ratio to the
    row's baseline (median / baseline median, same run)."""
    base: dict[str, list[float]] = {}
    for subject in subjects:
        if subject.baseline:
            base[subject.row] = series[subject.ident].us_per_op
    records: list[dict[str, Any]] = []
    for subject in subjects:
        s = series[subject.ident]
        stats = spread(s.us_per_op)
        records.append(
            {
                "row": subject.row,
                "system": subject.system,
                "variant": subject.variant,
                "baseline": subject.baseline,
                "unit": "µs/op",
                **stats,
                **round_ratios(s.us_per_op, base.get(subject.row, [])),
                "errors": s.errors,
                "ops": s.ops,
                "units_per_batch": s.units,
                "ops_per_unit": subject.ops_per_unit,
                "failure": s.failure,
                "error_samples": list(getattr(subject.run, "samples", [])),
                "note": subject.note,
                "rounds_us": [round(x, 4) for x in s.us_per_op],
            }
        )
    return records


def round_ratios(values: list[float], base: list[float]) -> dict[str, float | None]:
    """The ratio to the baseline: the median of the per-round ratios when both have every
    round (a slow phase of the machine then hits numerator and denominator alike), else
    the ratio of the medians; with the p25 and p75 of the per-round ratios."""
    if values and len(values) == len(base):
        per_round = [v / b for v, b in zip(values, base, strict=True) if b > 0]
        stats = spread(per_round)
        return {"ratio": stats["median"], "ratio_p25": stats["p25"], "ratio_p75": stats["p75"]}
    median = spread(values)["median"]
    return {
        "ratio": ratio(median, spread(base)["median"] if base else None),
        "ratio_p25": None,
        "ratio_p75": None,
    }
