"""Coherence benchmark: how long another instance keeps serving an invalidated L1 value.

Run from the repository root, in the project's virtualenv::

    python -m benchmarks.standalone.coherence       # private valkey-server, 300 trials
    python -m benchmarks.standalone.coherence --trials 600 --redis-url redis://127.0.0.1:6379/0

Two cache instances, A and B, run in separate OS processes on one server and namespace.
Per trial, B holds a key in its L1 and spins on it in its own process (``--receiver
block``: sleeps until its L1 drops it); A runs ``delete``, ``set`` (a new value) or
``clear_pattern`` (in rotation) and records ``time.monotonic()`` just before the call and
just after it returns. B records the moment its L1 stops serving the key.
CLOCK_MONOTONIC is system-wide on Linux, so

- stale window after return = B gone - A returned (negative: B dropped it first);
- from op start             = B gone - A started.

The same is measured for a plain ``redis.asyncio`` PUBLISH in one process and two plain
subscribers in others (``PubSub.get_message`` and a bare ``read_response`` loop), trial
by trial interleaved with the cache trials. The driver's own RPCs to the processes are
outside every measured interval. Probes in the processes cut each interval into
segments (see `SEGMENTS`). Prints a table and writes ``benchmarks/results/coherence.json``.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import itertools
import math
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import anyio
import orjson
import redis
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from redis.asyncio import Redis

from coherent_cache.testing import RedisServer, find_server_binary

ROOT: Final = Path(__file__).resolve().parents[2]
WORKER: Final = ROOT / "benchmarks" / "workers" / "_coherence_worker.py"
RESULTS: Final = ROOT / "benchmarks" / "results" / "coherence.json"
KINDS: Final = ("delete", "set", "clear_pattern")
TARGET_P99_MS: Final = 5.0
MISSING: Final = {"__missing__": True}


class WorkerError(RuntimeError):
    """A worker process failed a command or broke the protocol."""


class WorkerProcess:
    """One benchmark process (``_coherence_worker.py``); every wait is bounded."""

    def __init__(self, name: str, role: str, args: dict[str, Any], *, timeout: float) -> None:
        self.name = name
        self.role = role
        self.args = args
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._process: Process | None = None
        self._reader: BufferedByteReceiveStream | None = None

    async def start(self) -> None:
        """Start the process and wait for its ``ready`` line."""
        self._process = await anyio.open_process(
            [sys.executable, str(WORKER), self.role, orjson.dumps(self.args).decode()],
            cwd=ROOT,
            stderr=None,
        )
        assert self._process.stdout is not None
        self._reader = BufferedByteReceiveStream(self._process.stdout)
        await self._read(lambda line: bool(line.get("ready")), self.timeout)

    async def stop(self) -> None:
        """Ask the process to exit; kill it (by its pid) after 5 s. Shielded from cancellation."""
        process = self._process
        if process is None:
            return
        self._process = None
        with anyio.CancelScope(shield=True):
            try:
                if process.stdin is not None:
                    await process.stdin.send(b'{"op": "exit"}\n')
                    await process.stdin.aclose()
                with anyio.fail_after(5):
                    await process.wait()
            except (TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                process.kill()
                with anyio.move_on_after(5):
                    await process.wait()
            finally:
                with anyio.move_on_after(5):
                    await process.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _read(self, want: Any, within: float) -> dict[str, Any]:
        assert self._reader is not None
        try:
            with anyio.fail_after(within):
                while True:
                    raw = await self._reader.receive_until(b"\n", 1 << 24)
                    if not raw.startswith(b"{"):
                        continue  # not ours (a stray print); the protocol is JSON objects
                    line: dict[str, Any] = orjson.loads(raw)
                    if want(line):
                        return line
        except (anyio.EndOfStream, anyio.IncompleteRead) as exc:
            raise WorkerError(f"{self.name}: process exited") from exc
        except TimeoutError as exc:
            raise WorkerError(f"{self.name}: no reply within {within}s") from exc

    async def send(self, op: str, **args: Any) -> int:
        """Send a command; return its id (read the reply with `reply`)."""
        assert self._process is not None and self._process.stdin is not None
        ident = next(self._ids)
        await self._process.stdin.send(orjson.dumps({"id": ident, "op": op, **args}) + b"\n")
        return ident

    async def armed(self, ident: int) -> dict[str, Any]:
        """Wait for the ``armed`` line of command ``ident``."""
        line = await self._read(lambda x: x.get("id") == ident, self.timeout)
        if not line.get("armed"):
            raise WorkerError(f"{self.name}: {line.get('error', line)}")
        return line

    async def reply(self, ident: int) -> dict[str, Any]:
        """Wait for the reply of command ``ident``."""
        line = await self._read(lambda x: x.get("id") == ident and "ok" in x, self.timeout)
        if not line["ok"]:
            raise WorkerError(f"{self.name}: {line['error']}")
        return line

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send a command and return its reply."""
        return await self.reply(await self.send(op, **args))


# -- samples and statistics ------------------------------------------------------------


@dataclass
class Sample:
    """One trial: ``time.monotonic()`` values (seconds) from the sender's and receiver's process.

    ``started``/``returned`` bracket the sender's call; ``send_begin`` is when its last
    command write began (for ``clear_pattern``: the PUBLISH, after SCAN and UNLINK);
    ``read`` is when the receiver's connection returned the message (parsed RESP);
    ``bus`` when the cache's bus listener handed the decoded message on, ``dropped`` when
    B's L1 actor dropped the key (cache only); ``gone`` when the receiver's spinner saw it
    (``--receiver block``: when the receiver woke up to it).
    """

    trial: int
    kind: str
    started: float
    returned: float
    gone: float | None
    send_begin: float | None = None
    read: float | None = None
    bus: float | None = None
    dropped: float | None = None
    echo_read: float | None = None
    """Cache: when A's own bus connection read A's own message back (A skips it)."""

    @property
    def missed(self) -> bool:
        """The receiver kept serving the key past the spin timeout."""
        return self.gone is None

    def after_return(self) -> float:
        """Seconds from the sender's call returning to the receiver not serving."""
        assert self.gone is not None
        return self.gone - self.returned

    def from_start(self) -> float:
        """Seconds from the sender's call starting to the receiver not serving."""
        assert self.gone is not None
        return self.gone - self.started

    def segments(self) -> dict[str, float] | None:
        """``from_start`` cut at the probes (None if a probe is missing)."""
        if self.gone is None or self.send_begin is None or self.read is None:
            return None
        parts = {
            "pre_send": self.send_begin - self.started,
            "send_to_read": self.read - self.send_begin,
        }
        if self.kind == "publish":
            parts["read_to_seen"] = self.gone - self.read
            return parts
        if self.bus is None or self.dropped is None:
            return None
        parts["read_to_callback"] = self.bus - self.read
        parts["callback_to_drop"] = self.dropped - self.bus
        parts["drop_to_seen"] = self.gone - self.dropped
        return parts


SEGMENTS: Final = (
    ("pre_send", "sender: call start -> last command write begins"),
    ("send_to_read", "write begins -> receiver's connection returns the message"),
    ("read_to_callback", "cache: message read -> decoded, origin checked (bus callback)"),
    ("callback_to_drop", "cache: bus callback -> L1 actor dropped the key (mailbox hop)"),
    ("drop_to_seen", "cache: L1 dropped -> spinner sees it"),
    ("read_to_seen", "raw: message read -> spinner sees it"),
)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) with linear interpolation between closest ranks."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(seconds: list[float]) -> dict[str, float | int | None]:
    """n, p50, p90, p99, max, min and mean, in milliseconds rounded to the microsecond."""
    if not seconds:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "min": None}
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 0.50), 3),
        "p90": round(percentile(ms, 0.90), 3),
        "p99": round(percentile(ms, 0.99), 3),
        "max": round(max(ms), 3),
        "min": round(min(ms), 3),
        "mean": round(statistics.fmean(ms), 3),
    }


def describe(samples: list[Sample]) -> dict[str, Any]:
    """Statistics of a group of trials."""
    hit = [s for s in samples if not s.missed]
    cut = [parts for s in hit if (parts := s.segments()) is not None]
    echoes = [
        (s.send_begin, s.echo_read, s.returned)
        for s in samples
        if s.echo_read is not None and s.send_begin is not None
    ]
    sender: dict[str, Any] = {
        "write_to_return_ms": summary(
            [s.returned - s.send_begin for s in samples if s.send_begin is not None]
        )
    }
    if echoes:
        early = sum(echo < returned for _, echo, returned in echoes)
        sender["own_echo_read_before_return"] = round(early / len(echoes), 3)
        sender["write_to_own_echo_read_ms"] = summary([echo - w for w, echo, _ in echoes])
    return {
        "trials": len(samples),
        "missed": len(samples) - len(hit),
        "after_return_ms": summary([s.after_return() for s in hit]),
        "from_start_ms": summary([s.from_start() for s in hit]),
        "call_ms": summary([s.returned - s.started for s in samples]),
        "segments_ms": {name: summary([c[name] for c in cut if name in c]) for name, _ in SEGMENTS},
        "sender": sender,
    }


def ratio(cache: float | int | None, raw: float | int | None) -> float | None:
    """cache / raw, or None unless both are positive (a ratio of signed values means nothing)."""
    if cache is None or raw is None or cache <= 0 or raw <= 0:
        return None
    return round(cache / raw, 2)


def ratios(cache: dict[str, Any], raw: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """cache / raw of p50, p99 and max, after return and from start."""
    return {
        metric: {q: ratio(cache[metric][q], raw[metric][q]) for q in ("p50", "p99", "max")}
        for metric in ("after_return_ms", "from_start_ms")
    }


# -- the run ---------------------------------------------------------------------------

RAW_READERS: Final = ("pubsub", "connection")


@dataclass
class Outcome:
    """Everything measured, plus what went wrong."""

    cache: list[Sample]
    raw: dict[str, list[Sample]]
    errors: list[str]
    wrong_values: int
    aborted: str | None
    seconds: float


def bus_payload(trial: int, reader: str) -> str:
    """A raw message the size and shape of the cache's own ``delete`` message."""
    body = {
        "v": 1,
        "op": "delete",
        "keys": [f"t{trial}:k"],
        "origin": f"rawbench-{reader}",
        "ts": time.time_ns() // 1_000_000,
    }
    return orjson.dumps(body).decode()


async def cache_trial(
    a: WorkerProcess, b: WorkerProcess, trial: int, kind: str, within: float, mode: str
) -> tuple[Sample, bool]:
    """One cache trial; returns the sample and whether B read the right value afterwards.

    B is told how many bus messages A has published so far and waits until it applied as
    many before it fills its L1, so no earlier invalidation can hit the key mid-trial.
    """
    key = f"t{trial}:k"
    published = (await a.call("act", kind="set", key=key, value={"v": 1}, ttl=60))["published"]
    ident = await b.send("arm", key=key, applied=published, within=within, mode=mode)
    await b.armed(ident)
    new = {"trial": trial, "v": 2}
    done = await a.call("act", kind=kind, key=key, pattern=f"t{trial}:*", value=new, ttl=60)
    seen = await b.reply(ident)
    sample = Sample(
        trial,
        kind,
        started=done["t0"],
        returned=done["t1"],
        gone=seen["gone"],
        send_begin=done["send_begin"],
        read=seen["read"],
        bus=seen["bus"],
        dropped=seen["dropped"],
        echo_read=done["echo_read"],
    )
    expected = new if kind == "set" else MISSING
    right = sample.missed or seen["value"] == expected
    return sample, right


async def raw_trial(
    pub: WorkerProcess, sub: WorkerProcess, channel: str, trial: int, within: float, mode: str
) -> Sample:
    """One raw PUBLISH -> subscriber trial."""
    payload = bus_payload(trial, sub.name)
    ident = await sub.send("arm", payload=payload, within=within, mode=mode)
    await sub.armed(ident)
    done = await pub.call("publish", channel=channel, payload=payload)
    seen = await sub.reply(ident)
    return Sample(
        trial,
        "publish",
        started=done["t0"],
        returned=done["t1"],
        gone=seen["gone"],
        send_begin=done["send_begin"],
        read=seen["read"],
    )


async def run(url: str, args: argparse.Namespace) -> Outcome:
    """Start the five processes, run warm-up and measured trials, stop the processes.

    Each iteration runs one cache trial and one trial of each raw baseline, so slow
    phases of a shared machine hit all of them alike.
    """
    namespace = f"bench-{secrets.token_hex(4)}"
    within = args.within
    started = time.monotonic()
    cache_samples: list[Sample] = []
    raw_samples: dict[str, list[Sample]] = {reader: [] for reader in RAW_READERS}
    errors: list[str] = []
    wrong = 0
    aborted: str | None = None
    config = {"redis_url": url, "namespace": namespace}
    channels = {reader: f"{namespace}:raw-{reader}" for reader in RAW_READERS}
    a = WorkerProcess("A", "cache", config, timeout=30)
    b = WorkerProcess("B", "cache", config, timeout=30)
    pub = WorkerProcess("raw-pub", "raw-pub", {"url": url}, timeout=30)
    subs = {
        reader: WorkerProcess(
            f"raw-sub-{reader}",
            "raw-sub",
            {"url": url, "channel": channels[reader], "reader": reader},
            timeout=30,
        )
        for reader in RAW_READERS
    }
    procs = [a, b, pub, *subs.values()]
    try:
        with anyio.fail_after(min(60.0, args.deadline)):
            async with anyio.create_task_group() as tg:
                for proc in procs:
                    tg.start_soon(proc.start)
        for proc in procs:
            proc.timeout = within + 10.0
        budget = max(1.0, args.deadline - (time.monotonic() - started))
        with anyio.move_on_after(budget) as scope:
            for n in range(args.warmup + args.trials):
                trial = n - args.warmup
                kind = KINDS[n % len(KINDS)]
                # Rotate which of the three goes first, so none always follows the
                # driver's idle moment; the operation kind rotates with n itself.
                order = ["cache", *RAW_READERS]
                shift = (n // len(KINDS)) % len(order)
                order = order[shift:] + order[:shift]
                raws: dict[str, Sample] = {}
                try:
                    for which in order:
                        if which == "cache":
                            sample, right = await cache_trial(a, b, n, kind, within, args.receiver)
                        else:
                            raws[which] = await raw_trial(
                                pub, subs[which], channels[which], n, within, args.receiver
                            )
                except WorkerError as exc:
                    errors.append(f"trial {trial}: {exc}")
                    if len(errors) >= 5:
                        aborted = "5 trials failed"
                        break
                    continue
                if trial >= 0:
                    sample.trial = trial
                    cache_samples.append(sample)
                    wrong += not right
                    for reader, raw in raws.items():
                        raw.trial = trial
                        raw_samples[reader].append(raw)
        if scope.cancelled_caught:
            aborted = f"deadline of {args.deadline}s reached"
        try:
            with anyio.move_on_after(5):
                await a.call("clear")  # the benchmark's keys; they also expire in 60 s
        except WorkerError as exc:
            errors.append(f"cleanup: {exc}")
    finally:
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for proc in procs:
                    tg.start_soon(proc.stop)
    return Outcome(cache_samples, raw_samples, errors, wrong, aborted, time.monotonic() - started)


# -- machine, report -------------------------------------------------------------------


def machine(*, private: bool) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "redis_py": redis.__version__,
        "anyio": importlib.metadata.version("anyio"),
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
        binary = find_server_binary()
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        info["server_binary"] = str(binary)
        info["server_binary_version"] = done.stdout.strip()
    except Exception as exc:
        info["server_binary_version"] = f"unavailable: {exc}"
    info["server"] = "private RedisServer" if private else "--redis-url"
    info["git"] = git_state()
    return info


def git_state() -> dict[str, Any]:
    """The commit measured, and uncommitted changes to the library (they count too)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout.strip()

    try:
        changed = git("status", "--porcelain", "--", "coherent_cache").splitlines()
        return {"commit": git("rev-parse", "HEAD"), "coherent_cache_uncommitted": changed}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": str(exc)}


async def server_version(url: str) -> str:
    """The server's own idea of its name and version (INFO server)."""
    client = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    async with client:
        server = await client.info("server")
    name = "valkey" if "valkey_version" in server else "redis"
    return f"{name} {server.get('valkey_version') or server.get('redis_version')}"


def report(outcome: Outcome, args: argparse.Namespace, info: dict[str, Any]) -> dict[str, Any]:
    """The results document (also what is written as JSON)."""
    cache = {kind: describe([s for s in outcome.cache if s.kind == kind]) for kind in KINDS}
    cache["all"] = describe(outcome.cache)
    raw = {reader: describe(samples) for reader, samples in outcome.raw.items()}
    missed = cache["all"]["missed"] + sum(r["missed"] for r in raw.values())
    p99 = cache["all"]["after_return_ms"]["p99"]
    met = p99 is not None and p99 < TARGET_P99_MS and cache["all"]["missed"] == 0
    return {
        "benchmark": "coherence",
        "format": 1,
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.standalone.coherence", *sys.argv[1:]]),
        "machine": info,
        "settings": {
            "trials": args.trials,
            "warmup": args.warmup,
            "receiver": args.receiver,
            "wait_timeout_s": args.within,
            "percentiles": "linear interpolation between closest ranks",
            "segments": dict(SEGMENTS),
        },
        "cache": cache,
        "raw": raw,
        "ratio_cache_over_raw": {
            reader: {name: ratios(cache[name], raw[reader]) for name in (*KINDS, "all")}
            for reader in raw
        },
        "target": {
            "after_return_p99_ms": TARGET_P99_MS,
            "measured_p99_ms": p99,
            "met": met,
        },
        "missed": missed,
        "wrong_values": outcome.wrong_values,
        "errors": outcome.errors,
        "aborted": outcome.aborted,
        "duration_s": round(outcome.seconds, 2),
        "samples_us": {
            "columns": ["trial", "kind", "after_return", "from_start", *dict(SEGMENTS)],
            "cache": [_row(s) for s in outcome.cache],
            **{
                f"raw_{reader}": [_row(s) for s in samples]
                for reader, samples in outcome.raw.items()
            },
        },
    }


def _us(x: float | None) -> int | None:
    return None if x is None else round(x * 1e6)


def _row(s: Sample) -> list[Any]:
    parts = s.segments() or {}
    return [
        s.trial,
        s.kind,
        None if s.missed else _us(s.after_return()),
        None if s.missed else _us(s.from_start()),
        *(_us(parts.get(name)) for name, _ in SEGMENTS),
    ]


def _fmt(x: float | int | None, width: int = 8) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.3f}"


def _rows(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [(f"cache {k}", doc["cache"][k]) for k in (*KINDS, "all")]
    return rows + [(f"raw {reader}", row) for reader, row in doc["raw"].items()]


def table(doc: dict[str, Any]) -> Iterator[str]:
    """The human-readable report."""
    m, s = doc["machine"], doc["settings"]
    yield (
        f"coherence benchmark: {s['trials']} trials + {s['warmup']} warm-up, "
        f"{m['server_version']}, Python {m['python']}, {m['nproc']} CPUs, "
        f"receiver {s['receiver']}"
    )
    yield ""
    yield f"{'':26}{'after A returned (ms)':^27}  {'from A started (ms)':^27}  {'A call':>7}"
    heads = "".join(f"{h:>9}" for h in ("p50", "p99", "max"))
    yield f"{'operation':20}{'n':>4}{'miss':>5}  {heads}  {heads}  {'p50':>7}"
    for label, row in _rows(doc):
        after, start = row["after_return_ms"], row["from_start_ms"]
        yield (
            f"{label:20}{row['trials']:>4}{row['missed']:>5}  "
            f"{_fmt(after['p50'], 9)}{_fmt(after['p99'], 9)}{_fmt(after['max'], 9)}  "
            f"{_fmt(start['p50'], 9)}{_fmt(start['p99'], 9)}{_fmt(start['max'], 9)}  "
            f"{_fmt(row['call_ms']['p50'], 7)}"
        )
    yield ""
    for reader, by_name in doc["ratio_cache_over_raw"].items():
        for metric, label in (("after_return_ms", "after return"), ("from_start_ms", "from start")):
            parts = []
            for q in ("p50", "p99"):
                c = doc["cache"]["all"][metric][q]
                w = doc["raw"][reader][metric][q]
                x = by_name["all"][metric][q]
                ratio_text = "n/a" if x is None else f"{x:.2f}x"
                parts.append(f"{q} {_fmt(c, 0)} vs {_fmt(w, 0)} ms = {ratio_text}")
            yield f"cache/raw {reader:10} {label:12}: " + "; ".join(parts)
    yield ""
    yield "where the time goes, p50 (p99) in ms, from the probes:"
    names = [name for name, _ in SEGMENTS]
    yield f"{'':20}" + "".join(f"{name:>18}" for name in names)
    for label, row in _rows(doc):
        seg = row["segments_ms"]
        cells = [
            f"{'-':>18}"
            if seg[n]["p50"] is None
            else f"{seg[n]['p50']:>9.3f} ({seg[n]['p99']:.3f})".rjust(18)
            for n in names
        ]
        yield f"{label:20}" + "".join(cells)
    snd = doc["cache"]["all"]["sender"]
    raw_snd = [
        f"{r} {row['sender']['write_to_return_ms']['p50']:.3f}" for r, row in doc["raw"].items()
    ]
    yield (
        f"sender, write begins -> call returns, p50 ms: cache A "
        f"{snd['write_to_return_ms']['p50']:.3f}, raw {', '.join(raw_snd)}; A read its own "
        f"message back before its call returned in "
        f"{100 * snd.get('own_echo_read_before_return', 0):.0f}% of trials"
    )
    t = doc["target"]
    yield ""
    yield (
        f"target p99 after return < {t['after_return_p99_ms']} ms: "
        f"{'met' if t['met'] else 'NOT met'} (p99 {_fmt(t['measured_p99_ms'], 0)} ms, "
        f"missed {doc['missed']}, wrong values {doc['wrong_values']})"
    )
    if doc["errors"] or doc["aborted"]:
        yield f"errors: {doc['errors']}  aborted: {doc['aborted']}"
    before, after = m["loadavg_1m_before_after"]
    yield (
        f"took {doc['duration_s']} s; 1-minute load average {before} before, {after} after; "
        f"wrote {doc['output']}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=300, help="measured trials (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="unrecorded trials first")
    parser.add_argument("--redis-url", help="use this server instead of a private one")
    parser.add_argument(
        "--within", type=float, default=1.0, help="spin timeout per trial: slower is missed"
    )
    parser.add_argument(
        "--deadline", type=float, default=90.0, help="stop measuring after this many seconds"
    )
    parser.add_argument(
        "--receiver",
        choices=("spin", "block"),
        default="spin",
        help="spin: the receiver polls its L1 on a CPU (default); block: it sleeps until "
        "its L1 drops the key (an idle instance; includes the OS wake-up)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.warmup < 0 or args.within <= 0:
        parser.error("--trials must be >= 1, --warmup >= 0, --within > 0")
    return args


def to_json(doc: dict[str, Any]) -> bytes:
    """Indented JSON, with one line per sample row (readable, and diffs stay small)."""
    body = {k: v for k, v in doc.items() if k != "samples_us"}
    head = orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
    groups = []
    for name, rows in doc["samples_us"].items():
        if name == "columns":
            groups.append(f'    "columns": {orjson.dumps(rows).decode()}')
            continue
        lines = ",\n".join(f"      {orjson.dumps(row).decode()}" for row in rows)
        groups.append(f'    "{name}": [\n{lines}\n    ]')
    samples = ",\n".join(groups)
    return f'{head[:-2]},\n  "samples_us": {{\n{samples}\n  }}\n}}\n'.encode()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Start a server unless given one, run the trials, stop everything; the results."""
    with ExitStack() as stack:
        url: str = args.redis_url
        if url is None:
            url = stack.enter_context(RedisServer()).url
        info = machine(private=args.redis_url is None)
        info["server_version"] = anyio.run(server_version, url)
        load_before = os.getloadavg()
        outcome = anyio.run(run, url, args)
        info["loadavg_1m_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    return report(outcome, args, info)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if a trial was missed or failed, 130 if interrupted."""
    args = parse_args(argv)
    try:
        doc = measure(args)
    except KeyboardInterrupt:
        print("interrupted; every process this run started was stopped", file=sys.stderr)
        return 130
    args.output.parent.mkdir(parents=True, exist_ok=True)
    try:
        doc["output"] = str(args.output.resolve().relative_to(ROOT))
    except ValueError:
        doc["output"] = str(args.output.resolve())
    text = to_json(doc)
    assert orjson.loads(text) == doc
    args.output.write_bytes(text)
    for line in table(doc):
        print(line)
    return 1 if doc["missed"] or doc["errors"] or doc["wrong_values"] or doc["aborted"] else 0


if __name__ == "__main__":
    sys.exit(main())
