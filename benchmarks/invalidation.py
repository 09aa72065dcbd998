"""Invalidation row: the stale window between two processes, from `benchmarks.coherence`.

Runs `benchmarks.coherence.run` (A and B: two coherent_cache processes; a raw publisher
and two raw subscribers; trials interleaved) with fewer trials, and turns its statistics
into the suite's records. The fair comparison with raw PUBLISH -> listener is **from the
start** of A's call to B no longer serving (the after-return window is ~0 at p50 because
B often drops the key before A's reply is parsed); both are recorded.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from benchmarks import coherence
from benchmarks._common import ratio

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
    return records
