"""OpenTelemetry tracer and meter of the cache (API only), and a bounded latency histogram.

The library never installs a provider or an exporter: it asks the OpenTelemetry API for
a tracer and a meter, and the application's SDK (if any) decides what happens to them.
With no SDK configured, the API's no-op provider is in place; then the hot paths skip
spans and histogram records entirely (see `Telemetry.active`), so tracing costs an
attribute check and, every `RECHECK_EVERY` calls, a look at the global providers.

Names (spans, attributes, metrics) are listed in ``docs/observability.md``.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, TypedDict, final
from urllib.parse import urlsplit

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from ._version import __version__
from .keys import key_prefix

if TYPE_CHECKING:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ()

INSTRUMENTATION_NAME: Final = "coherent_cache"
RECHECK_EVERY: Final = 1024
"""Untraced operations between two looks at the global providers (a look costs ~1 µs)."""

_propagator: TraceContextTextMapPropagator | None = None
"""Made by `_w3c` when a trace context is first injected or extracted (traced calls only)."""


def _w3c() -> TraceContextTextMapPropagator:
    global _propagator
    if _propagator is None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _propagator = TraceContextTextMapPropagator()
    return _propagator


# -- latency histogram --------------------------------------------------------------------

_SUB: Final = 4
"""Buckets per power of two (about 19 % wide each)."""
_BUCKETS: Final = 64 * _SUB


class LatencyStats(TypedDict):
    """Latency of one tier in `CacheStats`: count and percentiles in milliseconds."""

    count: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


@final
class LatencyHistogram:
    """Counts of durations in fixed log-scale buckets: O(1) record, fixed memory.

    A duration of ``n`` ns lands in bucket ``4 * bit_length(n) + next two bits``, so each
    power of two is split in four; percentiles are reported as the upper edge of their
    bucket (at most ~19 % above the true value).
    """

    __slots__ = ("count", "counts", "max_ns")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.max_ns = 0

    def record(self, ns: int) -> None:
        """Count one duration of ``ns`` nanoseconds."""
        bits = ns.bit_length()
        if bits > 2:
            index = bits * _SUB + ((ns >> (bits - 3)) & 3)
        else:
            index = ns
        self.counts[index if index < _BUCKETS else _BUCKETS - 1] += 1
        self.count += 1
        if ns > self.max_ns:
            self.max_ns = ns

    @staticmethod
    def _upper_ns(index: int) -> int:
        if index < 3:
            return index
        bits, sub = divmod(index, _SUB)
        # Values with this bit_length and these next two bits: [lo, lo + step).
        step = 1 << (bits - 3)
        return ((4 + sub) * step) + step - 1

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1) in milliseconds, or ``None`` when empty."""
        if not self.count:
            return None
        wanted = max(1, round(q * self.count))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= wanted:
                return min(self._upper_ns(index), self.max_ns) / 1e6
        return self.max_ns / 1e6  # pragma: no cover - counts sum to count

    def stats(self) -> LatencyStats:
        """Count, p50, p99 and max in milliseconds."""
        return {
            "count": self.count,
            "p50_ms": self.percentile(0.5),
            "p99_ms": self.percentile(0.99),
            "max_ms": self.max_ns / 1e6 if self.count else None,
        }


# -- providers ------------------------------------------------------------------------------


def _tracing_configured(provider: trace.TracerProvider) -> bool:
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _metrics_configured(provider: metrics.MeterProvider) -> bool:
    # The API's stand-in before set_meter_provider() is a private proxy class.
    return not isinstance(provider, metrics.NoOpMeterProvider) and not type(
        provider
    ).__name__.startswith("_Proxy")


def server_attributes(url: str | None) -> dict[str, AttributeValue]:
    """``server.address`` / ``server.port`` of a Redis URL; never its credentials."""
    if url is None:
        return {}
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return {}
    if parts.scheme == "unix":
        return {"server.address": parts.path}
    found: dict[str, AttributeValue] = {}
    if parts.hostname:
        found["server.address"] = parts.hostname
    found["server.port"] = port if port is not None else 6379
    return found


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, or ``None`` without a valid one."""
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _w3c().inject(carrier)
    return carrier.get("traceparent")


def link_from_traceparent(traceparent: str | None) -> Link | None:
    """A span Link to the span a ``traceparent`` names, or ``None`` if it is not valid."""
    if not traceparent:
        return None
    context = _w3c().extract({"traceparent": traceparent})
    span_context = trace.get_current_span(context).get_span_context()
    if not span_context.is_valid:
        return None
    return Link(span_context)


def note_backend_error(op: str, error: BaseException) -> None:
    """Add a ``cache.backend_error`` event to the current span, if one is recording.

    The manager does not raise for outages, so the span's status stays unset: the event
    and the ``cache.backend_error`` attribute tell the trace what went wrong.
    """
    span = trace.get_current_span()
    if span.is_recording():
        kind = type(error).__name__
        span.set_attribute("cache.backend_error", kind)
        span.add_event("cache.backend_error", {"db.operation.name": op, "error.type": kind})


@contextlib.contextmanager
def span(name: str, **attributes: AttributeValue) -> Iterator[trace.Span]:
    """A span of the global tracer (e.g. ``with span("cache.warm", **{...}):``).

    For code without a manager at hand; `Telemetry.span` adds the manager's attributes.
    """
    tracer = trace.get_tracer(INSTRUMENTATION_NAME, __version__)
    with tracer.start_as_current_span(name, kind=SpanKind.INTERNAL, attributes=attributes) as s:
        yield s


# -- metrics --------------------------------------------------------------------------------

Reading = list[tuple[int | float, dict[str, AttributeValue]]]
Reader = Callable[[Mapping[str, Any]], Reading]


def _gauge(value: object) -> int:
    return 1 if value else 0


@final
class _Instruments:
    """The instruments of one meter, shared by every manager using it.

    Creating an instrument twice on one meter returns the first one (the SDK warns and
    ignores the new callbacks), so the observable instruments are created once and their
    callbacks walk the live managers registered here.
    """

    def __init__(self, meter: metrics.Meter) -> None:
        self.sources: weakref.WeakSet[Telemetry] = weakref.WeakSet()
        self.duration = meter.create_histogram(
            "cache.operation.duration",
            unit="s",
            description="Duration of cache operations, by operation and answering tier.",
        )

        def counter(name: str, description: str, read: Reader, unit: str = "1") -> None:
            def callback(_options: CallbackOptions) -> Iterable[Observation]:
                return self._observe(read)

            meter.create_observable_counter(
                name, callbacks=[callback], unit=unit, description=description
            )

        def gauge(name: str, description: str, read: Reader, unit: str = "1") -> None:
            def callback(_options: CallbackOptions) -> Iterable[Observation]:
                return self._observe(read)

            meter.create_observable_gauge(
                name, callbacks=[callback], unit=unit, description=description
            )

        counter(
            "cache.hits",
            "Lookups answered, by tier.",
            lambda s: [
                (s["l1_cache"]["hits"], {"cache.tier": "l1"}),
                (s["l2_cache"]["hits"], {"cache.tier": "l2"}),
            ],
        )
        counter(
            "cache.misses",
            "Lookups not answered, by tier.",
            lambda s: [
                (s["l1_cache"]["misses"], {"cache.tier": "l1"}),
                (s["l2_cache"]["misses"], {"cache.tier": "l2"}),
            ],
        )
        counter("cache.sets", "Writes.", lambda s: [(s["total_sets"], {})])
        counter(
            "cache.evictions",
            "Entries evicted from L1 because it was full.",
            lambda s: [(s["l1_cache"]["evictions"], {"cache.tier": "l1"})],
        )
        counter(
            "cache.errors",
            "Failed Redis calls (connection errors, timeouts, error replies).",
            lambda s: [(s["l2_cache"]["errors"], {"cache.tier": "l2"})],
        )
        counter(
            "cache.bus.messages.received",
            "Bus messages received.",
            lambda s: [(s["bus"]["received"], {})],
        )
        counter(
            "cache.bus.messages.published",
            "Bus messages published.",
            lambda s: [(s["bus"]["published"], {})],
        )
        counter(
            "cache.bus.messages.dropped",
            "Malformed or oversized bus messages dropped.",
            lambda s: [(s["bus"]["dropped"], {})],
        )
        gauge(
            "cache.l1.size",
            "Entries in L1.",
            lambda s: [(s["l1_cache"]["size"], {})],
            unit="{entry}",
        )
        gauge(
            "cache.l2.connected",
            "1 while the last Redis call succeeded, else 0.",
            lambda s: [(_gauge(s["l2_cache"]["connected"]), {})] if s["l2_enabled"] else [],
        )
        gauge(
            "cache.bus.connected",
            "1 while the invalidation bus is subscribed, else 0.",
            lambda s: [(_gauge(s["bus"]["connected"]), {})] if s["bus"]["enabled"] else [],
        )

    def _observe(self, read: Reader) -> list[Observation]:
        found: list[Observation] = []
        for source in list(self.sources):
            stats = source.read_stats()
            if stats is None:
                continue
            for value, attributes in read(stats):
                found.append(Observation(value, {**source.base_attributes, **attributes}))
        return found


_global_instruments: _Instruments | None = None
_instruments_by_provider: weakref.WeakKeyDictionary[metrics.MeterProvider, _Instruments] = (
    weakref.WeakKeyDictionary()
)


def _instruments_for(provider: metrics.MeterProvider | None) -> _Instruments:
    global _global_instruments
    if provider is None:
        if _global_instruments is None:
            # The global (proxy) meter forwards to a provider set later, callbacks included.
            _global_instruments = _Instruments(metrics.get_meter(INSTRUMENTATION_NAME, __version__))
        return _global_instruments
    found = _instruments_by_provider.get(provider)
    if found is None:
        found = _instruments_by_provider[provider] = _Instruments(
            provider.get_meter(INSTRUMENTATION_NAME, __version__)
        )
    return found


# -- the per-manager facade -----------------------------------------------------------------


@final
class Telemetry:
    """The tracer, meter and common attributes of one `CacheManager`.

    Args:
        namespace: the manager's namespace (``cache.namespace``).
        redis_url: the L2 URL, for ``server.address``/``server.port`` (never credentials).
        trace_full_keys: put the full key (``cache.key``) on spans, not just its prefix.
        tracer_provider: the provider to use instead of the global one.
        meter_provider: the provider to use instead of the global one.
    """

    __slots__ = (
        "__weakref__",
        "_duration_attributes",
        "_explicit_meter",
        "_explicit_tracer",
        "_instruments",
        "_stats",
        "active",
        "base_attributes",
        "countdown",
        "metrics_on",
        "span_attributes",
        "trace_full_keys",
        "tracer",
        "tracing_on",
    )

    def __init__(
        self,
        *,
        namespace: str,
        redis_url: str | None,
        trace_full_keys: bool = False,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.trace_full_keys = trace_full_keys
        self.base_attributes: dict[str, AttributeValue] = {"cache.namespace": namespace}
        self.span_attributes: dict[str, AttributeValue] = {
            **self.base_attributes,
            **server_attributes(redis_url),
        }
        self._explicit_tracer = tracer_provider
        self._explicit_meter = meter_provider
        self.tracer = trace.get_tracer(
            INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider
        )
        self._instruments = _instruments_for(meter_provider)
        self._stats: Callable[[], Mapping[str, Any] | None] = lambda: None
        self._duration_attributes: dict[tuple[str, str | None], dict[str, AttributeValue]] = {}
        self.tracing_on = False
        self.metrics_on = False
        self.active = False
        """Whether spans or duration records are wanted (a real provider is set)."""
        self.countdown = RECHECK_EVERY
        """Calls left before `poll` re-checks (hot paths may decrement it inline)."""
        self.recheck()

    def recheck(self) -> bool:
        """Look at the providers again (one may have been set since); return `active`."""
        self.countdown = RECHECK_EVERY
        tracer_provider = self._explicit_tracer or trace.get_tracer_provider()
        meter_provider = self._explicit_meter or metrics.get_meter_provider()
        self.tracing_on = _tracing_configured(tracer_provider)
        self.metrics_on = _metrics_configured(meter_provider)
        self.active = self.tracing_on or self.metrics_on
        return self.active

    def poll(self) -> bool:
        """`active`, re-checked every `RECHECK_EVERY` calls (cheap enough for every hit)."""
        self.countdown -= 1
        if self.countdown > 0:
            return False
        return self.recheck()

    # -- metrics ---------------------------------------------------------------------------

    def register(self, stats: Callable[[], Mapping[str, Any] | None]) -> None:
        """Report ``stats()`` through the observable instruments until `unregister`."""
        self._stats = stats
        self._instruments.sources.add(self)

    def unregister(self) -> None:
        """Stop reporting (the manager stopped)."""
        self._instruments.sources.discard(self)

    def read_stats(self) -> Mapping[str, Any] | None:
        """The registered manager's stats, or ``None`` if it is gone."""
        return self._stats()

    def record_duration(self, seconds: float, operation: str, tier: str | None) -> None:
        """Record one operation's duration in ``cache.operation.duration``."""
        if self.metrics_on:
            attributes = self._duration_attributes.get((operation, tier))
            if attributes is None:
                attributes = {**self.base_attributes, "cache.operation": operation}
                if tier is not None:
                    attributes["cache.tier"] = tier
                self._duration_attributes[operation, tier] = attributes
            self._instruments.duration.record(seconds, attributes)

    # -- traces ----------------------------------------------------------------------------

    def key_attributes(self, key: object) -> dict[str, AttributeValue]:
        """``cache.key_prefix``, plus ``cache.key`` when ``trace_full_keys`` allows it."""
        if not isinstance(key, str):
            return {}  # invalid; the operation raises InvalidKeyError inside its span
        if self.trace_full_keys:
            return {"cache.key_prefix": key_prefix(key), "cache.key": key}
        return {"cache.key_prefix": key_prefix(key)}

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        *,
        links: list[Link] | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> Iterator[trace.Span]:
        """A current span named ``name`` with the manager's attributes, when tracing.

        Without a configured tracer provider this yields the invalid (no-op) span at
        almost no cost. Exceptions are recorded on the span and set its status to ERROR.
        """
        if not self.tracing_on:
            yield trace.INVALID_SPAN
            return
        merged = {**self.span_attributes, **attributes} if attributes else self.span_attributes
        with self.tracer.start_as_current_span(
            name,
            kind=kind,
            attributes=merged,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as current:
            try:
                yield current
            except Exception as exc:
                current.record_exception(exc)
                current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    @contextlib.contextmanager
    def operation(
        self, op: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> Iterator[trace.Span]:
        """The span ``cache.<op>`` and a ``cache.operation.duration`` record of it."""
        started = time.perf_counter()
        try:
            with self.span(f"cache.{op}", attributes) as current:
                yield current
        finally:
            self.record_duration(time.perf_counter() - started, op, None)
