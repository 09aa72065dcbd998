"""Fleet-report benchmark: the cost of one instance's report, and of listing the fleet.

Run from the repository root, in the project's virtualenv (a ``valkey-server`` or
``redis-server`` binary on the PATH; a private one is started)::

    python -m benchmarks.standalone.fleet             # about 20 s
    python -m benchmarks.standalone.fleet --repeats 21 --keys 200000

Measured, in one process against a private local server:

- **CPU per report**: process CPU time (``time.process_time``, client side: building the
  report from the stats, encoding it, the script call: one round trip)
  and wall time of ``FleetReporter.report()``, against the baseline of the same run: one
  ``PING`` through the same client (the cheapest Redis call there is);
- **bytes in Redis per instance**: ``MEMORY USAGE`` of the ``<namespace>#fleet`` hash
  with 1 and with ``--instances`` reporting managers, and the report's JSON size;
- **listing**: `read_fleet` (one script over the hash) against the layout not chosen,
  one key per instance (``SET ... PX``) listed with ``SCAN MATCH`` + ``MGET``, in a
  database holding ``--keys`` cache entries besides the reports.

The table gives medians over ``--repeats`` interleaved batches and writes
``benchmarks/results/fleet.json``. See docs/observability.md#the-fleet-view.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import orjson
from redis.asyncio import Redis

from coherent_cache import CacheConfig, CacheManager
from coherent_cache.fleet import FleetReporter, build_report, fleet_key, health_of, read_fleet
from coherent_cache.testing import RedisServer

RESULTS = Path(__file__).resolve().parents[1] / "results" / "fleet.json"


async def batch(call: Callable[[], Awaitable[Any]], calls: int) -> tuple[float, float]:
    """Mean (CPU µs, wall µs) per call over ``calls`` calls."""
    cpu, wall = time.process_time_ns(), time.perf_counter_ns()
    for _ in range(calls):
        await call()
    return (
        (time.process_time_ns() - cpu) / calls / 1000,
        (time.perf_counter_ns() - wall) / calls / 1000,
    )


async def scan_listing(client: Redis, namespace: str) -> list[Any]:
    """The other layout: one key per instance, found with SCAN MATCH, read with MGET."""
    names = [name async for name in client.scan_iter(match=f"{namespace}#fl:*", count=1000)]
    return list(await client.mget(names)) if names else []


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with RedisServer() as server:
        config = CacheConfig(redis_url=server.url, namespace="bench", fleet_report_interval=3600)
        raw = Redis.from_url(server.url)
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(CacheManager(config))
            assert first.l2 is not None
            for i in range(200):
                await first.set(f"user:{i}", {"id": i, "name": f"user-{i}"})
                await first.get(f"user:{i}")
            reporter = FleetReporter(first)
            await reporter.report()
            one_instance = int(await raw.memory_usage(fleet_key("bench")) or 0)
            report_json = orjson.dumps(
                build_report(
                    first.stats(),
                    await health_of(first.stats(), running=True, config=config),
                    config=config,
                    origin=first.origin, started_at=reporter.started_at,
                )
            )  # fmt: skip
            for _ in range(args.instances - 1):
                await stack.enter_async_context(CacheManager(config))
            await anyio.sleep(0.2)  # each started manager reports at once
            many = int(await raw.memory_usage(fleet_key("bench")) or 0)
            listed = len(await first.fleet())
            assert listed == args.instances, listed

            # The other layout, for the listing comparison: the same reports, one key each.
            for i, report in enumerate(await first.fleet()):
                await raw.set(f"bench#fl:{i}", orjson.dumps(report), px=3_600_000)
            pipe = raw.pipeline(transaction=False)
            for i in range(args.keys):
                pipe.set(f"bench:filler:{i}", b"x" * 64)
                if i % 5000 == 4999:
                    await pipe.execute()
                    pipe = raw.pipeline(transaction=False)
            await pipe.execute()

            client = first.l2.client
            cases: dict[str, tuple[Callable[[], Awaitable[Any]], int]] = {
                "PING (baseline)": (client.ping, args.calls),
                "one report": (reporter.report, args.calls),
                "list: hash script": (
                    lambda: read_fleet(client, "bench", within=5.0),
                    args.calls,
                ),
                "list: SCAN MATCH + MGET": (lambda: scan_listing(raw, "bench"), 3),
            }
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
            for _ in range(args.repeats):
                for name, (call, calls) in cases.items():
                    samples[name].append(await batch(call, calls))
        await raw.aclose()

    rows = {
        name: {
            "cpu_us": statistics.median(s[0] for s in got),
            "wall_us": statistics.median(s[1] for s in got),
        }
        for name, got in samples.items()
    }
    base = rows["PING (baseline)"]
    print(f"{'case':<26}{'CPU µs':>10}{'wall µs':>10}{'CPU × PING':>12}")
    for name, row in rows.items():
        ratio = row["cpu_us"] / base["cpu_us"]
        print(f"{name:<26}{row['cpu_us']:>10.1f}{row['wall_us']:>10.1f}{ratio:>12.1f}")
    per_instance = (many - one_instance) / max(1, args.instances - 1)
    print(
        f"report JSON: {len(report_json)} B; MEMORY USAGE of the hash: {one_instance} B with "
        f"1 instance, {many} B with {args.instances} ({per_instance:.0f} B per instance)"
    )
    result = {
        "rows": rows,
        "report_json_bytes": len(report_json),
        "hash_bytes_one": one_instance,
        "hash_bytes_many": many,
        "instances": args.instances,
        "bytes_per_instance": round(per_instance),
        "filler_keys": args.keys,
        "repeats": args.repeats,
        "calls": args.calls,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--calls", type=int, default=200, help="calls per batch")
    parser.add_argument("--instances", type=int, default=10, help="reporting managers")
    parser.add_argument("--keys", type=int, default=100_000, help="cache keys besides")
    anyio.run(main, parser.parse_args())


if __name__ == "__main__":
    cli()
