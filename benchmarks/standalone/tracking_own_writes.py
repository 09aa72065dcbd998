"""What client tracking costs an instance's own writes: L1 hit ratio and time per operation.

With ``client_tracking=True`` an instance's own ``SET`` comes back to it as a tracking
message and drops the value it just put into L1, so the next read of that key goes to
L2 (once: a read does not write). This measures that cost in a write-heavy loop::

    python -m benchmarks.standalone.tracking_own_writes          # about 20 s
    python -m benchmarks.standalone.tracking_own_writes --repeats 9 --ops 5000

One manager (bus on, as deployed) against a private local server runs ``--ops``
operations over ``--keys`` keys, each a ``set`` with probability ``--write-fraction``
(for each fraction given), else a ``get``; with tracking off and on, interleaved, over
``--repeats`` rounds. Reported per configuration: the median L1 hit ratio of the gets and
the median µs per operation, and the ratio on/off of the same run. Results go to
``benchmarks/results/tracking_own_writes.json``; see docs/tracking.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import anyio

from coherent_cache import CacheConfig, CacheManager
from coherent_cache.testing import RedisServer

RESULTS = Path(__file__).resolve().parents[1] / "results" / "tracking_own_writes.json"


async def run_once(
    url: str, tracking: bool, fraction: float, args: argparse.Namespace
) -> dict[str, float]:
    """One loop: (L1 hit ratio of the gets, µs per operation)."""
    config = CacheConfig(
        redis_url=url,
        namespace=f"own{int(tracking)}",
        client_tracking=tracking,
        enable_monitoring=False,
        fleet_report_interval=0,
    )
    rng = random.Random(7)
    keys = [f"item:{i}" for i in range(args.keys)]
    async with CacheManager(config) as cache:
        for key in keys:
            await cache.set(key, {"v": 0})
        await anyio.sleep(0.05)  # the initial writes' own messages, then L1 warm again
        for key in keys:
            await cache.get(key)
        before = cache.stats()["l1_cache"]
        started = time.perf_counter()
        for i in range(args.ops):
            key = rng.choice(keys)
            if rng.random() < fraction:
                await cache.set(key, {"v": i})
            else:
                await cache.get(key)
        elapsed = time.perf_counter() - started
        after = cache.stats()["l1_cache"]
        await cache.clear()
    hits = after["hits"] - before["hits"]
    lookups = hits + after["misses"] - before["misses"]
    return {"hit_ratio": hits / lookups if lookups else 0.0, "us_per_op": elapsed / args.ops * 1e6}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with RedisServer() as server:
        for fraction in args.write_fraction:
            runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for _ in range(args.repeats):
                for tracking in (False, True):  # interleaved
                    runs[tracking].append(await run_once(server.url, tracking, fraction, args))
            row: dict[str, Any] = {"write_fraction": fraction}
            for tracking, name in ((False, "off"), (True, "on")):
                row[f"hit_ratio_{name}"] = statistics.median(r["hit_ratio"] for r in runs[tracking])
                row[f"us_per_op_{name}"] = statistics.median(r["us_per_op"] for r in runs[tracking])
            row["time_ratio_on_off"] = row["us_per_op_on"] / row["us_per_op_off"]
            rows.append(row)
            print(
                f"writes {fraction:>4.0%}: L1 hit ratio of gets {row['hit_ratio_off']:.3f} off, "
                f"{row['hit_ratio_on']:.3f} on; {row['us_per_op_off']:.0f} / "
                f"{row['us_per_op_on']:.0f} µs per op (on/off {row['time_ratio_on_off']:.2f}x)"
            )
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "args": dict(vars(args)),
        "rows": rows,
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--write-fraction", type=float, nargs="+", default=[0.01, 0.1, 0.5])
    args = parser.parse_args()
    result = anyio.run(main, args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    cli()
