"""Trace replay: hit ratios of every L1 policy, cachetools LRU/LFU and theine, side by side.

Run from the repository root, in the project's virtualenv (the ``bench`` extra installed)::

    python -m benchmarks.standalone.traces            # every trace, about 10 minutes
    python -m benchmarks.standalone.traces --quick    # first 200,000 accesses of each
    python -m benchmarks.standalone.traces --only oltp --policies tinylfu,theine

Traces (``benchmarks/traces/``, see its README for the format and attribution):

- **oltp**: the ARC paper's OLTP trace (914,145 accesses), at 250, 1,000 and 2,000 entries;
- **p3**: the ARC paper's P3 trace (3,912,296 accesses), at 25,000 and 100,000 entries;
- **zipf**: 1,000,000 accesses drawn from a Zipf law (s = 1.0) over 100,000 keys, seed 17,
  at 1,000 and 10,000 entries;
- **scan**: a hot set (Zipf s = 1.0 over 5,000 keys) interleaved with one-time scans (a run
  of 2,000 new keys after every 4,000 hot accesses), 600,000 accesses, seed 17, at 1,000
  and 4,000 entries.

Every access is a ``get``; a miss is followed by a ``set`` (no TTL). Our caches are
``InMemoryCache(capacity, ttl=None, strategy)``; the peers are ``cachetools.LRUCache``,
``cachetools.LFUCache`` and ``theine.Cache`` (W-TinyLFU with an adaptive window), at the
versions of the ``bench`` extra. Writes ``benchmarks/results/traces.json`` and prints a
Markdown table (the one in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import platform
import random
import statistics
import time
from array import array
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import anyio
import cachetools

from coherent_cache import CacheStrategy, InMemoryCache
from coherent_cache.types import MISSING

TRACES_DIR: Final = Path(__file__).resolve().parents[1] / "traces"
RESULTS: Final = Path(__file__).resolve().parents[1] / "results" / "traces.json"
CAPACITIES: Final = {
    "oltp": (250, 1_000, 2_000),
    "p3": (25_000, 100_000),
    "zipf": (1_000, 10_000),
    "scan": (1_000, 4_000),
}
SEED: Final = 17
POLICIES: Final = (
    *(f"coherent_cache {s.value}" for s in CacheStrategy),
    "cachetools LRU",
    "cachetools LFU",
    "theine",
)


class Trace:
    """A trace as indexes into its distinct keys (strings), to keep P3 small in memory."""

    def __init__(self, name: str, keys: list[str], order: array[int]) -> None:
        self.name = name
        self.keys = keys
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def accesses(self) -> list[str]:
        keys = self.keys
        return [keys[i] for i in self.order]


def _indexed(name: str, blocks: Sequence[int] | array[int]) -> Trace:
    ids: dict[int, int] = {}
    order = array("I", (ids.setdefault(block, len(ids)) for block in blocks))
    keys = [""] * len(ids)
    for block, i in ids.items():
        keys[i] = str(block)
    return Trace(name, keys, order)


def read_arc_trace(path: Path, limit: int | None = None) -> list[int]:
    """The block numbers of an ARC trace file (``START COUNT _ _`` rows), in order."""
    blocks: list[int] = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as rows:
        for row in rows:
            fields = row.split()
            if len(fields) < 2:
                continue
            start, count = int(fields[0]), int(fields[1])
            blocks.extend(range(start, start + count))
            if limit is not None and len(blocks) >= limit:
                return blocks[:limit]
    return blocks


def zipf_trace(keys: int, accesses: int, rng: random.Random) -> list[int]:
    """``accesses`` draws from a Zipf law with s = 1.0 over ``keys`` ranks."""
    weights = itertools.accumulate(1.0 / rank for rank in range(1, keys + 1))
    return rng.choices(range(keys), cum_weights=list(weights), k=accesses)


def scan_trace(accesses: int, rng: random.Random) -> list[int]:
    """A Zipf hot set of 5,000 keys with a one-time scan of 2,000 new keys after every
    4,000 hot accesses."""
    hot = zipf_trace(5_000, accesses, rng)
    out: list[int] = []
    fresh = 10_000_000
    for start in range(0, len(hot), 4_000):
        out.extend(hot[start : start + 4_000])
        out.extend(range(fresh, fresh + 2_000))
        fresh += 2_000
        if len(out) >= accesses:
            break
    return out[:accesses]


def load(name: str, limit: int | None) -> Trace:
    if name in ("oltp", "p3"):
        return _indexed(name, read_arc_trace(TRACES_DIR / f"{name}.gz", limit))
    rng = random.Random(SEED)
    blocks = zipf_trace(100_000, 1_000_000, rng) if name == "zipf" else scan_trace(600_000, rng)
    return _indexed(name, blocks[:limit] if limit else blocks)


def replay(policy: str, capacity: int, accesses: list[str]) -> float:
    """The hit ratio of ``policy`` at ``capacity`` over ``accesses``."""
    hits = 0
    if policy.startswith("coherent_cache "):
        strategy = CacheStrategy(policy.split()[1])
        ours = InMemoryCache(capacity, None, strategy)
        get, put = ours.get, ours.set
        for key in accesses:
            if get(key, MISSING) is MISSING:
                put(key, key)
        return ours.hits / len(accesses)
    if policy == "theine":
        import theine  # the bench extra only

        theirs = theine.Cache(capacity)
        tget, tset = theirs.get, theirs.set
        for key in accesses:
            if tget(key)[1]:
                hits += 1
            else:
                tset(key, key)
        theirs.close()
        return hits / len(accesses)
    factory: Callable[[int], cachetools.Cache[str, str]] = (
        cachetools.LRUCache if policy == "cachetools LRU" else cachetools.LFUCache
    )
    cache = factory(capacity)
    cget = cache.get
    for key in accesses:
        if cget(key) is None:
            cache[key] = key
        else:
            hits += 1
    return hits / len(accesses)


async def hit_costs(repeats: int, calls: int) -> dict[str, float]:
    """µs per L1 hit, ``await cache.get(k)`` on an L1-only manager of each strategy, and a
    ``cachetools.TTLCache.get`` in an ``async def`` (the suite's ``l1_hit`` baseline);
    batches of every subject interleaved, median of the batch means."""
    from coherent_cache import CacheConfig, CacheManager

    ttl_cache: cachetools.TTLCache[str, Any] = cachetools.TTLCache(maxsize=1000, ttl=600)
    keys = [f"k{i}" for i in range(1000)]
    for key in keys:
        ttl_cache[key] = {"id": 1}

    async def ttl_get(key: str) -> Any:
        return ttl_cache.get(key)

    subjects: dict[str, Callable[[str], Any]] = {"cachetools.TTLCache in async def": ttl_get}
    stack = AsyncExitStack()
    for strategy in CacheStrategy:
        config = CacheConfig(
            redis_url=None, namespace=f"hit-{strategy.value}", memory_cache_strategy=strategy
        )
        manager = await stack.enter_async_context(CacheManager(config))
        for key in keys:
            await manager.set(key, {"id": 1}, 600)
        subjects[f"coherent_cache {strategy.value}"] = manager.get
    sample = [keys[i] for i in random.Random(SEED).choices(range(len(keys)), k=calls)]
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    try:
        for _ in range(repeats):
            for name, get in subjects.items():
                started = time.perf_counter()
                for key in sample:
                    await get(key)
                samples[name].append((time.perf_counter() - started) / calls * 1e6)
    finally:
        await stack.aclose()
    return {name: round(statistics.median(values), 3) for name, values in samples.items()}


def _versions() -> dict[str, str]:
    found = {}
    for package in ("cachetools", "theine", "theine-core"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:  # pragma: no cover - bench extra missing
            found[package] = "absent"
    return found


def table(rows: list[dict[str, Any]], policies: Sequence[str]) -> str:
    """Markdown: one row per trace and capacity, one column per policy."""
    head = "| trace | capacity | " + " | ".join(p.replace("coherent_cache ", "") for p in policies)
    lines = [head + " |", "|---|---:|" + "---:|" * len(policies)]
    for row in rows:
        cells = [f"{row['hit_ratio'][p]:.3f}" if p in row["hit_ratio"] else "–" for p in policies]
        lines.append(f"| {row['trace']} | {row['capacity']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="first 200,000 accesses only")
    parser.add_argument("--only", default="oltp,p3,zipf,scan", help="traces, comma-separated")
    parser.add_argument("--policies", default="", help="subset of policies (default: all)")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON")
    parser.add_argument("--hit", action="store_true", help="L1 hit cost per strategy only")
    args = parser.parse_args(argv)
    if args.hit:
        costs = anyio.run(hit_costs, 15, 20_000)
        base = costs["cachetools.TTLCache in async def"]
        for name, us in costs.items():
            print(f"{name:40} {us:7.3f} µs  {us / base:5.2f}×")
        return
    wanted = [p.strip() for p in args.policies.split(",") if p.strip()]
    policies = [p for p in POLICIES if not wanted or any(w in p for w in wanted)]
    rows: list[dict[str, Any]] = []
    for name in args.only.split(","):
        trace = load(name, 200_000 if args.quick else None)
        accesses = trace.accesses()
        for capacity in CAPACITIES[name]:
            ratios: dict[str, float] = {}
            seconds: dict[str, float] = {}
            for policy in policies:
                started = time.perf_counter()
                ratios[policy] = round(replay(policy, capacity, accesses), 4)
                seconds[policy] = round(time.perf_counter() - started, 2)
            row = {
                "trace": name,
                "accesses": len(accesses),
                "capacity": capacity,
                "hit_ratio": ratios,
                "seconds": seconds,
            }
            rows.append(row)
            print(table([row], policies).splitlines()[-1], flush=True)
    print()
    print(table(rows, policies))
    if not args.no_write:
        RESULTS.write_text(
            json.dumps(
                {
                    "quick": args.quick,
                    "python": platform.python_version(),
                    "versions": _versions(),
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
