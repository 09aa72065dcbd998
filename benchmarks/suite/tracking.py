"""Tracking row: a foreign write -> an instance's L1 drops the key (issue 16).

A foreign writer (a plain ``redis.asyncio`` client in its own process,
`benchmarks.workers._tracking_worker` role ``writer``) SETs a key that a receiver in another
process holds in its local copy. Measured: from just before the writer sends the SET
(``time.monotonic()``; CLOCK_MONOTONIC is system-wide on Linux) to the moment the receiver's
spinning check sees its local copy no longer holding the key. Receivers:

- coherent_cache with ``client_tracking=True`` (the bus on, as users run it);
- the raw limit: a dict and ``CLIENT TRACKING ON BCAST PREFIX``, over RESP2 (``REDIRECT`` to
  a subscriber of ``__redis__:invalidate``) and over RESP3 (``invalidate`` push messages),
  redis-py connections; the faster p50 of the two is the row's limit;
- cashews ``BcastClientSide`` (``client_side=True``) over RESP2 and RESP3 (redis-py's
  default), `benchmarks.workers._cashews_worker`.

Trials are interleaved (every trial runs each receiver once, the order rotating), each
receiver on its own key prefix. A drop seen before the SET was sent is counted as
``raced`` (a late message of an earlier write), one not seen within ``within`` as
``missed``. cashews over RESP3 gets 5 trials: it is known to miss them all. Probes in
the receivers split the interval: ``read_p50``, the SET sent -> the listener has the message
parsed (server, kernel, wake-up, parsing), and for coherent_cache ``dropped_p50``, -> the
L1 actor applied it (the mailbox hop); the rest is the spinning check seeing it.
"""

from __future__ import annotations

import importlib.util
import pickle
import secrets
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import orjson

from benchmarks.suite._common import percentile, ratio, spread
from benchmarks.suite.stampede import Worker

ROW: Final = "tracking"
TITLE: Final = "foreign write -> an instance's L1 drops the key (CLIENT TRACKING BCAST)"
WORKER: Final = "benchmarks.workers._tracking_worker"
CASHEWS_RESP3_TRIALS: Final = 5


@dataclass
class Receiver:
    """One contender: its process, the Redis key the writer sets, the value format."""

    system: str
    variant: str
    args: dict[str, Any]
    key: str
    """The key as the receiver names it."""
    redis_key: str
    """The key in Redis (what the foreign writer SETs)."""
    encode: str
    """``json``: coherent_cache's payload (0xC5 0x01 + JSON); ``pickle``: cashews'."""
    module: str = WORKER
    trials: int | None = None
    """At most this many measured trials (None: all)."""
    baseline: bool = False
    worker: Worker | None = None
    from_start: list[float] = field(default_factory=list)
    by_trial: dict[int, float] = field(default_factory=dict)
    """The same figures by trial number (for ratios within a trial)."""
    after_return: list[float] = field(default_factory=list)
    to_read: list[float] = field(default_factory=list)
    """µs from the SET sent to the receiver's listener having the message parsed."""
    to_drop: list[float] = field(default_factory=list)
    """µs from the SET sent to the L1 actor having dropped the key (coherent_cache)."""
    missed: int = 0
    raced: int = 0
    failure: str | None = None

    def value(self, n: int) -> str:
        """The hex of the ``n``-th value written."""
        doc = {"v": n}
        if self.encode == "pickle":
            return pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL).hex()
        return (bytes((0xC5, 0x01)) + orjson.dumps(doc)).hex()


def receivers(url: str) -> list[Receiver]:
    """Every contender that can run here."""
    token = secrets.token_hex(3)
    namespace = f"trk-{token}"
    found = [
        Receiver(
            "coherent_cache",
            "client_tracking=True (bus on): foreign SET -> L1 drops",
            {
                "role": "cache",
                "redis_url": url,
                "namespace": namespace,
                "client_tracking": True,
            },
            "k",
            f"{namespace}:k",
            "json",
        ),
    ]
    for protocol in (2, 3):
        prefix = f"trk-raw{protocol}-{token}:"
        how = (
            "REDIRECT to a __redis__:invalidate subscriber"
            if protocol == 2
            else "invalidate push messages"
        )
        found.append(
            Receiver(
                "raw",
                f"CLIENT TRACKING BCAST + dict, RESP{protocol} ({how})",
                {"role": f"raw{protocol}", "url": url, "prefix": prefix},
                f"{prefix}k",
                f"{prefix}k",
                "json",
            )
        )
    if importlib.util.find_spec("cashews") is not None:
        for chosen in (2, None):
            prefix = f"trk-cashews{chosen or 3}-{token}:"
            mode = f"protocol={chosen}" if chosen else "redis-py default (RESP3)"
            found.append(
                Receiver(
                    "cashews",
                    f"client_side=True, {mode}: foreign SET -> local copy drops",
                    {"url": url, "prefix": prefix, "protocol": chosen},
                    "k",
                    f"{prefix}k",
                    "pickle",
                    module="benchmarks.workers._cashews_worker",
                    trials=None if chosen else CASHEWS_RESP3_TRIALS,
                )
            )
    return found


async def _trial(writer: Worker, r: Receiver, n: int, within: float, measured: bool) -> None:
    assert r.worker is not None
    with anyio.fail_after(within + 15):
        await r.worker.send({"op": "watch", "key": r.key, "within": within})
        armed = await r.worker.read()
        if not armed.get("armed"):
            raise RuntimeError(f"{r.variant}: {armed.get('error', armed)}")
        await writer.send({"op": "set", "key": r.redis_key, "value": r.value(n)})
        done = await writer.read()
        seen = await r.worker.read()
        gone = seen.get("gone")
    if not measured:
        return
    if gone is None:
        r.missed += 1
    elif gone < done["started"]:
        r.raced += 1
    else:
        r.from_start.append((gone - done["started"]) * 1e6)
        r.by_trial[n] = r.from_start[-1]
        r.after_return.append((gone - done["returned"]) * 1e6)
        if seen.get("read") is not None:
            r.to_read.append((seen["read"] - done["started"]) * 1e6)
        if seen.get("dropped") is not None:
            r.to_drop.append((seen["dropped"] - done["started"]) * 1e6)


async def measure(
    url: str,
    *,
    trials: int,
    warmup: int,
    within: float = 1.0,
    systems: frozenset[str] | None = None,
) -> list[dict[str, Any]]:
    """Interleaved trials of every receiver (of ``systems`` only, if given); the records."""
    everyone = [r for r in receivers(url) if systems is None or r.system in systems]
    writer = Worker({"role": "writer", "url": url}, WORKER)
    for r in everyone:
        r.worker = Worker(r.args, r.module)

    async def start(r: Receiver) -> None:
        assert r.worker is not None
        try:
            with anyio.fail_after(60):
                await r.worker.start()
        except Exception as exc:
            r.failure = f"start: {type(exc).__name__}: {exc}"

    try:
        async with anyio.create_task_group() as tg:  # the processes start in parallel
            for r in everyone:
                tg.start_soon(start, r)
            with anyio.fail_after(60):
                await writer.start()
        for r in everyone:
            if r.failure is not None:
                continue
            with anyio.fail_after(15):
                await writer.send({"op": "set", "key": r.redis_key, "value": r.value(0)})
                await writer.read()
        for n in range(warmup + trials):
            live = [r for r in everyone if r.failure is None]
            shift = n % len(live) if live else 0
            for r in live[shift:] + live[:shift]:
                measured = n >= warmup
                if measured and r.trials is not None and n - warmup >= r.trials:
                    continue
                try:
                    await _trial(writer, r, n + 1, within, measured)
                except Exception as exc:
                    r.failure = f"{type(exc).__name__}: {exc}"
    finally:
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:  # each stop is bounded
                tg.start_soon(writer.stop)
                for r in everyone:
                    if r.worker is not None:
                        tg.start_soon(r.worker.stop)
    return records(everyone, trials, within)


def records(everyone: list[Receiver], trials: int, within: float) -> list[dict[str, Any]]:
    """The suite's records; the faster raw p50 is the limit, every ratio is to it."""
    out: list[dict[str, Any]] = []
    for r in everyone:
        stats = spread(r.from_start)
        n = r.trials if r.trials is not None else trials
        out.append(
            {
                "row": ROW,
                "system": r.system,
                "variant": r.variant,
                "baseline": False,
                "unit": "µs from the foreign SET sent",
                "n": min(n, trials),
                "measured": len(r.from_start),
                "median": stats["median"],
                "p25": None,
                "p75": None,
                "min": stats["min"],
                "max": stats["max"],
                "p99": percentile(r.from_start, 0.99) if r.from_start else None,
                "after_return_p50": percentile(r.after_return, 0.5) if r.after_return else None,
                "after_return_p99": percentile(r.after_return, 0.99) if r.after_return else None,
                "read_p50": percentile(r.to_read, 0.5) if r.to_read else None,
                "dropped_p50": percentile(r.to_drop, 0.5) if r.to_drop else None,
                "missed": r.missed,
                "within_s": within,
                "raced": r.raced,
                "ratio": None,
                "errors": r.missed,
                "failure": r.failure,
            }
        )
    raws = [x for x in out if x["system"] == "raw" and x["median"] is not None]
    if raws:
        limit = min(raws, key=lambda x: float(x["median"]))
        limit["baseline"] = True
        base = everyone[out.index(limit)].by_trial
        for x, r in zip(out, everyone, strict=True):
            x["ratio"] = ratio(x["median"], limit["median"])
            # Median of per-trial ratios: both ran in the same trial, one after the other.
            pairs = [v / base[n] for n, v in r.by_trial.items() if base.get(n)]
            x["paired_ratio"] = percentile(pairs, 0.5) if pairs else None
    return out
