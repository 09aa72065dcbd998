"""Soak test (not in CI): cache instances in separate processes under load, faults on a schedule.

    python -m benchmarks.soak --duration 600            # from the repository root

``--processes`` instances (default 2), each running ``--tasks`` concurrent asyncio tasks
(default 100) of mixed operations (get, set, delete, get_or_set, clear_pattern,
invalidate_tags; `tests.faults.load`), all talking to one private server through a TCP proxy
(`tests.support.proxy.HoldingProxy`). The run is cut into segments of ``--segment`` seconds, each on
fresh keys; in every segment one fault is injected, in turn: SIGKILL + restart on the same
port, CLIENT PAUSE, CLIENT KILL TYPE pubsub, a proxy stall. After each segment the operation
logs go through the fault suite's stale-read checker (`tests.faults.checker`, the bounds of
`tests.faults.conftest`).

Reported (Markdown + JSON under benchmarks/results/): operations, errors surfaced to callers
(must be 0), stale reads beyond the bound (must be 0), RSS of every process at start and end,
the faults injected. Exit status 1 if either must-be-zero count is not.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import orjson  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from coherent_cache.testing import RedisServer  # noqa: E402
from tests.faults.checker import check  # noqa: E402
from tests.faults.conftest import OWN_BOUND, REMOTE_BOUND, fault_fields  # noqa: E402
from tests.support.multiproc import Worker  # noqa: E402
from tests.support.proxy import HoldingProxy  # noqa: E402

FAULTS = ("kill_restart", "client_pause", "client_kill_pubsub", "proxy_stall")
FAULT_AT = 5.0
"""Seconds into each segment when its fault starts."""
FAULT_LENGTH = 1.0
"""Seconds a kill, pause or stall lasts."""


async def inject(fault: str, server: RedisServer, proxy: HoldingProxy, admin_url: str) -> None:
    """Inject one fault and undo it (the kill is followed by a restart on the same port)."""
    if fault == "kill_restart":
        server.kill()
        await anyio.sleep(FAULT_LENGTH)
        server.start()
        return
    if fault == "proxy_stall":
        proxy.hold()
        await anyio.sleep(FAULT_LENGTH)
        proxy.release()
        return
    admin = Redis.from_url(admin_url, socket_timeout=5)
    try:
        if fault == "client_pause":
            await admin.execute_command("CLIENT", "PAUSE", int(FAULT_LENGTH * 1000), "ALL")  # type: ignore[no-untyped-call]
        else:
            await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # type: ignore[no-untyped-call]
    finally:
        await admin.aclose()


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak; return the report."""
    tmp = Path(args.logs)
    tmp.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    segments = max(1, round(args.duration / args.segment))
    report: dict[str, Any] = {
        "duration_s": args.duration,
        "processes": args.processes,
        "tasks_per_process": args.tasks,
        "segment_s": args.segment,
        "bounds_s": {"own": OWN_BOUND, "remote": REMOTE_BOUND},
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "segments": [],
    }
    with RedisServer() as server:
        report["server"] = server.binary.name
        async with HoldingProxy(server.host, server.port) as proxy:
            async with _Workers(args, proxy.url) as procs:
                report["rss_start"] = [await w.call("rss") for w in procs]
                started = time.monotonic()
                for n in range(segments):
                    fault = FAULTS[n % len(FAULTS)]
                    results: list[dict[str, Any]] = [{} for _ in procs]

                    async def load(
                        index: int,
                        worker: Worker,
                        n: int = n,
                        results: list[dict[str, Any]] = results,
                    ) -> None:
                        results[index] = await worker.call(
                            "run_load",
                            args={
                                "proc": index,
                                "prefix": f"s{n}:",
                                "duration": args.segment,
                                "tasks": args.tasks,
                                "seed": n * 100 + index,
                                "owners": len(procs),
                                "owned": 4,
                            },
                            log_path=str(tmp / f"seg{n}-{index}.jsonl"),
                        )

                    async def fault_later(fault: str = fault) -> None:
                        await anyio.sleep(FAULT_AT)
                        await inject(fault, server, proxy, server.url)

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(fault_later)
                        for index, worker in enumerate(procs):
                            tg.start_soon(load, index, worker)
                    ops = [
                        orjson.loads(line)
                        for index in range(len(procs))
                        for line in (tmp / f"seg{n}-{index}.jsonl").read_bytes().splitlines()
                    ]
                    checked = check(ops, own_bound=OWN_BOUND, remote_bound=REMOTE_BOUND)
                    for index in range(len(procs)):
                        (tmp / f"seg{n}-{index}.jsonl").unlink()
                    segment = {
                        "segment": n,
                        "fault": fault,
                        "ops": sum(r["ops"] for r in results),
                        "errors_surfaced": sum(r["error_count"] for r in results),
                        "error_samples": [e for r in results for e in r["errors"]][:5],
                        "reads": checked.reads,
                        "hits": checked.hits,
                        "stale_beyond_bound": len(checked.violations),
                        "stale_samples": checked.violations[:3],
                        "rss": [await w.call("rss") for w in procs],
                    }
                    report["segments"].append(segment)
                    print(orjson.dumps(segment).decode(), flush=True)
                report["elapsed_s"] = time.monotonic() - started
                report["rss_end"] = [await w.call("rss") for w in procs]
                report["final_stats"] = [await w.call("stats") for w in procs]
    segs = report["segments"]
    report["operations"] = sum(s["ops"] for s in segs)
    report["errors_surfaced"] = sum(s["errors_surfaced"] for s in segs)
    report["stale_beyond_bound"] = sum(s["stale_beyond_bound"] for s in segs)
    report["faults_injected"] = {f: sum(1 for s in segs if s["fault"] == f) for f in FAULTS}
    return report


class _Workers:
    """The worker processes, started and stopped together."""

    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url
        self.workers: list[Worker] = []

    async def __aenter__(self) -> list[Worker]:
        for proc in range(self.args.processes):
            fields = fault_fields(self.url, "soak", origin_prefix=f"soak{proc}")
            worker = Worker(timeout=self.args.segment + 60, **fields)
            await worker.__aenter__()
            self.workers.append(worker)
        return self.workers

    async def __aexit__(self, *exc: object) -> None:
        for worker in self.workers:
            await worker.__aexit__(None, None, None)


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown section."""
    mib = 1024 * 1024
    lines = [
        f"Soak run: {report['processes']} processes x {report['tasks_per_process']} tasks, "
        f"{report['elapsed_s']:.0f} s ({len(report['segments'])} segments of "
        f"{report['segment_s']:g} s), server `{report['server']}` behind a TCP proxy, "
        f"{report['machine']}.",
        "",
        "| Measure | Value |",
        "|---|---|",
        f"| Operations | {report['operations']:,} |",
        f"| Errors surfaced to callers | {report['errors_surfaced']} |",
        f"| Stale reads beyond the bound ({report['bounds_s']['remote']:g} s other "
        f"instance, {report['bounds_s']['own']:g} s own) | {report['stale_beyond_bound']} |",
        "| Faults injected | "
        + ", ".join(f"{k} x{v}" for k, v in report["faults_injected"].items())
        + " |",
    ]
    for index, (start, end) in enumerate(zip(report["rss_start"], report["rss_end"], strict=True)):
        lines.append(
            f"| RSS process {index}, start → end | {start / mib:.1f} → {end / mib:.1f} MiB |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse arguments, run, write benchmarks/results/soak.{json,md}."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=100, help="concurrent tasks per process")
    parser.add_argument("--segment", type=float, default=20.0, help="seconds per segment")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak"))
    parser.add_argument("--logs", default="/tmp/coherent-cache-soak")
    args = parser.parse_args()
    report = anyio.run(soak, args)
    out = Path(args.out)
    out.with_suffix(".json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    if report["errors_surfaced"] or report["stale_beyond_bound"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
