"""Tracing benchmark: microseconds per L1 hit without an SDK, with one, and the baseline.

Run from the repository root, in the project's virtualenv (the ``otel`` extra installed)::

    python -m benchmarks.standalone.tracing       # L1-only managers, about 20 s
    python -m benchmarks.standalone.tracing --repeats 31

Cases, one process and one event loop, all on an L1 hit of the same key:

- **baseline**: ``await cache.multi_tier.get(k)``, the tier call below the manager's
  telemetry check (no spans, no check);
- **get, no SDK**: ``await cache.get(k)`` with the API's default (no-op) providers, as in
  an application that never configured OpenTelemetry;
- **get, SDK**: ``await cache.get(k)`` on a manager given an SDK ``TracerProvider`` (a
  ``SimpleSpanProcessor`` into an exporter that drops everything) and an SDK
  ``MeterProvider`` (an ``InMemoryMetricReader``, so the duration histogram is recorded);
- the same for a ``@cache.cached`` function (decorator hit, ``get_or_set`` path), plus
  ``get_or_set`` called directly (the decorator minus its key building).

Each case runs ``--repeats`` batches of ``--calls`` calls, batches of all cases
interleaved; the table gives the median of the per-batch means, in microseconds per call,
and writes ``benchmarks/results/tracing.json``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from coherent_cache import CacheConfig, CacheManager

RESULTS = Path(__file__).resolve().parents[1] / "results" / "tracing.json"


class DropExporter(SpanExporter):
    """Accepts every span and keeps none: the SDK's cost without any export work."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def batch(call: Callable[[], Awaitable[Any]], calls: int) -> float:
    """Mean microseconds per call over ``calls`` calls."""
    started = time.perf_counter_ns()
    for _ in range(calls):
        await call()
    return (time.perf_counter_ns() - started) / calls / 1000


async def main(args: argparse.Namespace) -> None:
    config = CacheConfig(redis_url=None, enable_monitoring=False)
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(DropExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    async with (
        CacheManager(config) as plain,
        CacheManager(
            config, tracer_provider=tracer_provider, meter_provider=meter_provider
        ) as traced,
    ):
        cases: dict[str, Callable[[], Awaitable[Any]]] = {}
        for name, cache in (("no SDK", plain), ("SDK", traced)):
            await cache.set("user:1", {"id": 1, "name": "user-1"})

            @cache.cached(ttl=600, key_prefix="user")
            async def user(x: int) -> dict[str, Any]:
                return {"id": x, "name": f"user-{x}"}

            await user(7)
            if name == "no SDK":
                cases["get, baseline (multi_tier.get)"] = (
                    lambda c=cache: c.multi_tier.get("user:1")  # type: ignore[misc]
                )
                cases["get_or_set hit, no SDK (no decorator)"] = lambda c=cache: c.get_or_set(  # type: ignore[misc]
                    "user:7", lambda: user(7)
                )
            cases[f"get, {name}"] = lambda c=cache: c.get("user:1")  # type: ignore[misc]
            cases[f"decorator, {name}"] = lambda f=user: f(7)  # type: ignore[misc]
        for call in cases.values():  # warm up
            await batch(call, args.calls)
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, call in cases.items():
                samples[name].append(await batch(call, args.calls))
    tracer_provider.shutdown()
    meter_provider.shutdown()
    rows = {
        name: {
            "median_us": round(statistics.median(values), 3),
            "min_us": round(min(values), 3),
            "max_us": round(max(values), 3),
        }
        for name, values in samples.items()
    }
    width = max(len(name) for name in rows)
    print(f"{'case':<{width}}  median µs  (min - max)")
    for name, row in rows.items():
        print(
            f"{name:<{width}}  {row['median_us']:9.3f}  ({row['min_us']:.3f} - {row['max_us']:.3f})"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "repeats": args.repeats,
                "calls": args.calls,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=21, help="batches per case")
    parser.add_argument("--calls", type=int, default=20_000, help="calls per batch")
    anyio.run(main, parser.parse_args())
