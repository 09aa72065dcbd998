"""Invalidation row: the stale window between two processes, from the coherence benchmark.

Runs `benchmarks.standalone.coherence.run` (A and B: two coherent_cache processes; a raw
publisher and two raw subscribers; trials interleaved) with fewer trials, and turns its
statistics into the suite's records. The fair comparison with raw PUBLISH -> listener is
**from the start** of A's call to B no longer serving (the after-return window is ~0 at p50
because B often drops the key before A's reply is parsed); both are recorded.
"""

from __future__ import annotations

import argparse
import importlib.util
import secrets
from typing import Any, Final

import anyio

from benchmarks.standalone import coherence
from benchmarks.suite._common import percentile, ratio, spread
from benchmarks.suite.stampede import Worker

ROW: Final = "invalidation"
TITLE: Final = "invalidation stale window between 2 processes"


async def measure(url: str, *, trials: int, warmup: int) -> list[dict[str, Any]]:
    """Trials of delete / set / clear_pattern in rotation, and the raw baselines."""
    args = argparse.Namespace(
        trials=trials, warmup=warmup, within=1.0, deadline=120.0, receiver="spin"
    )
    outcome = await coherence.run(url, args)
    cache = coherence.describe(outcome.cache)
    raws = {reader: coherence.describe(s) for reader, s in outcome.raw.items()}
    base = raws["pubsub"]["from_start_ms"]["p50"]
    records = []
    groups: list[tuple[str, str, dict[str, Any]]] = [
        ("coherent_cache", "A: delete/set/clear_pattern -> B's L1 drops", cache),
        ("raw", "PUBLISH -> PubSub.get_message listener", raws["pubsub"]),
        ("raw", "PUBLISH -> bare read_response listener", raws["connection"]),
    ]
    for system, variant, stats in groups:
        start, after = stats["from_start_ms"], stats["after_return_ms"]
        records.append(
            {
                "row": ROW,
                "system": system,
                "variant": variant,
                "baseline": variant.startswith("PUBLISH -> PubSub"),
                "unit": "µs from call start",
                "n": stats["trials"],
                "median": None if start["p50"] is None else start["p50"] * 1000,
                "p25": None,
                "p75": None,
                "min": None if start["min"] is None else start["min"] * 1000,
                "max": None if start["max"] is None else start["max"] * 1000,
                "p99": None if start["p99"] is None else start["p99"] * 1000,
                "after_return_p50": None if after["p50"] is None else after["p50"] * 1000,
                "after_return_p99": None if after["p99"] is None else after["p99"] * 1000,
                "missed": stats["missed"],
                "ratio": ratio(start["p50"], base),
                "errors": stats["missed"] + (outcome.wrong_values if system != "raw" else 0),
            }
        )
    if outcome.errors or outcome.aborted:
        records[0]["failure"] = "; ".join([*outcome.errors, outcome.aborted or ""]).strip("; ")
    if importlib.util.find_spec("cashews") is not None:
        records.append(await cashews(url, trials=trials, warmup=warmup, protocol=2, within=1.0))
        # redis-py 8 speaks RESP3 by default: a few trials show whether cashews' local
        # copies are invalidated at all then.
        records.append(await cashews(url, trials=5, warmup=1, protocol=None, within=0.25))
    for r in records:
        if r["system"] != "raw":
            r["ratio"] = ratio(None if r["median"] is None else r["median"] / 1000, base)
    return records


async def cashews(
    url: str, *, trials: int, warmup: int, protocol: int | None, within: float
) -> dict[str, Any]:
    """cashews ``client_side=True`` in two processes: the writer deletes, the reader's
    local copy drops (trials after the coherence run, on the same server)."""
    prefix = f"cashews-inv-{secrets.token_hex(3)}:"
    args = {"url": url, "prefix": prefix, "protocol": protocol}
    writer = Worker(args, "benchmarks.workers._cashews_worker")
    reader = Worker(args, "benchmarks.workers._cashews_worker")
    from_start: list[float] = []
    after: list[float] = []
    missed = raced = 0
    failure = None
    try:
        with anyio.fail_after(60):
            await writer.start()
            await reader.start()
        for n in range(warmup + trials):
            key = f"t{n}"
            with anyio.fail_after(within + 15):
                await writer.send({"op": "set", "key": key})
                await writer.read()
                await anyio.sleep(0.02)  # the set's own invalidation reaches the reader first
                await reader.send({"op": "watch", "key": key, "within": within})
                await reader.read()  # armed
                await writer.send({"op": "delete", "key": key})
                done = await writer.read()
                gone = (await reader.read())["gone"]
            if n < warmup:
                continue
            if gone is None:
                missed += 1
            elif gone < done["started"]:
                raced += 1  # dropped before the delete: a late message of the set
            else:
                from_start.append((gone - done["started"]) * 1e6)
                after.append((gone - done["returned"]) * 1e6)
    except Exception as exc:
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        await writer.stop()
        await reader.stop()
    mode = f"protocol={protocol}" if protocol else "redis-py default (RESP3)"
    stats = spread(from_start)
    return {
        "row": ROW,
        "system": "cashews",
        "variant": f"client_side=True, {mode}: A deletes -> B's local copy drops",
        "baseline": False,
        "unit": "µs from call start",
        "n": trials,
        "median": stats["median"],
        "p25": None,
        "p75": None,
        "min": stats["min"],
        "max": stats["max"],
        "p99": percentile(from_start, 0.99) if from_start else None,
        "after_return_p50": percentile(after, 0.5) if after else None,
        "after_return_p99": percentile(after, 0.99) if after else None,
        "missed": missed,
        "raced": raced,
        "ratio": None,
        "errors": missed,
        "failure": failure,
    }
