"""The cost of BCAST tracking (issue 16): what every write under the prefix costs the server
and each tracking instance, with 0, 1, 3 and 10 instances.

Run from the repository root, in the project's virtualenv (a private server is started)::

    python -m benchmarks.standalone.tracking_cost                 # about 2 minutes
    python -m benchmarks.standalone.tracking_cost --instances 0,1,3 --seconds 2
    python -m benchmarks.standalone.tracking_cost --receiver raw2 # raw clients instead

With ``CLIENT TRACKING ON BCAST PREFIX <namespace>:``, every write of a key under the
prefix sends an invalidation to every tracking connection. For each number of instances
(separate processes, `benchmarks.workers._tracking_worker`: coherent_cache with
``client_tracking=True`` and the bus on, or ``--receiver raw2``: a dict and a raw RESP2
tracking client), a writer in its own process SETs keys under the prefix at ``--rate``
per second for ``--seconds``, in two ways:

- ``single``: one SET at a time, each awaited (a service writing as it goes; the server
  sends one invalidation message per write and instance);
- ``pipelined``: a pipeline of rate/100 SETs every 10 ms (a batch job; the server sends
  the keys one event-loop pass invalidated under the prefix in one message per instance).

Measured per run: writes done; invalidation messages and keys received per instance and
in total (the instances' counters: ``get_stats()["tracking"]``), per second; the server's
CPU (``INFO cpu``: used_cpu_sys + used_cpu_user, before and after) per write, and what
tracking adds to it over 0 instances (same run); each instance's process CPU per second
(% of one core). Instances of one count run interleaved with nothing else; the counts run
one after the other on one server. Writes ``benchmarks/results/tracking_cost.json``.
See docs/benchmarks.md ("Client tracking: the cost of BCAST").
"""

from __future__ import annotations

import argparse
import datetime
import os
import secrets
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import orjson
from redis.asyncio import Redis

from benchmarks.suite._common import machine, server_version
from benchmarks.suite.stampede import Worker
from coherent_cache.testing import RedisServer

RESULTS: Final = Path(__file__).resolve().parents[1] / "results" / "tracking_cost.json"
WORKER: Final = "benchmarks.workers._tracking_worker"
VALUE: Final = (bytes((0xC5, 0x01)) + orjson.dumps({"v": "x" * 32})).hex()
KEYS: Final = 1000
"""Distinct keys the writer cycles through."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def server_cpu(client: Redis) -> float:
    """The server's user + system CPU seconds so far."""
    info = await client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def counts(receivers: list[Worker]) -> list[dict[str, Any]]:
    out = []
    for r in receivers:
        await r.send({"op": "counts"})
        with anyio.fail_after(10):
            out.append(await r.read())
    return out


async def settle(receivers: list[Worker]) -> list[dict[str, Any]]:
    """The receivers' counters once they stopped moving (every message read), within 5 s."""
    last = await counts(receivers)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        await anyio.sleep(0.1)
        now = await counts(receivers)
        if [c["messages"] for c in now] == [c["messages"] for c in last]:
            return now
        last = now
    return last


async def start_group(url: str, instances: int, args: argparse.Namespace) -> Group:
    """``instances`` receivers tracking one new namespace's prefix."""
    namespace = f"tc-{secrets.token_hex(3)}"
    fields: dict[str, Any]
    if args.receiver == "cache":
        fields = {"role": "cache", "redis_url": url, "namespace": namespace}
        fields["client_tracking"] = True
    else:
        fields = {"role": args.receiver, "url": url, "prefix": f"{namespace}:"}
    group = Group(
        instances, f"{namespace}:", [Worker(dict(fields), WORKER) for _ in range(instances)]
    )
    with anyio.fail_after(120):
        for r in group.receivers:
            await r.start()
    return group


@dataclass
class Group:
    """Receivers tracking one prefix (none for the 0-instance baseline)."""

    instances: int
    prefix: str
    receivers: list[Worker]


async def one_run(
    admin: Redis, writer: Worker, group: Group, mode: str, args: argparse.Namespace
) -> dict[str, Any]:
    """The writer floods the group's prefix; what it cost."""
    receivers = group.receivers
    before = await counts(receivers)
    cpu0 = await server_cpu(admin)
    await writer.send(
        {
            "op": "flood",
            "prefix": f"{group.prefix}w",
            "keys": KEYS,
            "rate": args.rate,
            "seconds": args.seconds,
            "value": VALUE,
            "single": mode == "single",
        }
    )
    with anyio.fail_after(args.seconds + 60):
        done = await writer.read()
    after = await settle(receivers)
    cpu1 = await server_cpu(admin)
    if "error" in done:
        raise RuntimeError(done["error"])
    writes, seconds = int(done["writes"]), float(done["seconds"])
    per = [
        {
            "messages": (a["messages"] or 0) - (b["messages"] or 0),
            "keys": None
            if a.get("keys") is None or b.get("keys") is None
            else a["keys"] - b["keys"],
            "cpu_s": a["cpu"] - b["cpu"],
        }
        for a, b in zip(after, before, strict=True)
    ]
    return {
        "writes": writes,
        "seconds": seconds,
        "server_cpu_s": cpu1 - cpu0,
        "per_instance": per,
    }


def summarize(instances: int, mode: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of one (instances, mode)."""
    med = statistics.median
    writes_per_s = med(r["writes"] / r["seconds"] for r in runs)
    messages_per_s = med(sum(p["messages"] for p in r["per_instance"]) / r["seconds"] for r in runs)
    keys = [p["keys"] for r in runs for p in r["per_instance"]]
    cpu = [p["cpu_s"] / r["seconds"] * 100 for r in runs for p in r["per_instance"]]
    return {
        "instances": instances,
        "mode": mode,
        "rate": runs[0]["rate"],
        "rounds": len(runs),
        "writes_per_s": writes_per_s,
        "messages_per_s_total": messages_per_s,
        "messages_per_s_per_instance": messages_per_s / instances if instances else 0.0,
        "keys_per_write_per_instance": None
        if not instances or None in keys
        else med(sum(p["keys"] for p in r["per_instance"]) / instances / r["writes"] for r in runs),
        "server_cpu_us_per_write": med(r["server_cpu_s"] / r["writes"] * 1e6 for r in runs),
        "instance_cpu_pct_mean": statistics.fmean(cpu) if cpu else None,
        "instance_cpu_us_per_message": med(
            sum(p["cpu_s"] for p in r["per_instance"])
            / sum(p["messages"] for p in r["per_instance"])
            * 1e6
            for r in runs
        )
        if instances and all(sum(p["messages"] for p in r["per_instance"]) for r in runs)
        else None,
        "runs": runs,
    }


def add_increments(rows: list[dict[str, Any]]) -> None:
    """What tracking adds to the server's CPU per write, over 0 instances of the same mode."""
    base = {r["mode"]: r["server_cpu_us_per_write"] for r in rows if r["instances"] == 0}
    for r in rows:
        zero = base.get(r["mode"])
        if zero is None or r["server_cpu_us_per_write"] is None:
            r["tracking_us_per_write"] = None
            r["tracking_us_per_write_per_instance"] = None
            continue
        extra = r["server_cpu_us_per_write"] - zero
        r["tracking_us_per_write"] = extra
        r["tracking_us_per_write_per_instance"] = extra / r["instances"] if r["instances"] else None


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of the docs."""
    lines = [
        "| instances | writer | writes/s | messages/s per instance | messages/s in total "
        "| server CPU per write | added by tracking (per instance) | instance CPU "
        "| instance CPU per message |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        added = (
            "-"
            if r["tracking_us_per_write"] is None or not r["instances"]
            else f"{r['tracking_us_per_write']:+.2f} µs "
            f"({r['tracking_us_per_write_per_instance']:+.2f} µs)"
        )
        cpu = r["instance_cpu_pct_mean"]
        inst = "-" if cpu is None else f"{cpu:.0f} % of a core"
        per_message = r.get("instance_cpu_us_per_message")
        inst += " | -" if per_message is None else f" | {per_message:.0f} µs"
        lines.append(
            f"| {r['instances']} | {r['mode']} | {r['writes_per_s']:.0f} | "
            f"{r['messages_per_s_per_instance']:.0f} | {r['messages_per_s_total']:.0f} | "
            f"{r['server_cpu_us_per_write']:.2f} µs | {added} | {inst} |"
        )
    return "\n".join(lines)


async def run(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every group started at once; rounds of every (mode, group), groups rotating."""
    admin = Redis.from_url(url, socket_timeout=10)
    writer = Worker({"role": "writer", "url": url}, WORKER)
    groups: list[Group] = []
    samples: dict[tuple[int, str], list[dict[str, Any]]] = {}
    try:
        with anyio.fail_after(60):
            await writer.start()
        groups.extend([await start_group(url, instances, args) for instances in args.instances])
        await anyio.sleep(1.0)  # let the start-up traffic (subscribes, first PINGs) pass
        for n in range(args.rounds):
            shift = n % len(groups)
            for mode in args.modes:
                for group in groups[shift:] + groups[:shift]:
                    done = await one_run(admin, writer, group, mode, args)
                    done["rate"] = args.rate
                    samples.setdefault((group.instances, mode), []).append(done)
                    log(
                        f"round {n + 1}: {group.instances} instances, {mode}: "
                        f"{done['writes'] / done['seconds']:.0f} writes/s, server "
                        f"{done['server_cpu_s'] / done['writes'] * 1e6:.2f} µs CPU per write"
                    )
    finally:
        await writer.stop()
        for group in groups:
            for r in group.receivers:
                await r.stop()
        await admin.aclose()
    rows = [
        summarize(instances, mode, samples[(instances, mode)])
        for mode in args.modes
        for instances in args.instances
        if (instances, mode) in samples
    ]
    add_increments(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.standalone.tracking_cost",
        description=(__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--instances", default="0,1,3,10", help="comma-separated counts")
    parser.add_argument("--rate", type=float, default=1000.0, help="SETs per second")
    parser.add_argument("--seconds", type=float, default=2.0, help="per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each (mode, count)")
    parser.add_argument("--modes", default="single,pipelined")
    parser.add_argument("--receiver", choices=("cache", "raw2", "raw3"), default="cache")
    parser.add_argument("--redis-url", help="use this server instead of a private one")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: recompute the summary and table from --output's runs",
    )
    args = parser.parse_args(argv)
    if args.render:
        doc = orjson.loads(args.output.read_bytes())
        doc["rows"] = [summarize(r["instances"], r["mode"], r["runs"]) for r in doc["rows"]]
        add_increments(doc["rows"])
        args.output.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        print(table(doc["rows"]))
        return 0
    args.instances = [int(x) for x in args.instances.split(",")]
    args.modes = args.modes.split(",")
    started = time.monotonic()
    with ExitStack() as stack:
        url = args.redis_url or stack.enter_context(RedisServer()).url
        info = machine()
        info["server_version"] = anyio.run(server_version, url)
        rows = anyio.run(run, url, args)
    doc = {
        "benchmark": "tracking_cost",
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(
            ["python -m benchmarks.standalone.tracking_cost", *(argv or sys.argv[1:])]
        ),
        "settings": {
            "rate": args.rate,
            "seconds": args.seconds,
            "receiver": args.receiver,
            "keys": KEYS,
            "rounds": args.rounds,
        },
        "machine": info,
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "duration_s": round(time.monotonic() - started, 1),
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    print(table(rows))
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
