"""Decorator benchmark: microseconds per call of a cached async function, against peers.

Run from the repository root, in the project's virtualenv, with the peers installed::

    pip install -r benchmarks/requirements.txt      # cashews and aiocache, benchmark only
    python -m benchmarks.standalone.decorators      # private valkey-server, about 30-45 s
    python -m benchmarks.standalone.decorators --redis-url redis://127.0.0.1:6379/0

One function, ``async def user(x) -> {"id": x, "name": "user-<x>", "active": True}``, is
cached by each implementation, in one process and one event loop:

- **hit**: ``await f(7)`` after a first call filled the cache;
- **miss + fill**: ``await f(x)`` with a new ``x`` every call: the cache misses, the
  function runs once and its result is stored.

Implementations: a plain dict memo inside an ``async def`` (the limit), coherent_cache's
``@cache.cached`` (multi-tier manager with L2 and bus running, and L1 only), cashews'
``@cache`` and aiocache's ``@cached`` (in-memory and Redis backends, default settings
and without their per-call protection: cashews ``protected=False``, aiocache
``timeout=None``), plus reference rows that split coherent_cache's hit into layers
(``cache_key``, ``get``, ``get_or_set``) and a bare redis-py round trip. Each case runs
``--repeats`` batches of N calls (N calibrated to about ``--batch-ms``), the batches of
all cases interleaved so that slow phases of a shared machine hit every case alike; the
table gives the median of the per-batch means and their min and max. Prints a table and
writes ``benchmarks/results/decorators.json``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import importlib.util
import itertools
import logging
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import unquote, urlparse

import anyio
import anyio.lowlevel
import orjson
import structlog
from redis.asyncio import Redis

import coherent_cache
from coherent_cache import CacheConfig, CacheManager
from coherent_cache.testing import RedisServer, find_server_binary

ROOT: Final = Path(__file__).resolve().parents[2]
RESULTS: Final = ROOT / "benchmarks" / "results" / "decorators.json"
PEERS: Final = ("cashews", "aiocache")
INSTALL_HINT: Final = (
    "benchmarks/standalone/decorators.py compares coherent_cache with cashews and aiocache, and "
    "{missing} not installed. Install them (benchmark only, not a project dependency):\n"
    "    pip install cashews aiocache\n"
    "or the versions measured in docs/benchmarks.md:\n"
    "    pip install -r benchmarks/requirements.txt"
)
TTL: Final = 600
HIT_ARG: Final = 7
MAX_CALLS: Final = {"hit": 200_000, "miss": 20_000}
"""Calls per batch at most: misses keep every result, so their batches stay smaller."""

Phase = Literal["hit", "miss"]
PHASES: Final[tuple[Phase, ...]] = ("hit", "miss")
Group = Literal["memory", "redis"]
Call = Callable[[Any], Awaitable[Any]]
GROUPS: Final[dict[Phase, dict[Group, str]]] = {
    "hit": {
        "memory": "in-process (L1) hit",
        "redis": "Redis-backend hit: every hit is a round trip",
    },
    "miss": {
        "memory": "in-process miss + fill",
        "redis": "miss + fill through Redis (GET misses, then SET)",
    },
}


def value_of(x: int) -> dict[str, Any]:
    """What the cached function returns for ``x``."""
    return {"id": x, "name": f"user-{x}", "active": True}


@dataclass
class Calls:
    """How many times a loader ran."""

    n: int = 0


def make_loader(calls: Calls) -> Callable[[int], Awaitable[dict[str, Any]]]:
    """A fresh copy of the cached function (each implementation decorates its own)."""

    async def user(x: int) -> dict[str, Any]:
        calls.n += 1
        return {"id": x, "name": f"user-{x}", "active": True}

    return user


def dict_memo(func: Callable[[int], Awaitable[Any]]) -> Call:
    """The limit: a dict lookup inside an ``async def``, no TTL, no eviction."""
    memo: dict[int, Any] = {}
    missing = object()

    async def memoised(x: int) -> Any:
        value = memo.get(x, missing)
        if value is missing:
            value = memo[x] = await func(x)
        return value

    return memoised


@dataclass
class Subject:
    """One implementation (or reference operation) and how to call it.

    ``fn(arg)`` is awaited once per call; ``hit_arg`` is the argument of every hit call,
    ``fresh(n)`` makes ``n`` arguments never used before (the miss calls).
    """

    name: str
    label: str
    role: Literal["limit", "ours", "peer", "reference"]
    library: str
    fn: Call
    hit_group: Group | None
    miss_group: Group | None
    calls: Calls = field(default_factory=Calls)
    hit_arg: Any = HIT_ARG
    key_of: Callable[[int], Any] | None = None
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1_000_000))
    expected: Any = field(default_factory=lambda: value_of(HIT_ARG))

    def group(self, phase: Phase) -> Group | None:
        """The table section of this subject in ``phase`` (None: not measured there)."""
        return self.hit_group if phase == "hit" else self.miss_group

    def fresh(self, n: int) -> list[Any]:
        """``n`` arguments never passed before."""
        numbers = itertools.islice(self.counter, n)
        return [self.key_of(i) for i in numbers] if self.key_of else list(numbers)


# -- the implementations ---------------------------------------------------------------


async def coherent_subjects(stack: AsyncExitStack, url: str, token: str) -> list[Subject]:
    """coherent_cache: a multi-tier manager (L2 + bus) and an L1-only one, started."""
    subjects: list[Subject] = []
    managers: dict[str, CacheManager] = {}
    for tier, redis_url in (("multi_tier", url), ("l1_only", None)):
        config = CacheConfig(redis_url=redis_url, namespace=f"bench-dec-{token}-{tier}")
        manager = CacheManager(config)
        with anyio.fail_after(30):
            await manager.start()  # its tasks run in a host task of its own
        stack.push_async_callback(manager.stop)
        managers[tier] = manager
        calls = Calls()
        f = manager.cached(ttl=TTL, key_prefix="user")(make_loader(calls))
        subjects.append(
            Subject(
                f"coherent_{tier}",
                "coherent_cache @cache.cached, "
                + ("multi-tier (L2 + bus running)" if redis_url else "L1 only (redis_url=None)"),
                "ours",
                "coherent_cache",
                f,
                "memory",
                "redis" if redis_url else "memory",
                calls,
            )
        )
    multi = managers["multi_tier"]
    decorated = subjects[0].fn
    assert hasattr(decorated, "cache_key")
    cache_key: Callable[[int], str] = decorated.cache_key

    async def key_only(x: int) -> str:
        return cache_key(x)

    ref_key = "ref:user:7"
    await multi.set(ref_key, value_of(HIT_ARG), TTL)
    fixed_calls = Calls()
    fixed = make_loader(fixed_calls)

    async def load_fixed() -> dict[str, Any]:
        return await fixed(HIT_ARG)

    def get_or_set_on(manager: CacheManager) -> Call:
        async def get_or_set(key: str) -> Any:
            return await manager.get_or_set(key, load_fixed, TTL)

        return get_or_set

    subjects += [
        Subject(
            "ref_coherent_cache_key",
            "[ref] f.cache_key(7) inside an async def",
            "reference",
            "coherent_cache",
            key_only,
            "memory",
            None,
            hit_arg=HIT_ARG,
            expected=cache_key(HIT_ARG),
        ),
        Subject(
            "ref_coherent_get",
            "[ref] await cache.get(key), multi-tier",
            "reference",
            "coherent_cache",
            multi.get,
            "memory",
            None,
            hit_arg=ref_key,
        ),
        Subject(
            "ref_coherent_get_or_set_multi_tier",
            "[ref] await cache.get_or_set(key, loader, ttl), multi-tier",
            "reference",
            "coherent_cache",
            get_or_set_on(multi),
            "memory",
            "redis",
            fixed_calls,
            hit_arg=ref_key,
            key_of=lambda i: f"ref:gos:{i}",
        ),
    ]
    l1_calls = Calls()
    l1_fixed = make_loader(l1_calls)
    single = managers["l1_only"]

    async def get_or_set_l1(key: str) -> Any:
        return await single.get_or_set(key, lambda: l1_fixed(HIT_ARG), TTL)

    subjects.append(
        Subject(
            "ref_coherent_get_or_set_l1_only",
            "[ref] await cache.get_or_set(key, loader, ttl), L1 only",
            "reference",
            "coherent_cache",
            get_or_set_l1,
            None,
            "memory",
            l1_calls,
            key_of=lambda i: f"ref:gos:{i}",
        )
    )
    return subjects


async def close_quietly(close: Callable[[], Awaitable[Any]]) -> None:
    """Await a peer's close; its redis-py ``close()`` alias warns about ``aclose()``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await close()


async def cashews_subjects(stack: AsyncExitStack, url: str, token: str) -> list[Subject]:
    """cashews: ``mem://`` and ``redis://`` (plain and ``client_side=True``) backends."""
    from cashews import Cache

    subjects: list[Subject] = []
    backends: list[tuple[str, str, dict[str, Any], Group, Group]] = [
        ("mem", "mem://", {}, "memory", "memory"),
        ("redis", url, {}, "redis", "redis"),
        (
            "client_side",
            url,
            {"client_side": True, "client_side_prefix": f"cashews-cs-{token}:"},
            "memory",
            "redis",
        ),
    ]
    for backend, settings, extra, hit_group, miss_group in backends:
        cache = Cache(name=f"bench-{backend}")
        cache.setup(settings, **extra)
        stack.push_async_callback(close_quietly, cache.close)
        with anyio.fail_after(30):
            await cache.init()
        variants = ["defaults", "unprotected"]
        if backend == "client_side":
            variants = variants[1:]  # its hits are local either way; keep the table short
        for variant in variants:
            calls = Calls()
            # protected=True is cashews' default: it is passed only to name the variant.
            f = cache(
                ttl=TTL,
                prefix=f"bench-{token}-{backend}-{variant}",
                protected=variant == "defaults",
            )(make_loader(calls))
            what = {
                "mem": "mem://",
                "redis": "redis://",
                "client_side": "redis:// client_side=True",
            }[backend]
            how = "defaults (protected=True)" if variant == "defaults" else "protected=False"
            subjects.append(
                Subject(
                    f"cashews_{backend}_{variant}",
                    f"cashews @cache, {what}, {how}",
                    "peer",
                    "cashews",
                    f,
                    hit_group,
                    miss_group,
                    calls,
                )
            )
    return subjects


async def aiocache_subjects(stack: AsyncExitStack, url: str, token: str) -> list[Subject]:
    """aiocache: ``Cache.MEMORY`` and ``Cache.REDIS``, default timeout and ``timeout=None``."""
    from aiocache import Cache, cached

    parsed = urlparse(url)
    redis_options: dict[str, Any] = {
        "endpoint": parsed.hostname or "127.0.0.1",
        "port": parsed.port or 6379,
        "db": int(parsed.path.lstrip("/") or 0),
    }
    if parsed.password:
        redis_options["password"] = unquote(parsed.password)
    subjects: list[Subject] = []
    backends: list[tuple[str, Any, dict[str, Any], Group]] = [
        ("memory", Cache.MEMORY, {}, "memory"),
        ("redis", Cache.REDIS, redis_options, "redis"),
    ]
    for backend, kind, options, group in backends:
        for variant, timeout in (("defaults", {}), ("no_timeout", {"timeout": None})):
            calls = Calls()
            f = cached(
                ttl=TTL,
                cache=kind,
                namespace=f"bench-{token}-aiocache-{backend}-{variant}:",
                **options,
                **timeout,
            )(make_loader(calls))
            stack.push_async_callback(close_quietly, f.cache.close)
            if backend == "memory":
                stack.push_async_callback(f.cache.clear)  # cancels its per-key TTL timers
            what = "Cache.MEMORY" if backend == "memory" else "Cache.REDIS"
            how = "defaults (timeout=5)" if variant == "defaults" else "timeout=None"
            subjects.append(
                Subject(
                    f"aiocache_{backend}_{variant}",
                    f"aiocache @cached, {what}, {how}",
                    "peer",
                    "aiocache",
                    f,
                    group,
                    group,
                    calls,
                )
            )
    return subjects


async def raw_subjects(client: Redis, token: str) -> list[Subject]:
    """The floor of every Redis-backed row: bare redis-py round trips."""
    key = f"bench-{token}-raw:7"
    payload = orjson.dumps(value_of(HIT_ARG))
    await client.set(key, payload, ex=TTL)

    async def get_then_set(k: str) -> None:
        await client.get(k)
        await client.set(k, payload, ex=TTL)

    return [
        Subject(
            "ref_redis_get",
            "[ref] redis-py: await client.get(key) (one round trip)",
            "reference",
            "redis-py",
            client.get,
            "redis",
            None,
            hit_arg=key,
            expected=payload,
        ),
        Subject(
            "ref_redis_get_set",
            "[ref] redis-py: GET then SET EX (two round trips)",
            "reference",
            "redis-py",
            get_then_set,
            None,
            "redis",
            key_of=lambda i: f"bench-{token}-raw:{i}",
        ),
    ]


# -- measuring -------------------------------------------------------------------------


async def run_batch(fn: Call, args: Iterable[Any]) -> float:
    """Seconds to await ``fn(arg)`` for every arg, one after the other."""
    start = time.perf_counter()
    for arg in args:
        await fn(arg)
    return time.perf_counter() - start


def batch_args(subject: Subject, phase: Phase, n: int) -> Iterable[Any]:
    """The arguments of one batch: the hit argument n times, or n new ones."""
    if phase == "hit":
        return itertools.repeat(subject.hit_arg, n)
    return subject.fresh(n)


@dataclass
class Series:
    """The batches of one subject in one phase."""

    calls_per_batch: int = 0
    means_us: list[float] = field(default_factory=list)
    loader_calls: int = 0
    """Loader runs during the measured batches (hits: 0; misses: one per call)."""
    measured_calls: int = 0


async def calibrate(subject: Subject, phase: Phase, batch_s: float) -> int:
    """Calls per batch for about ``batch_s`` seconds (the runs double as warm-up)."""
    n, cap = 16, MAX_CALLS[phase]
    while True:
        elapsed = await run_batch(subject.fn, batch_args(subject, phase, n))
        if elapsed >= 0.02 or n >= cap:
            break
        n = min(cap, n * 4)
    return max(50, min(cap, round(batch_s * n / max(elapsed, 1e-9))))


async def measure_phase(
    subjects: list[Subject], phase: Phase, args: argparse.Namespace, errors: list[str]
) -> dict[str, Series]:
    """Run every subject of ``phase``: calibrate, then ``repeats`` interleaved batches."""
    batch_s = args.batch_ms / 1000
    limit = max(10.0, 50 * batch_s)
    chosen = [s for s in subjects if s.group(phase) is not None]
    series: dict[str, Series] = {}
    failed: set[str] = set()

    def fail(subject: Subject, exc: BaseException) -> None:
        errors.append(f"{phase} {subject.name}: {type(exc).__name__}: {exc}")
        failed.add(subject.name)

    for subject in chosen:
        try:
            with anyio.fail_after(limit):
                if phase == "hit":  # fill, and check that the cache returns the value
                    await subject.fn(subject.hit_arg)
                    got = await subject.fn(subject.hit_arg)
                    if got != subject.expected:
                        raise AssertionError(f"hit returned {got!r}, not {subject.expected!r}")
                series[subject.name] = Series(await calibrate(subject, phase, batch_s))
        except Exception as exc:
            fail(subject, exc)
    for rep in range(args.repeats):
        shift = rep % len(chosen)
        for subject in chosen[shift:] + chosen[:shift]:
            if subject.name in failed:
                continue
            await anyio.lowlevel.checkpoint()  # in-memory batches never yield: Ctrl-C lands here
            s = series[subject.name]
            batch = batch_args(subject, phase, s.calls_per_batch)
            before = subject.calls.n
            gc.collect()
            try:
                with anyio.fail_after(limit):
                    elapsed = await run_batch(subject.fn, batch)
            except Exception as exc:
                fail(subject, exc)
                continue
            s.means_us.append(elapsed / s.calls_per_batch * 1e6)
            s.loader_calls += subject.calls.n - before
            s.measured_calls += s.calls_per_batch
    for subject in chosen:
        done = series.get(subject.name)
        if done is None or subject.name in failed or subject.role == "reference":
            continue
        wanted = 0 if phase == "hit" else done.measured_calls
        if done.loader_calls != wanted:
            errors.append(
                f"{phase} {subject.name}: the function ran {done.loader_calls} times in "
                f"{done.measured_calls} calls, expected {wanted}"
            )
    return {name: s for name, s in series.items() if name not in failed}


@dataclass
class Outcome:
    """Everything measured, plus what went wrong."""

    subjects: list[Subject]
    phases: dict[Phase, dict[str, Series]]
    errors: list[str]
    seconds: float


async def delete_keys(client: Redis, pattern: str) -> int:
    """UNLINK every key matching ``pattern`` (SCAN, never KEYS); how many went."""
    removed = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            removed += await client.unlink(*batch)
            batch.clear()
    if batch:
        removed += await client.unlink(*batch)
    return removed


async def run(url: str, args: argparse.Namespace) -> Outcome:
    """Measure (`measure_all`); Ctrl-C stops the measuring, cleans up, raises KeyboardInterrupt.

    A scope cancellation, unlike asyncio's one-shot ``Task.cancel()`` of a plain
    ``asyncio.run``, cannot be lost in a library's ``wait_for`` race on Python 3.11.
    """
    interrupted = False
    outcome: Outcome | None = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    interrupted = True
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        outcome = await measure_all(url, args)
        tg.cancel_scope.cancel()
    if interrupted or outcome is None:
        raise KeyboardInterrupt
    return outcome


async def measure_all(url: str, args: argparse.Namespace) -> Outcome:
    """Set every implementation up, measure hits then misses, tear everything down."""
    started = time.monotonic()
    token = secrets.token_hex(4)
    errors: list[str] = []
    phases: dict[Phase, dict[str, Series]] = {}
    client = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    stack = AsyncExitStack()
    try:
        calls = Calls()
        subjects = [
            Subject(
                "dict_memo",
                "dict memo inside an async def (the limit)",
                "limit",
                "python",
                dict_memo(make_loader(calls)),
                "memory",
                "memory",
                calls,
            ),
            *await coherent_subjects(stack, url, token),
            *await cashews_subjects(stack, url, token),
            *await aiocache_subjects(stack, url, token),
            *await raw_subjects(client, token),
        ]
        for phase in PHASES:
            phases[phase] = await measure_phase(subjects, phase, args, errors)
    finally:
        # Shielded: this also runs when Ctrl-C cancelled the measuring. Each close is
        # bounded by itself (managers: 10 s, peers: `close_quietly`); all together by 60 s.
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(60):
                await stack.aclose()
            with anyio.move_on_after(10):
                await delete_keys(client, f"*{token}*")  # the private server goes anyway
            with anyio.move_on_after(5):
                await client.aclose()
    return Outcome(subjects, phases, errors, time.monotonic() - started)


# -- machine, report -------------------------------------------------------------------


def versions() -> dict[str, str | None]:
    """Versions of the libraries measured."""
    found: dict[str, str | None] = {}
    for name in ("coherent-cache", "cashews", "aiocache", "redis", "anyio", "orjson"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine(*, private: bool) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions(),
    }
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu"] = None
    try:
        info["server_binary"] = str(find_server_binary())
    except Exception as exc:
        info["server_binary"] = f"unavailable: {exc}"
    info["server"] = "private RedisServer" if private else "--redis-url"
    info["git"] = git_state()
    return info


def git_state() -> dict[str, Any]:
    """The commit of the library imported, and its uncommitted changes (they count too)."""
    library = Path(coherent_cache.__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=library, capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout.rstrip("\n")

    try:
        changed = git("status", "--porcelain", "--", ".").splitlines()
        return {
            "library": str(library),
            "commit": git("rev-parse", "HEAD"),
            "coherent_cache_uncommitted": changed,
        }
    except (OSError, subprocess.SubprocessError) as exc:
        return {"library": str(library), "error": str(exc)}


async def server_version(url: str) -> str:
    """The server's own idea of its name and version (INFO server)."""
    client = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    async with client:
        server = await client.info("server")
    name = "valkey" if "valkey_version" in server else "redis"
    return f"{name} {server.get('valkey_version') or server.get('redis_version')}"


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat (Linux), else None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields[:8]]
    return ticks[7], sum(ticks)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of CPU time the hypervisor gave to others between two `cpu_ticks` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 4)


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base rounded to 0.01, or None when either is missing."""
    if value is None or base is None or base <= 0:
        return None
    return round(value / base, 2)


def describe_phase(
    subjects: list[Subject], phase: Phase, series: dict[str, Series]
) -> dict[str, Any]:
    """Per subject: median, min, max of the batch means, ratios; the best peer per group."""
    medians = {name: statistics.median(s.means_us) for name, s in series.items() if s.means_us}
    best: dict[str, str | None] = {}
    for group in GROUPS[phase]:
        peers = [
            s.name
            for s in subjects
            if s.role == "peer" and s.group(phase) == group and s.name in medians
        ]
        best[group] = min(peers, key=medians.__getitem__) if peers else None
    dict_us = medians.get("dict_memo")
    rows: dict[str, Any] = {}
    for subject in subjects:
        where = subject.group(phase)
        if where is None:
            continue
        s = series.get(subject.name)
        median = medians.get(subject.name)
        peer = best[where]
        rows[subject.name] = {
            "group": where,
            "us_per_call": None if median is None else round(median, 3),
            "min_us": round(min(s.means_us), 3) if s and s.means_us else None,
            "max_us": round(max(s.means_us), 3) if s and s.means_us else None,
            "calls_per_batch": s.calls_per_batch if s else None,
            "batch_means_us": [round(x, 3) for x in s.means_us] if s else [],
            "loader_calls": s.loader_calls if s else None,
            "x_dict_memo": ratio(median, dict_us),
            "x_best_peer": ratio(median, medians.get(peer) if peer else None),
        }
    return {"best_peer": best, "rows": rows}


def report(outcome: Outcome, args: argparse.Namespace, info: dict[str, Any]) -> dict[str, Any]:
    """The results document (also what is written as JSON)."""
    return {
        "benchmark": "decorators",
        "format": 1,
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.standalone.decorators", *sys.argv[1:]]),
        "machine": info,
        "settings": {
            "repeats": args.repeats,
            "batch_ms": args.batch_ms,
            "max_calls_per_batch": MAX_CALLS,
            "ttl_s": TTL,
            "statistic": "median of the per-batch means; min and max of the per-batch means",
            "function": "async def user(x) -> {'id': x, 'name': f'user-{x}', 'active': True}",
        },
        "subjects": {
            s.name: {"label": s.label, "role": s.role, "library": s.library}
            for s in outcome.subjects
        },
        "groups": GROUPS,
        "hit": describe_phase(outcome.subjects, "hit", outcome.phases.get("hit", {})),
        "miss": describe_phase(outcome.subjects, "miss", outcome.phases.get("miss", {})),
        "errors": outcome.errors,
        "duration_s": round(outcome.seconds, 2),
    }


def _num(x: float | None, width: int, digits: int = 2) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def table(doc: dict[str, Any]) -> Iterator[str]:
    """The human-readable report."""
    m, s = doc["machine"], doc["settings"]
    yield (
        f"decorator benchmark: {s['repeats']} interleaved batches of ~{s['batch_ms']:g} ms per "
        f"case, {m['server_version']}, Python {m['python']}, {m['nproc']} CPUs"
    )
    titles = {
        "hit": "HIT: await f(7) after a first call filled the cache",
        "miss": "MISS + FILL: await f(x), a new x every call (the function runs, its result is "
        "stored)",
    }
    for phase in PHASES:
        part = doc[phase]
        yield ""
        yield titles[phase]
        head = (
            f"{'us/call':>9} {'min .. max':>17} {'calls/batch':>12} {'x dict':>8}"
            f" {'x best peer':>12}"
        )
        yield f"{'':66}{head}"
        for group, title in doc["groups"][phase].items():
            best = part["best_peer"][group]
            best_label = doc["subjects"][best]["label"] if best else "none"
            yield f"  {title}  (best peer: {best_label})"
            for name, row in part["rows"].items():
                if row["group"] != group:
                    continue
                label = doc["subjects"][name]["label"]
                spread = (
                    f"{row['min_us']:.2f} .. {row['max_us']:.2f}"
                    if row["min_us"] is not None
                    else "failed"
                )
                calls = row["calls_per_batch"] or 0
                yield (
                    f"    {label:62}{_num(row['us_per_call'], 9)} {spread:>17} {calls:>12}"
                    f" {_num(row['x_dict_memo'], 8)} {_num(row['x_best_peer'], 12)}"
                )
    if doc["errors"]:
        yield ""
        yield "errors:"
        for error in doc["errors"]:
            yield f"  {error}"
    before, after = m["loadavg_1m_before_after"]
    yield ""
    yield (
        f"took {doc['duration_s']} s; 1-minute load average {before} before, {after} after; "
        f"CPU steal {_share(m['cpu_steal_share'])}; wrote {doc['output']}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--redis-url", help="use this server instead of a private one")
    parser.add_argument(
        "--repeats", type=int, default=7, help="batches per case (default 7); the median is kept"
    )
    parser.add_argument(
        "--batch-ms", type=float, default=100.0, help="target duration of one batch (default 100)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch_ms <= 0:
        parser.error("--repeats must be >= 1 and --batch-ms > 0")
    return args


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Start a server unless given one, run the cases, stop everything; the results."""
    with ExitStack() as stack:
        url: str = args.redis_url
        if url is None:
            url = stack.enter_context(RedisServer()).url
        info = machine(private=args.redis_url is None)
        info["server_version"] = anyio.run(server_version, url)
        load_before, ticks_before = os.getloadavg(), cpu_ticks()
        outcome = anyio.run(run, url, args)
        info["loadavg_1m_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
        info["cpu_steal_share"] = steal_share(ticks_before, cpu_ticks())
    return report(outcome, args, info)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if a case failed, 2 if a peer is missing, 130 on Ctrl-C."""
    args = parse_args(argv)
    missing = [name for name in PEERS if importlib.util.find_spec(name) is None]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        print(INSTALL_HINT.format(missing=f"{' and '.join(missing)} {verb}"), file=sys.stderr)
        return 2
    # The benchmark is the application here: it keeps the library's info events quiet.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        doc = measure(args)
    except KeyboardInterrupt:
        print("interrupted; every process and client this run started was stopped", file=sys.stderr)
        return 130
    args.output.parent.mkdir(parents=True, exist_ok=True)
    try:
        doc["output"] = str(args.output.resolve().relative_to(ROOT))
    except ValueError:
        doc["output"] = str(args.output.resolve())
    args.output.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    for line in table(doc):
        print(line)
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
