"""Randomized stale-read checker: three cache instances in separate OS processes.

Each process (`tests.coherence.stress_worker`) runs four asyncio tasks doing a seeded
random mix of get / set / delete / clear_pattern on eight keys of one namespace of a real
server, and logs every operation with its `time.monotonic` start and end. Every write
stores a globally unique version, so each read names the write it saw. The checker below
then looks for a read that returned a version an earlier invalidation had made obsolete.

The rule checked. Times are CLOCK_MONOTONIC, shared by all processes on Linux. Let R be a
get of key k that returned version v (misses are not checked), and W the set that wrote v.
An invalidation of k is a set of k (with another version, necessarily, as every version
is written once), a delete of k, or a clear_pattern whose pattern matches k. R violates
the rule if there is an invalidation X of k with

    X.start > W.end                  X came after W in real time, so it obsoleted v, and
    X.end + window(X, R) < R.start   X had returned more than window(X, R) before R began,

where window(X, R) is `WINDOW` (the allowed bus latency) when X ran in another process
than R (guarantees 2 and 3: other instances stop serving the old value within the bus
latency, and no fill that raced with the invalidation is installed), and 0 when X ran in
R's own process (guarantee 1, read-your-writes, and own invalidations being synchronous:
once X returned, this instance never serves a value older than X). Both hold only while
Redis answers and the bus stays subscribed, so the test first requires that no process
counted an L2 error or timeout or lost its bus (else the run is not valid and the test
fails saying so). It also flags a read of a version that was never written, or whose
write began only after the read had returned.

Concurrent writes are not ordered by this rule: when X overlaps W in time, a read may
return either, whatever the order the tiers saw them in.

The workload alternates short write phases with read-only phases longer than `WINDOW`
(see `tests.coherence.stress_worker`), so a stale L1 copy left by a missed invalidation
or a stale fill is not refreshed by the next write before the checker can see it.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import orjson
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from redis.asyncio import Redis

from coherent_cache.keys import compile_pattern
from coherent_cache.serializer import CacheSerializer

from .stress_worker import CYCLE, DURATION, KEYS, WRITE_PHASE, WorkerArgs

ROOT: Final = Path(__file__).resolve().parents[2]
PROCESSES: Final = 3
TASKS: Final = 4
WINDOW: Final = 0.5
"""Allowed bus latency, in seconds: generous for a loaded 2-core machine, yet far below
the 300 s an L1 copy lives when an invalidation is missed."""
SEED_ENV: Final = "COHERENT_CACHE_STRESS_SEED"
"""Set it to replay a failing run's seed (the interleavings still differ)."""
MIN_CHECKED: Final = 100
"""Least number of L1 hits in each of `Report`'s checked_own, checked_remote and settled:
the run must have put the rule to work (a run has thousands of each)."""
STARTUP_TIMEOUT: Final = 20.0
REPORT_LIMIT: Final = 5


@dataclass(frozen=True, slots=True)
class Op:
    """One logged operation; ``key`` holds the pattern of a clear_pattern."""

    proc: int
    task: int
    kind: str
    key: str
    version: str | None
    start: float
    end: float
    l1: bool = False
    bad: str | None = None

    def describe(self, t0: float) -> str:
        """A readable line with times in seconds after ``t0``."""
        what = f"{self.kind}({self.key})"
        if self.kind == "set":
            what = f"set({self.key}, {self.version})"
        elif self.kind == "get":
            source = "L1" if self.l1 else "L2"
            what = f"get({self.key}) -> {self.bad or self.version} from {source}"
        return f"p{self.proc}/t{self.task} {what} [{self.start - t0:.6f}, {self.end - t0:.6f}]"


@dataclass
class Report:
    """What the checker found."""

    t0: float
    violations: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    """Stale reads by the obsoleting operation and where it ran (same or other process)."""
    oldest: float = 0.0
    """The longest time a stale read began after its obsoleting operation returned."""
    oldest_violation: str = ""
    ops: dict[int, dict[str, int]] = field(default_factory=dict)
    hits: int = 0
    l1_hits: int = 0
    checked_own: int = 0
    """L1 hits for which an invalidation by the reading process had obsoleted a version."""
    checked_remote: int = 0
    """L1 hits for which another process's invalidation had, past `WINDOW`, done so."""
    checked_foreign: int = 0
    """L1 hits for which the foreign writer's write or delete had, past `WINDOW`, done so."""
    settled: int = 0
    """L1 hits of a key no set, delete or clear_pattern had touched within `WINDOW` before:
    where a missed invalidation or a stale fill shows, as nothing refreshes the copy."""


def load_ops(paths: Iterable[Path]) -> list[Op]:
    """Read the JSON-lines logs of the worker processes."""
    ops: list[Op] = []
    for path in paths:
        for line in path.read_bytes().splitlines():
            raw = orjson.loads(line)
            ops.append(
                Op(
                    proc=raw["p"],
                    task=raw["t"],
                    kind=raw["op"],
                    key=raw["k"],
                    version=raw.get("w"),
                    start=raw["s"],
                    end=raw["e"],
                    l1=bool(raw.get("l1", False)),
                    bad=raw.get("bad"),
                )
            )
    return ops


class _Invalidations:
    """The invalidations of one key, sorted by start, for queries by process."""

    def __init__(self, ops: list[Op], procs: Iterable[int] = range(PROCESSES)) -> None:
        self.ops = sorted(ops, key=lambda op: op.start)
        self.starts = [op.start for op in self.ops]
        # latest_end[i]: the latest end among ops[:i].
        self.latest_end = [float("-inf")]
        for op in self.ops:
            self.latest_end.append(max(self.latest_end[-1], op.end))
        # suffix[p][i]: among ops[i:] run by process p, the one that ended first.
        self.suffix: dict[int, list[Op | None]] = {}
        for proc in procs:
            best: Op | None = None
            column: list[Op | None] = [None] * (len(self.ops) + 1)
            for i in range(len(self.ops) - 1, -1, -1):
                op = self.ops[i]
                if op.proc == proc and (best is None or op.end < best.end):
                    best = op
                column[i] = best
            self.suffix[proc] = column

    def first_ended_after(self, proc: int, moment: float) -> Op | None:
        """Among the ones by ``proc`` that started after ``moment``, the first to end."""
        return self.suffix[proc][bisect.bisect_right(self.starts, moment)]

    def quiet_since(self, moment: float) -> float:
        """When the last of the ones that started before ``moment`` ended."""
        return self.latest_end[bisect.bisect_left(self.starts, moment)]


def check(ops: list[Op], t0: float) -> Report:
    """Apply the module docstring's rule to every read hit; count what it constrained."""
    report = Report(t0)
    for op in ops:
        counts = report.ops.setdefault(op.proc, {})
        counts[op.kind] = counts.get(op.kind, 0) + 1
    writes: dict[str, Op] = {}
    for op in ops:
        if op.kind == "set":
            assert op.version is not None and op.version not in writes, op
            writes[op.version] = op
    patterns = {op.key for op in ops if op.kind == "clear_pattern"}
    matches = {p: compile_pattern(p) for p in patterns}
    invalidations: dict[str, _Invalidations] = {}
    first_write_end: dict[str, float] = {}
    # The cache processes, and the foreign writer (process `PROCESSES`) when it ran.
    procs = sorted({*range(PROCESSES), *(op.proc for op in ops)})
    for key in KEYS:
        invalidations[key] = _Invalidations(
            [
                op
                for op in ops
                if (op.kind in ("set", "delete") and op.key == key)
                or (op.kind == "clear_pattern" and matches[op.key](key))
            ],
            procs,
        )
        ends = [w.end for w in writes.values() if w.key == key]
        first_write_end[key] = min(ends, default=float("inf"))

    def window(x: Op, r: Op) -> float:
        return 0.0 if x.proc == r.proc else WINDOW

    for read in ops:
        if read.kind != "get" or (read.version is None and read.bad is None):
            continue
        report.hits += 1
        report.l1_hits += read.l1
        invs = invalidations[read.key]
        write = writes.get(read.version) if read.version is not None else None
        if write is None or write.key != read.key:
            report.violations.append(
                f"read of a value never written to {read.key}: {read.describe(t0)}"
            )
            continue
        if write.start > read.end:
            report.violations.append(
                f"read returned before the write began: {read.describe(t0)}; "
                f"write {write.describe(t0)}"
            )
            continue
        for proc in procs:
            x = invs.first_ended_after(proc, write.end)
            if x is not None and x.end + window(x, read) < read.start:
                report.violations.append(
                    f"stale read: {read.describe(t0)} returned the value of "
                    f"{write.describe(t0)}, obsoleted by {x.describe(t0)}, which returned "
                    f"{read.start - x.end:.6f}s before the read began "
                    f"(allowed: {window(x, read):g}s, "
                    f"{'same process' if x.proc == read.proc else 'other process'})"
                )
                kind = f"{x.kind}, {'same' if x.proc == read.proc else 'other'} process"
                report.kinds[kind] = report.kinds.get(kind, 0) + 1
                if read.start - x.end > report.oldest:
                    report.oldest = read.start - x.end
                    report.oldest_violation = report.violations[-1]
                break
        if read.l1:
            constrained = {
                proc
                for proc in procs
                if (x := invs.first_ended_after(proc, first_write_end[read.key])) is not None
                and x.end + window(x, read) < read.start
            }
            report.checked_own += read.proc in constrained
            report.checked_remote += bool(constrained - {read.proc})
            report.checked_foreign += PROCESSES in constrained
            report.settled += float("-inf") < invs.quiet_since(read.start) < read.start - WINDOW
    return report


def summarize(seed: int, report: Report, summaries: list[dict[str, Any]]) -> str:
    """The seed, the counts and the first violations, for assertion messages."""
    lines = [
        f"seed {seed} (replay: {SEED_ENV}={seed}), t0 = {report.t0:.6f} (times below are "
        f"seconds after t0), window {WINDOW}s",
        f"read hits checked: {report.hits} ({report.l1_hits} from L1); L1 hits constrained "
        f"by an own invalidation: {report.checked_own}, by another process's: "
        f"{report.checked_remote}, by the foreign writer's: {report.checked_foreign}; "
        f"settled L1 hits: {report.settled}",
    ]
    lines.extend(f"  process {proc}: {report.ops[proc]}" for proc in sorted(report.ops))
    lines.extend(f"  summary: {summary}" for summary in summaries)
    if report.violations:
        lines.append(
            f"{len(report.violations)} violations; stale reads by obsoleting operation: "
            f"{report.kinds}, the latest {report.oldest:.6f}s after it returned; "
            f"the first {REPORT_LIMIT}:"
        )
        lines.extend(f"  {v}" for v in report.violations[:REPORT_LIMIT])
        lines.append(f"the stale read latest after its invalidation:\n  {report.oldest_violation}")
    return "\n".join(lines)


@dataclass
class _Running:
    process: Process
    stdout: BufferedByteReceiveStream
    stderr_path: Path


async def _read_message(running: _Running, wanted: str) -> dict[str, Any]:
    """The next stdout line that is a JSON object holding ``wanted``."""
    while True:
        line = await running.stdout.receive_until(b"\n", 1 << 20)
        with contextlib.suppress(orjson.JSONDecodeError):
            message = orjson.loads(line)
            if isinstance(message, dict) and wanted in message:
                return message


def _stderr_tail(running: _Running) -> str:
    text = running.stderr_path.read_text(errors="replace")
    return text[-3000:]


@contextlib.asynccontextmanager
async def stress_processes(
    tmp_path: Path, redis_url: str, namespace: str, seed: int, **config: Any
) -> AsyncIterator[list[_Running]]:
    """Start the worker processes and wait until each reports ready; kill leftovers after."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    running: list[_Running] = []
    with contextlib.ExitStack() as files:
        try:
            for proc in range(PROCESSES):
                args: WorkerArgs = {
                    "config": {
                        "redis_url": redis_url,
                        "namespace": namespace,
                        "bus_health_check_interval": 0.25,
                        "origin_prefix": f"stress{proc}",
                        **config,
                    },
                    "proc": proc,
                    "seed": seed,
                    "tasks": TASKS,
                    "log": str(tmp_path / f"ops-{proc}.jsonl"),
                }
                stderr_path = tmp_path / f"stderr-{proc}.txt"
                stderr = files.enter_context(stderr_path.open("wb"))
                process = await anyio.open_process(
                    [sys.executable, "-m", "tests.coherence.stress_worker", orjson.dumps(args)],
                    cwd=ROOT,
                    env=env,
                    stderr=stderr,
                )
                assert process.stdout is not None
                running.append(
                    _Running(process, BufferedByteReceiveStream(process.stdout), stderr_path)
                )
            for worker in running:
                with anyio.fail_after(STARTUP_TIMEOUT):
                    await _read_message(worker, "ready")
            yield running
        finally:
            with anyio.CancelScope(shield=True):
                for worker in running:
                    if worker.process.returncode is None:
                        worker.process.kill()
                    with anyio.move_on_after(5):
                        await worker.process.wait()
                    await worker.process.aclose()


async def foreign_writer(redis_url: str, namespace: str, t0: float, seed: int, log: Path) -> None:
    """A writer that is not a cache instance: SET and UNLINK straight into Redis.

    It follows the workers' write phases (`CYCLE`, `WRITE_PHASE`), writes versions
    ``{"w": "F-<n>"}`` in the cache's payload format, and logs its operations like a
    worker, as process `PROCESSES`. Only client tracking tells the instances about them.
    """
    rng = random.Random(f"{seed}:foreign")
    payload = CacheSerializer()
    entries: list[dict[str, Any]] = []
    counter = itertools.count(1)
    async with Redis.from_url(redis_url, socket_timeout=5) as client:
        await anyio.sleep(max(0.0, t0 - time.monotonic()))
        while (now := time.monotonic()) < t0 + DURATION:
            if (now - t0) % CYCLE >= WRITE_PHASE:
                await anyio.sleep(CYCLE - (now - t0) % CYCLE)
                continue
            key = rng.choice(KEYS)
            start = time.monotonic()
            if rng.random() < 0.75:
                version = f"F-{next(counter)}"
                await client.set(f"{namespace}:{key}", payload.serialize({"w": version}))
                record: dict[str, Any] = {"op": "set", "k": key, "w": version, "ok": True}
            else:
                await client.unlink(f"{namespace}:{key}")
                record = {"op": "delete", "k": key}
            entries.append({"p": PROCESSES, "t": 0, **record, "s": start, "e": time.monotonic()})
            await anyio.sleep(rng.uniform(0.0, 0.01))
    await anyio.Path(log).write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))


async def run_stress(
    tmp_path: Path, redis_url: str, namespace: str, *, foreign: bool = False, **config: Any
) -> tuple[Report, list[dict[str, Any]], str]:
    """Run the worker processes (and the foreign writer) once; check their logs."""
    seed = int(os.environ.get(SEED_ENV) or random.randrange(2**32))
    print(f"stale-read checker seed: {seed} (replay with {SEED_ENV}={seed})")
    summaries: list[dict[str, Any]] = []
    logs = [tmp_path / f"ops-{proc}.jsonl" for proc in range(PROCESSES)]
    async with stress_processes(tmp_path, redis_url, namespace, seed, **config) as running:
        t0 = time.monotonic() + (0.2 if foreign else 0.0)
        go = orjson.dumps({"t0": t0}) + b"\n"
        for worker in running:
            assert worker.process.stdin is not None
            await worker.process.stdin.send(go)
        async with anyio.create_task_group() as tg:
            if foreign:
                logs.append(tmp_path / "ops-foreign.jsonl")
                tg.start_soon(foreign_writer, redis_url, namespace, t0, seed, logs[-1])
            with anyio.fail_after(DURATION + STARTUP_TIMEOUT):
                for worker in running:
                    try:
                        done = await _read_message(worker, "done")
                    except anyio.EndOfStream:
                        await worker.process.wait()
                        pytest.fail(
                            f"worker exited with {worker.process.returncode} (seed {seed}):\n"
                            f"{_stderr_tail(worker)}"
                        )
                    summaries.append(done["summary"])
                    assert 0 == await worker.process.wait(), _stderr_tail(worker)

    report = check(load_ops(logs), t0)
    message = summarize(seed, report, summaries)
    print(message)
    disturbed = [
        s
        for s in summaries
        if s["l2_errors"]
        or s["l2_timeouts"]
        or s["bus_losses"]
        or not s["bus_connected"]
        or s["tracking_losses"]
    ]
    assert [] == disturbed, f"run not valid: Redis, the bus or tracking failed\n{message}"
    return report, summaries, message


class TestStaleReads:
    @pytest.mark.usefixtures("raw_redis")  # deletes the namespace's keys afterwards
    async def test_no_instance_serves_a_value_after_its_invalidation(
        self, redis_url: str, namespace: str, tmp_path: Path
    ) -> None:
        """No read returns a version obsoleted by an invalidation that returned long before."""
        report, _, message = await run_stress(tmp_path, redis_url, namespace)
        assert [] == report.violations, message
        assert report.checked_own >= MIN_CHECKED, message
        assert report.checked_remote >= MIN_CHECKED, message
        assert report.settled >= MIN_CHECKED, message

    @pytest.mark.usefixtures("raw_redis")
    async def test_foreign_writer_with_client_tracking(
        self, redis_url: str, namespace: str, tmp_path: Path
    ) -> None:
        """With ``client_tracking`` on, a writer that is no cache instance (plain SET and
        UNLINK from this test's process) obsoletes versions too: no instance serves one
        past the window (issue 16). Without tracking, its writes would reach no L1."""
        report, summaries, message = await run_stress(
            tmp_path, redis_url, namespace, foreign=True, client_tracking=True
        )
        assert [] == report.violations, message
        assert report.checked_foreign >= MIN_CHECKED, message
        assert report.settled >= MIN_CHECKED, message
        assert all(s["tracking_messages"] > 0 for s in summaries), message


def _op(proc: int, kind: str, key: str, version: str | None, start: float, end: float) -> Op:
    return Op(proc, 0, kind, key, version, start, end, l1=kind == "get")


class TestChecker:
    def test_flags_a_remote_invalidation_past_the_window(self) -> None:
        """A read of a version another process deleted over WINDOW before is a violation."""
        late = 3 + WINDOW + 0.01
        ops = [
            _op(0, "set", "k:0", "0-1", 0, 1),
            _op(1, "delete", "k:0", None, 2, 3),
            _op(2, "get", "k:0", "0-1", late, late + 0.001),
        ]

        report = check(ops, 0)

        assert ["delete, other process"] == list(report.kinds)
        assert 1 == len(report.violations)

    def test_allows_reads_within_the_window_and_concurrent_writes(self) -> None:
        """An old version may be read within WINDOW of a remote invalidation, or if overlapped."""
        soon = 3 + WINDOW - 0.01
        ops = [
            _op(0, "set", "k:0", "0-1", 0, 1),
            _op(1, "clear_pattern", "k:*", None, 2, 3),
            _op(2, "get", "k:0", "0-1", soon, soon + 0.001),
            _op(0, "set", "k:1", "0-2", 0, 2),
            _op(1, "set", "k:1", "1-1", 1, 3),
            _op(2, "get", "k:1", "0-2", 10, 10.001),
        ]

        assert [] == check(ops, 0).violations

    def test_own_invalidations_have_no_window(self) -> None:
        """In the invalidating process, the old version is stale as soon as it returned."""
        ops = [
            _op(0, "set", "k:2", "0-1", 0, 1),
            _op(1, "clear_pattern", "k:[0-3]", None, 2, 3),
            _op(1, "get", "k:2", "0-1", 3.001, 3.002),
            _op(2, "get", "k:3", "2-9", 4, 4.001),
        ]

        report = check(ops, 0)

        assert {"clear_pattern, same process": 1} == report.kinds
        assert report.violations[1].startswith("read of a value never written to k:3")
