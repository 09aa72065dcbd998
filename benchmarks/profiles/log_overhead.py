"""The cost of one log event: the library's logger (`coherent_cache._log`) against the
structlog proxy every module used before it.

Run from the repository root, in the project's virtualenv::

    python -m benchmarks.profiles.log_overhead                 # timings
    python -m benchmarks.profiles.log_overhead --instructions  # callgrind counts

Four situations of the host application, each with both loggers:

- ``structlog-filtered``: structlog configured, event below its level
  (``make_filtering_bound_logger(WARNING)``, an ``info``): INFO events in production;
- ``structlog-json``: structlog configured, a ``warning`` rendered by ``JSONRenderer``
  to a `structlog.ReturnLogger`;
- ``stdlib-filtered``: structlog not configured, stdlib at WARNING, an ``info``: before,
  structlog's defaults printed it to stdout (here /dev/null); now stdlib drops it;
- ``stdlib-warning``: structlog not configured, a ``warning``; before, structlog's
  default console output to stdout; now a stdlib handler (``%(message)s
  %(cache_fields)s`` to /dev/null).

Timings: median µs per event over rounds of a fixed batch, both loggers alternately in
the same process, and their ratio. ``--instructions``: CPU instructions per event call
counted by valgrind (runs with 0 and ``--n`` events, the difference over ``--n``),
repeatable on a noisy machine; the ``no-op`` row is the call of an empty method with the
same arguments, the part of every row that is the caller's. Nothing is logged per hit:
this keeps the per-event cost in check, it is not a row of the suite.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

ROUNDS = 15
BATCH = 2000
SITUATIONS = ("structlog-filtered", "structlog-json", "stdlib-filtered", "stdlib-warning")
LOGGERS = ("before", "now")
FIELDS: dict[str, Any] = {"key_prefix": "user", "reason": "bad payload", "op": "get"}
CONTEXT: dict[str, Any] = {"namespace": "app", "origin": "host-1-abcdef"}


class NoOp:
    """A logger whose methods do nothing: the caller's share of a call."""

    def info(self, event: str, *args: Any, **kw: Any) -> None:
        """Nothing."""

    def warning(self, event: str, *args: Any, **kw: Any) -> None:
        """Nothing."""


@contextlib.contextmanager
def situation(name: str) -> Iterator[None]:
    """The application's logging setup of situation ``name``, undone on exit."""
    structlog.reset_defaults()
    if name == "structlog-filtered":
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        yield
        return
    if name == "structlog-json":
        structlog.configure(
            processors=[structlog.processors.JSONRenderer()],
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
            logger_factory=structlog.ReturnLoggerFactory(),
        )
        yield
        return
    root = logging.getLogger()
    with open(os.devnull, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        handler = logging.StreamHandler(sink)
        formatter = logging.Formatter("%(levelname)s %(name)s %(message)s %(cache_fields)s")
        handler.setFormatter(formatter)
        saved = root.level
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
        try:
            yield
        finally:
            root.removeHandler(handler)
            root.setLevel(saved)


def library_get_logger(alone: bool) -> Callable[..., Any]:
    """`coherent_cache._log.get_logger`; with ``alone``, from ``_log.py`` loaded by itself.

    Under valgrind, importing the whole package would be most of the count and of the run
    time; ``_log`` imports no other module of the package, so it runs the same alone.
    """
    if not alone:
        from coherent_cache._log import get_logger

        return get_logger
    path = Path(__file__).resolve().parents[2] / "coherent_cache" / "_log.py"
    spec = importlib.util.spec_from_file_location("coherent_cache_log_alone", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    factory: Callable[..., Any] = module.get_logger
    return factory


def event_call(situation_name: str, logger_name: str, alone: bool = False) -> Callable[[], None]:
    """One event of ``situation_name`` through logger ``logger_name``."""
    logger: Any
    if logger_name == "before":
        logger = structlog.get_logger("coherent_cache", **CONTEXT)
    elif logger_name == "now":
        logger = library_get_logger(alone)(**CONTEXT)
    else:
        logger = NoOp()
    if situation_name.endswith("filtered"):
        return lambda: logger.info("cache_stats", **FIELDS)
    return lambda: logger.warning("l2_payload_rejected", **FIELDS)


def per_event_us(emit: Callable[[], None]) -> float:
    """µs per call of ``emit``, over one batch."""
    start = time.perf_counter()
    for _ in range(BATCH):
        emit()
    return (time.perf_counter() - start) / BATCH * 1e6


def timings() -> None:
    """Print the median µs per event of both loggers in each situation."""
    print(f"{'situation':<20} {'before µs':>10} {'now µs':>10} {'now/before':>11}")
    for name in SITUATIONS:
        with situation(name):
            before, now = event_call(name, "before"), event_call(name, "now")
            olds: list[float] = []
            news: list[float] = []
            for _ in range(ROUNDS):
                olds.append(per_event_us(before))
                news.append(per_event_us(now))
        old, new = statistics.median(olds), statistics.median(news)  # stdout is back
        print(f"{name:<20} {old:>10.2f} {new:>10.2f} {new / old:>11.2f}")


def count(situation_name: str, logger_name: str, n: int) -> int:
    """Instructions of a whole run of ``n`` events under callgrind."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.profiles.log_overhead",
        "--child",
        situation_name,
        logger_name,
        str(n),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    for line in done.stderr.splitlines():
        if "Collected" in line:
            return int(line.split()[-1])
    raise RuntimeError(f"no callgrind total in: {done.stderr[-500:]}")


def instructions(n: int) -> None:
    """Print instructions per event call of both loggers (and a no-op) per situation."""
    print(f"{'situation':<20} {'no-op':>8} {'before':>8} {'now':>8} {'now-before':>11}")
    for name in SITUATIONS:
        base = count(name, "no-op", 0)  # the same process without the events
        per = {logger: (count(name, logger, n) - base) / n for logger in ("no-op", *LOGGERS)}
        delta = per["now"] - per["before"]
        print(
            f"{name:<20} {per['no-op']:>8,.0f} {per['before']:>8,.0f} {per['now']:>8,.0f}"
            f" {delta:>+11,.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instructions", action="store_true", help="count with callgrind")
    parser.add_argument("--n", type=int, default=5_000, help="events per counted run")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, logger_name, n = args.child
        with situation(name):
            emits = {logger: event_call(name, logger, True) for logger in ("no-op", *LOGGERS)}
            for emit in emits.values():
                emit()  # the first event builds what later ones reuse
            emit = emits[logger_name]
            for _ in range(int(n)):
                emit()
        return
    if not args.instructions:
        timings()
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not on PATH (Debian: apt-get install valgrind)")
    instructions(args.n)


if __name__ == "__main__":
    main()
