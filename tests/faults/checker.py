"""The stale-read rule of `tests.coherence.test_stale_reads`, made to hold through faults.

Under faults an operation may not reach Redis. So only *certain* operations constrain
reads: an operation is certain when its process counted no L2 failure while it ran (log
field ``u`` false) and, for a set, it returned True. A write of unknown fate (failed, timed
out, a loader's store) may still land later (a server that received a command whose reply
timed out may apply it), so reads of its version are only checked for having been written
to that key and not before the read.

Let R be a read (get or get_or_set) of key k that returned version v, and W the write of v.
R violates the rule if v was never written to k, if W began after R ended, or if W is
certain and some certain invalidation X of k (a set of another version, a delete, a
clear_pattern matching k, an invalidate_tags of k's tag) started after W ended and
returned more than ``bound(X, R)`` before R began: ``own_bound`` when X ran in R's process,
``remote_bound`` otherwise (the bus latency, or when the bus was lost the
``max_stale_on_bus_loss`` bound plus detection).

An invalidate_tags X in R's own process gets ``own_bound`` like any own invalidation (a
concurrent invalidate_tags of the same tag elsewhere used to let it return one round trip
early; each batch's SREM and UNLINK are now one transaction). With ``tags_certain=False`` (a
server evicting keys, which may evict a tag index before its members) invalidate_tags
constrains nothing.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from coherent_cache.keys import compile_pattern

from .load import tag_of

__all__ = ["Report", "check"]


@dataclass
class Report:
    """What the checker found."""

    reads: int = 0
    hits: int = 0
    checked: int = 0
    """Hits of a certain write that a certain invalidation constrained (the rule's work)."""
    violations: list[str] = field(default_factory=list)
    worst: float = 0.0
    """The longest time a stale read began after its obsoleting invalidation returned."""

    def summary(self, limit: int = 5) -> str:
        """Counts and the first violations."""
        head = (
            f"reads {self.reads}, hits {self.hits}, constrained {self.checked}, "
            f"violations {len(self.violations)}, worst {self.worst:.3f}s"
        )
        return "\n".join([head, *self.violations[:limit]])


def _describe(op: dict[str, Any], t0: float) -> str:
    return (
        f"p{op['p']}/t{op['t']} {op['op']}({op['k']}) w={op.get('w')} "
        f"[{op['s'] - t0:.3f}, {op['e'] - t0:.3f}] u={op.get('u')}"
    )


def check(
    ops: Iterable[dict[str, Any]],
    *,
    own_bound: float,
    remote_bound: float,
    tags_certain: bool = True,
) -> Report:
    """Apply the module docstring's rule to every read hit."""
    ops = list(ops)
    report = Report()
    if not ops:
        return report
    t0 = min(op["s"] for op in ops)
    writes: dict[str, dict[str, Any]] = {}
    for op in ops:
        if op["op"] in ("set", "load"):
            writes[op["w"]] = op
    keys = {op["k"] for op in ops if op["op"] in ("set", "load", "get", "get_or_set", "delete")}
    matchers: dict[str, Callable[[str], bool]] = {}
    invalidations: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    for op in ops:
        if op.get("u"):
            continue
        kind = op["op"]
        if (kind == "set" and op.get("ok")) or kind == "delete":
            if op["k"] in invalidations:
                invalidations[op["k"]].append(op)
        elif kind == "clear_pattern":
            match = matchers.setdefault(op["k"], compile_pattern(op["k"]))
            for key in keys:
                if match(key):
                    invalidations[key].append(op)
        elif kind == "invalidate_tags" and tags_certain:
            for key in keys:
                if tag_of(key) == op["k"]:
                    invalidations[key].append(op)
    by_start: dict[str, tuple[list[float], list[dict[str, Any]]]] = {}
    for key, invs in invalidations.items():
        invs.sort(key=lambda x: x["s"])
        by_start[key] = ([x["s"] for x in invs], invs)

    for read in ops:
        if read["op"] not in ("get", "get_or_set"):
            continue
        report.reads += 1
        if read.get("bad") is not None:
            report.violations.append(f"not a version: {read['bad']} {_describe(read, t0)}")
            continue
        version = read.get("w")
        if version is None:
            continue
        report.hits += 1
        write = writes.get(version)
        if write is None or write["k"] != read["k"]:
            report.violations.append(f"never written to this key: {_describe(read, t0)}")
            continue
        if write["s"] > read["e"]:
            report.violations.append(
                f"read before its write began: {_describe(read, t0)} / {_describe(write, t0)}"
            )
            continue
        if write.get("u") or (write["op"] == "set" and not write.get("ok")):
            continue
        starts, invs = by_start[read["k"]]
        first = bisect.bisect_right(starts, write["e"])
        constrained = False
        for x in invs[first:]:
            if x["s"] > read["s"]:
                break
            if x.get("w") == version:
                continue
            bound = own_bound if x["p"] == read["p"] else remote_bound
            late = read["s"] - x["e"]
            if late > 0:
                constrained = True
            if late > bound:
                report.violations.append(
                    f"stale read {late:.3f}s after its invalidation returned (bound "
                    f"{bound}s): {_describe(read, t0)} read {_describe(write, t0)}, "
                    f"obsoleted by {_describe(x, t0)}"
                )
                report.worst = max(report.worst, late)
                break
        report.checked += constrained
    return report
