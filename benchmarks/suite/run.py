"""``python -m benchmarks``: every row of issue 9's table, coherent_cache vs cashews, aiocache, raw.

Run from the repository root with the ``bench`` extra installed
(``pip install -e '.[bench]'``: cashews, aiocache, matplotlib)::

    python -m benchmarks            # full run, under 10 minutes; updates docs/benchmarks.md
    python -m benchmarks --quick    # under a minute; writes benchmarks/results/suite-quick.*

A private valkey/redis server is started the way the tests start theirs
(`coherent_cache.testing.RedisServer`) unless ``--redis-url`` is given. Rows:

- per operation (`benchmarks.suite.micro`, `benchmarks.suite.peers`): L1 hit, decorator hit,
  two-tier L1 hit, L2 hit sequential, L2 gets with 100 and 1,000 concurrent tasks; systems
  interleaved round by round, median and spread over rounds, ratio to the raw limit;
- stampede (`benchmarks.suite.stampede`): 200 callers, one cold key, 50 ms loader, in one
  process and across three;
- hot key under expiry (`benchmarks.suite.hotkey`): 3 processes x 100 tasks reading one key
  with a 1 s TTL and a 50 ms loader for 10 s (3 s quick); refresh-ahead against cashews'
  ``early`` and aiocache; p50/p99/max per read and loader calls;
- invalidation (`benchmarks.suite.invalidation`, on `benchmarks.standalone.coherence`): the
  stale window between two processes, against raw PUBLISH -> listener;
- tracking (`benchmarks.suite.tracking`): a foreign write -> another process's L1 drops the
  key with ``client_tracking=True``, against a raw ``CLIENT TRACKING BCAST`` client (RESP2
  and RESP3) and cashews ``client_side=True``;
- extras (`benchmarks.suite.extras`): L1 memory per entry, L1 cost from 1,000 to 1,000,000
  entries (1M in the full run only), serialisation and compression by value size.

Writes ``benchmarks/results/suite.json`` and ``suite.md`` (``suite-quick.*`` with
``--quick``), the plot ``docs/benchmarks.png``, and the block between the markers in
``docs/benchmarks.md`` (full runs; ``--no-docs`` to skip, ``--docs`` to force).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import secrets
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import anyio
import orjson
import structlog

from benchmarks.suite import extras, hotkey, invalidation, micro, report, stampede, tracking
from benchmarks.suite._common import RESULTS_DIR, ROOT, machine, server_version
from coherent_cache.testing import RedisServer

DOCS = ROOT / "docs" / "benchmarks.md"
PNG = ROOT / "docs" / "benchmarks.png"
ALL_PARTS = (
    "micro",
    "stampede",
    "hotkey",
    "invalidation",
    "tracking",
    "memory",
    "scaling",
    "codecs",
)


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="short run (under a minute)")
    parser.add_argument("--redis-url", help="use this server instead of a private one")
    parser.add_argument(
        "--only", help=f"comma-separated parts to run, of {','.join(ALL_PARTS)} (default all)"
    )
    parser.add_argument("--rounds", type=int, help="rounds of the per-operation rows")
    parser.add_argument("--batch-ms", type=float, help="length of one per-operation batch")
    parser.add_argument("--no-peers", action="store_true", help="coherent_cache and raw only")
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--docs", action="store_true", help="update docs/ even in a quick run")
    docs.add_argument("--no-docs", action="store_true", help="leave docs/ alone")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rewrite the Markdown, plot and docs block from the last "
        "results JSON (suite.json, or suite-quick.json with --quick)",
    )
    args = parser.parse_args(argv)
    parts = args.only.split(",") if args.only else list(ALL_PARTS)
    unknown = set(parts) - set(ALL_PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")
    args.parts = parts
    args.rounds = args.rounds or (5 if args.quick else 15)
    args.batch_s = (args.batch_ms or (15 if args.quick else 80)) / 1000
    return args


async def run_micro(url: str, args: argparse.Namespace, errors: list[str]) -> list[dict[str, Any]]:
    """The per-operation rows."""
    token = secrets.token_hex(4)
    rows = list(micro.MICRO_ROWS)
    async with AsyncExitStack() as stack:
        subjects = await micro.raw_subjects(stack, url, token, rows)
        subjects += await micro.coherent_subjects(stack, url, token, rows)
        if not args.no_peers:
            from benchmarks.suite import peers

            missing = peers.missing()
            if missing:
                errors.append(
                    f"{', '.join(missing)} not installed (pip install -e '.[bench]'): "
                    "their rows are empty"
                )
            if "cashews" not in missing:
                subjects += await peers.cashews_subjects(stack, url, token, rows)
            if "aiocache" not in missing:
                subjects += await peers.aiocache_subjects(stack, url, token, rows)
        subjects.sort(key=lambda s: rows.index(s.row))
        series = await micro.measure(
            subjects, rounds=args.rounds, batch_s=args.batch_s, progress=log
        )
        return micro.summarize(subjects, series)


async def run_all(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every part asked for; the results document."""
    errors: list[str] = []
    records: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    durations: dict[str, float] = {}

    async def part(name: str, title: str, work: Callable[[], Awaitable[Any]]) -> Any:
        """Run one part; a failure is recorded and the other parts still run."""
        if name not in args.parts:
            return None
        log(title)
        started = time.monotonic()
        try:
            return await work()
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            log(f"{name} failed: {type(exc).__name__}: {exc}")
            return None
        finally:
            durations[name] = round(time.monotonic() - started, 1)

    quick = args.quick
    trials, warmup = (40, 5) if quick else (300, 30)
    sizes = extras.SIZES_QUICK if quick else extras.SIZES_FULL

    async def codecs() -> Any:
        return extras.codecs(budget_s=0.01 if quick else 0.15)

    records += await part("micro", "per-operation rows", lambda: run_micro(url, args, errors)) or []
    records += (
        await part(
            "stampede",
            "stampede rows",
            lambda: stampede.measure(url, rounds=2 if quick else 9, progress=log),
        )
        or []
    )
    records += (
        await part(
            "hotkey",
            "hot key under expiry row",
            lambda: hotkey.measure(url, duration=3.0 if quick else 10.0, progress=log),
        )
        or []
    )
    records += (
        await part(
            "invalidation",
            "invalidation row",
            lambda: invalidation.measure(url, trials=trials, warmup=warmup),
        )
        or []
    )
    records += (
        await part(
            "tracking",
            "tracking row",
            lambda: tracking.measure(url, trials=trials, warmup=warmup),
        )
        or []
    )
    extra["memory"] = await part(
        "memory", "L1 memory per entry", lambda: extras.memory(5_000 if quick else 20_000)
    )
    extra["scaling"] = await part(
        "scaling", "L1 cost by size", lambda: extras.scaling(sizes, repeats=3 if quick else 5)
    )
    extra["codecs"] = await part("codecs", "serialisation and compression", codecs)
    extra = {k: v for k, v in extra.items() if v is not None}
    errors += [
        f"{r['row']} {r['system']} {r['variant']}: {r['failure']}"
        for r in records
        if r.get("failure")
    ]
    return {"records": records, "extras": extra, "errors": errors, "part_seconds": durations}


def round_floats(obj: Any) -> Any:
    """Floats rounded to 4 decimals, recursively (smaller, stable JSON)."""
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: round_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [round_floats(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("ignore", DeprecationWarning)  # peers' redis close() aliases
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.disable(logging.ERROR)  # aiocache logs every failed call with its traceback
    stem = "suite-quick" if args.quick else "suite"
    out: Path = args.output_dir
    if args.render:
        doc = orjson.loads((out / f"{stem}.json").read_bytes())
        doc["targets"] = report.targets(doc["records"])
        return write(doc, args, out, stem)
    started = time.monotonic()
    with ExitStack() as stack:
        url = args.redis_url
        info = machine()
        if url is None:
            url = stack.enter_context(RedisServer()).url
            info["server"] = "private server started by coherent_cache.testing.RedisServer"
        else:
            info["server"] = "--redis-url"
        info["server_version"] = anyio.run(server_version, url)
        log(f"server {info['server_version']} at {url}; parts: {','.join(args.parts)}")
        try:
            outcome = anyio.run(run_all, url, args)
        except KeyboardInterrupt:
            log("interrupted; every process this run started was stopped")
            return 130
    doc: dict[str, Any] = {
        "benchmark": "suite",
        "format": 1,
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(
            ["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]
        ),
        "mode": "quick" if args.quick else "full",
        "settings": {
            "rounds": args.rounds,
            "batch_ms": args.batch_s * 1000,
            "parts": args.parts,
        },
        "machine": info,
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "duration_s": round(time.monotonic() - started, 1),
        **outcome,
    }
    doc["targets"] = report.targets(doc["records"])
    return write(round_floats(doc), args, out, stem)


def write(doc: dict[str, Any], args: argparse.Namespace, out: Path, stem: str) -> int:
    """Write the JSON, Markdown, plot and docs block; print the report; the exit status."""
    out.mkdir(parents=True, exist_ok=True)
    update = (args.docs or not args.quick) and not args.no_docs
    png = PNG if update else out / f"{stem}.png"
    drew = report.plot(doc, png)
    if not drew:
        doc["errors"].append("matplotlib not installed: no plot")
    (out / f"{stem}.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    md_png = (png.name if update else os.path.relpath(png, out)) if drew else None
    (out / f"{stem}.md").write_text(
        "# Benchmark suite results\n\n"
        + report.markdown(doc, png=os.path.relpath(png, out) if drew else None)
    )
    if update:
        if not report.update_docs(DOCS, report.markdown(doc, png=md_png)):
            log(f"markers not found in {DOCS}: docs not updated")
        else:
            log(f"updated {DOCS.relative_to(ROOT)} and {png.relative_to(ROOT)}")
    print(report.markdown(doc, png=None))
    log(f"wrote {out / stem}.json and .md in {doc['duration_s']:.0f} s")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
