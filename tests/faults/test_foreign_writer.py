"""The stale-read checker with a foreign writer (issue 16): a plain redis-py process writes
the namespace's keys directly (SET with the cache's payload, DEL), no bus message tells
anyone; instances with ``client_tracking=True`` in separate processes run the mixed load
of `tests.faults.load` and read those keys. No read may be stale beyond the bound: the
bus-latency bound without faults, the bus-loss bound while every tracking (and bus)
connection is killed under load.

The foreign writer is process ``FOREIGN`` and writes ``own<FOREIGN>:0..OWNED-1``, which every
instance reads (``owners=FOREIGN + 1``) and no instance writes, so an instance's L1 copy
of them is refreshed by nothing but a tracking message. Without client tracking these
tests fail (the copies live ``memory_cache_ttl`` = 60 s): `TestTeeth` checks that.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Final

import anyio
import orjson
from anyio.streams.buffered import BufferedByteReceiveStream
from redis.asyncio import Redis

from ..support.multiproc import ROOT, Worker
from .conftest import REMOTE_BOUND, LoadRun, assert_sound, run_loads, server, workers

INSTANCES: Final = 2
FOREIGN: Final = INSTANCES
"""The foreign writer's process number in the logs (after the instances')."""
OWNED: Final = 4
WINDOW: Final = 0.5
"""The bus-latency bound without faults (`tests.coherence.test_stale_reads.WINDOW`)."""
DURATION: Final = 3.0
TEETH_DURATION: Final = 2.0
MIN_CHANCES: Final = 20
"""Least `stale_read_chances` of a run (a 3 s run has a few hundred)."""


async def run_with_foreign_writer(
    procs: list[Worker], url: str, namespace: str, tmp_path: Path, duration: float = DURATION
) -> LoadRun:
    """`tests.faults.foreign` in its own process and the instances' load, started together;
    one log."""
    log_path = tmp_path / "foreign.jsonl"
    args = {
        "url": url,
        "namespace": namespace,
        "keys": [f"own{FOREIGN}:{i}" for i in range(OWNED)],
        "proc": FOREIGN,
        "duration": duration,
        "seed": 1,
        "log_path": str(log_path),
    }
    command = [sys.executable, "-m", "tests.faults.foreign", orjson.dumps(args).decode()]
    async with await anyio.open_process(command, cwd=ROOT, stderr=None) as writer:
        assert writer.stdin is not None and writer.stdout is not None
        lines = BufferedByteReceiveStream(writer.stdout)
        with anyio.fail_after(30):
            assert orjson.loads(await lines.receive_until(b"\n", 1 << 16))["ready"]
        await writer.stdin.send(b"go\n")
        run = await run_loads(procs, tmp_path, duration=duration, owners=FOREIGN + 1, owned=OWNED)
        with anyio.fail_after(30):
            assert orjson.loads(await lines.receive_until(b"\n", 1 << 16))["ops"] > 0
            assert 0 == await writer.wait()
    run.ops.extend(orjson.loads(line) for line in log_path.read_bytes().splitlines())
    return run


def stale_read_chances(run: LoadRun) -> int:
    """Pairs (foreign write or delete X, instance) where the instance had read the key's
    previous value before X began and read the key again more than `WINDOW` after X
    returned: each a read that a missed tracking message would have made stale."""
    reads: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in run.ops:
        if r["op"] in ("get", "get_or_set"):
            reads.setdefault((r["p"], r["k"]), []).append(r)
    chances = 0
    for x in run.ops:
        if x["p"] != FOREIGN or x.get("u"):
            continue
        for proc in range(INSTANCES):
            mine = reads.get((proc, x["k"]), [])
            held = any(r["e"] < x["s"] and r.get("w") not in (None, x.get("w")) for r in mine)
            again = any(r["s"] > x["e"] + WINDOW for r in mine)
            chances += held and again
    print(f"stale-read chances on the foreign writer's keys: {chances}")
    return chances


async def tracking_stats(worker: Worker) -> dict[str, Any]:
    stats: dict[str, Any] = (await worker.call("stats"))["tracking"]
    return stats


class TestForeignWriter:
    async def test_no_stale_read_beyond_the_bus_latency_bound(
        self, tmp_path: Path, namespace: str
    ) -> None:
        """Foreign SET/DEL while two tracking instances load: every read within 0.5 s."""
        with server() as srv:
            async with workers(INSTANCES, srv.url, namespace, client_tracking=True) as procs:
                run = await run_with_foreign_writer(procs, srv.url, namespace, tmp_path)
                report = assert_sound(run, remote=WINDOW)
                assert stale_read_chances(run) >= MIN_CHANCES, report.summary()
                for worker in procs:
                    stats = await tracking_stats(worker)
                    assert stats["connected"] and stats["losses"] == 0, stats
                    assert stats["keys_dropped"] > 0, stats

    async def test_no_stale_read_while_tracking_connections_are_killed(
        self, tmp_path: Path, namespace: str
    ) -> None:
        """CLIENT KILL TYPE pubsub (the bus's and tracking's connections) three times under
        the foreign writer: the bus-loss bound holds, tracking recovers every time."""
        with server() as srv:
            admin = Redis.from_url(srv.url, socket_timeout=5)
            try:
                async with workers(INSTANCES, srv.url, namespace, client_tracking=True) as procs:

                    async def fault() -> None:
                        for _ in range(3):
                            await anyio.sleep(0.7)
                            await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # type: ignore[no-untyped-call]

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(fault)
                        run = await run_with_foreign_writer(procs, srv.url, namespace, tmp_path)
                    report = assert_sound(run, remote=REMOTE_BOUND)
                    assert stale_read_chances(run) >= MIN_CHANCES, report.summary()
                    for worker in procs:
                        stats = await tracking_stats(worker)
                        assert stats["recoveries"] >= 3, stats
            finally:
                await admin.aclose()


class TestTeeth:
    async def test_without_tracking_the_checker_finds_stale_reads(
        self, tmp_path: Path, namespace: str
    ) -> None:
        """The same run with ``client_tracking=False``: stale reads of the foreign writer's
        keys are found (the test above can fail)."""
        with server() as srv:
            async with workers(INSTANCES, srv.url, namespace, client_tracking=False) as procs:
                run = await run_with_foreign_writer(
                    procs, srv.url, namespace, tmp_path, TEETH_DURATION
                )
        report = run.check(remote=WINDOW)
        stale = [v for v in report.violations if f"own{FOREIGN}:" in v]
        assert stale, report.summary()
