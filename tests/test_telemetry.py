"""OpenTelemetry spans and metrics (SDK in-memory exporters), and secrets kept out of them."""

from __future__ import annotations

import datetime
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pydantic import SecretStr

from coherent_cache import (
    CacheConfig,
    CacheManager,
    CacheTier,
    InvalidationPublisher,
    InvalidKeyError,
)
from coherent_cache._telemetry import (
    LatencyHistogram,
    Telemetry,
    current_traceparent,
    link_from_traceparent,
    server_attributes,
)
from coherent_cache.bus import BusMessage
from coherent_cache.testing import RedisServer, free_port

from .conftest import eventually

ROOT_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Finished spans of the test's tracer provider."""
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """An SDK tracer provider of the test's own (the global one is left alone)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def metric_reader() -> InMemoryMetricReader:
    """Collects the metrics of the test's meter provider on demand."""
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(metric_reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    """An SDK meter provider of the test's own."""
    provider = MeterProvider(metric_readers=[metric_reader])
    yield provider
    provider.shutdown()


@pytest.fixture
async def traced(
    redis_url: str,
    namespace: str,
    tracer_provider: TracerProvider,
    meter_provider: MeterProvider,
) -> AsyncIterator[CacheManager]:
    """A running multi-tier manager reporting to the test's providers."""
    config = CacheConfig(redis_url=redis_url, namespace=namespace)
    async with CacheManager(
        config, tracer_provider=tracer_provider, meter_provider=meter_provider
    ) as cache:
        yield cache


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    """The finished spans called ``name``."""
    return [s for s in exporter.get_finished_spans() if s.name == name]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    """A span's attributes as a plain dict."""
    return dict(span.attributes or {})


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Data points by metric name, from one collection."""
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


class TestSpans:
    """Every public operation is a span with the cache's attributes."""

    async def test_typed_get_is_traced(
        self, traced: CacheManager, exporter: InMemorySpanExporter
    ) -> None:
        """``get(value_type=...)`` makes the same ``cache.get`` spans, decoding the value."""
        await traced.set("d", "2026-01-02", tier=CacheTier.L2)
        assert datetime.date(2026, 1, 2) == await traced.get("d", value_type=datetime.date)
        assert datetime.date(2026, 1, 2) == await traced.get("d", value_type=datetime.date)
        assert "none" == await traced.get("d", default="none", value_type=uuid.UUID)
        found = [
            (attrs(s)["cache.hit"], attrs(s).get("cache.tier"))
            for s in spans_named(exporter, "cache.get")
        ]
        assert [(True, "l2"), (True, "l1"), (False, None)] == found

    async def test_get_hit_and_miss_spans(
        self, traced: CacheManager, exporter: InMemorySpanExporter, namespace: str
    ) -> None:
        """A get is a ``cache.get`` span: hit, answering tier, key prefix, namespace, server."""
        await traced.set("user:1", {"n": 1})
        exporter.clear()
        assert {"n": 1} == await traced.get("user:1")
        assert await traced.get("user:2") is None
        await traced.delete("user:1", CacheTier.L1)
        assert {"n": 1} == await traced.get("user:1")
        hit_l1, miss, hit_l2 = spans_named(exporter, "cache.get")
        assert {
            "cache.hit": True,
            "cache.tier": "l1",
            "cache.key_prefix": "user",
            "cache.namespace": namespace,
        }.items() <= attrs(hit_l1).items()
        assert "127.0.0.1" == attrs(hit_l1)["server.address"]
        assert isinstance(attrs(hit_l1)["server.port"], int)
        assert "cache.key" not in attrs(hit_l1)
        assert attrs(miss)["cache.hit"] is False
        assert "cache.tier" not in attrs(miss)
        assert ("l2", True) == (attrs(hit_l2)["cache.tier"], attrs(hit_l2)["cache.hit"])

    async def test_every_operation_has_its_span(
        self, traced: CacheManager, exporter: InMemorySpanExporter
    ) -> None:
        """set, delete, clear_pattern, clear, invalidate_tags, get_or_set and load."""

        async def loader() -> int:
            return 7

        await traced.set("a:1", 1, tags=["t"])
        await traced.invalidate_tags("t")
        await traced.delete("a:1")
        await traced.clear_pattern("a:*")
        assert 7 == await traced.get_or_set("b:1", loader)
        assert 7 == await traced.get_or_set("b:1", loader)
        await traced.clear()
        names = [s.name for s in exporter.get_finished_spans()]
        for name in (
            "cache.set",
            "cache.invalidate_tags",
            "cache.delete",
            "cache.clear_pattern",
            "cache.get_or_set",
            "cache.load",
            "cache.clear",
        ):
            assert name in names
        first, second = spans_named(exporter, "cache.get_or_set")
        assert (False, True) == (attrs(first)["cache.hit"], attrs(second)["cache.hit"])
        (load,) = spans_named(exporter, "cache.load")
        assert "b" == attrs(load)["cache.key_prefix"]
        assert load.parent is not None
        assert first.context is not None
        assert first.context.span_id == load.parent.span_id

    async def test_warm_span(self, traced: CacheManager, exporter: InMemorySpanExporter) -> None:
        """warm_cache is a ``cache.warm`` span reporting what it wrote."""

        async def data_source() -> list[tuple[str, Any]]:
            return [(f"w:{i}", i) for i in range(25)]

        await traced.warm_cache(data_source, batch_size=10)
        (warm,) = spans_named(exporter, "cache.warm")
        assert {
            "cache.warm.name": "data_source",
            "cache.warm.batch_size": 10,
            "cache.warm.written": 25,
            "cache.warm.batches": 3,
        }.items() <= attrs(warm).items()

    async def test_loader_error_is_recorded_on_the_load_span(
        self, traced: CacheManager, exporter: InMemorySpanExporter
    ) -> None:
        """A failing loader: exception event and ERROR status on cache.load and get_or_set."""

        async def loader() -> int:
            raise LookupError("no such row")

        with pytest.raises(LookupError):
            await traced.get_or_set("c:1", loader)
        for name in ("cache.load", "cache.get_or_set"):
            (span,) = spans_named(exporter, name)
            assert StatusCode.ERROR == span.status.status_code
            assert "exception" in [e.name for e in span.events]

    async def test_invalid_key_is_an_error_span(
        self, traced: CacheManager, exporter: InMemorySpanExporter
    ) -> None:
        """Bad input raises as before, and the span says ERROR."""
        with pytest.raises(InvalidKeyError):
            await traced.get("")
        (span,) = spans_named(exporter, "cache.get")
        assert StatusCode.ERROR == span.status.status_code

    async def test_full_keys_only_when_allowed(
        self,
        redis_url: str,
        namespace: str,
        tracer_provider: TracerProvider,
        exporter: InMemorySpanExporter,
    ) -> None:
        """trace_full_keys=True adds cache.key."""
        config = CacheConfig(redis_url=redis_url, namespace=namespace, trace_full_keys=True)
        async with CacheManager(config, tracer_provider=tracer_provider) as cache:
            await cache.get("user:42")
        (span,) = spans_named(exporter, "cache.get")
        assert "user:42" == attrs(span)["cache.key"]

    async def test_backend_error_is_an_event_not_an_exception(
        self,
        private_server: RedisServer,
        namespace: str,
        tracer_provider: TracerProvider,
        exporter: InMemorySpanExporter,
    ) -> None:
        """Redis down: get returns a miss, and its span carries a cache.backend_error event."""
        config = CacheConfig(
            redis_url=private_server.url, namespace=namespace, enable_invalidation_bus=False
        )
        async with CacheManager(config, tracer_provider=tracer_provider) as cache:
            private_server.kill()
            assert await cache.get("k:1") is None
        (span,) = spans_named(exporter, "cache.get")
        assert StatusCode.ERROR != span.status.status_code
        assert "cache.backend_error" in [e.name for e in span.events]
        assert "cache.backend_error" in attrs(span)

    async def test_no_spans_without_a_provider(self) -> None:
        """With the API's default provider nothing is traced (and nothing breaks)."""
        async with CacheManager(CacheConfig(redis_url=None)) as cache:
            assert cache._telemetry.active is False
            await cache.set("k", 1)
            assert 1 == await cache.get("k")


class TestBusTracing:
    """Invalidations carry the W3C traceparent of the operation that caused them."""

    async def test_traceparent_of_the_current_span(self, tracer_provider: TracerProvider) -> None:
        """Only a valid current span gives a traceparent; it round-trips into a Link."""
        assert current_traceparent() is None
        tracer = tracer_provider.get_tracer("test")
        with tracer.start_as_current_span("op") as span:
            traceparent = current_traceparent()
        assert traceparent is not None
        link = link_from_traceparent(traceparent)
        assert link is not None
        assert span.get_span_context().trace_id == link.context.trace_id
        assert span.get_span_context().span_id == link.context.span_id
        assert link_from_traceparent("garbage") is None
        assert link_from_traceparent(None) is None

    async def test_apply_span_links_to_the_sender(
        self,
        redis_url: str,
        namespace: str,
        tracer_provider: TracerProvider,
        exporter: InMemorySpanExporter,
    ) -> None:
        """Two managers: the receiver's cache.invalidate.apply links to the sender's delete."""
        config = CacheConfig(redis_url=redis_url, namespace=namespace)
        async with (
            CacheManager(config, tracer_provider=tracer_provider) as sender,
            CacheManager(config, tracer_provider=tracer_provider) as receiver,
        ):
            await sender.delete("user:1")
            await eventually(lambda: spans_named(exporter, "cache.invalidate.apply"))
        (delete,) = spans_named(exporter, "cache.delete")
        (apply,) = spans_named(exporter, "cache.invalidate.apply")
        assert delete.context is not None
        (link,) = apply.links
        assert delete.context.trace_id == link.context.trace_id
        assert delete.context.span_id == link.context.span_id
        assert {"cache.bus.op": "delete", "cache.bus.origin": sender.origin}.items() <= attrs(
            apply
        ).items()
        assert receiver.origin != sender.origin

    async def test_apply_span_names_what_it_invalidates(
        self,
        redis_url: str,
        namespace: str,
        tracer_provider: TracerProvider,
        exporter: InMemorySpanExporter,
    ) -> None:
        """The receiver's cache.invalidate.apply carries the key prefix, as the sender's span
        does (a trace search by cache.key_prefix finds both), and the full key or pattern
        only where trace_full_keys allows it; keys of several prefixes name none."""
        full_exporter = InMemorySpanExporter()
        full_provider = TracerProvider()
        full_provider.add_span_processor(SimpleSpanProcessor(full_exporter))
        plain = CacheConfig(redis_url=redis_url, namespace=namespace)
        full = CacheConfig(redis_url=redis_url, namespace=namespace, trace_full_keys=True)
        try:
            async with (
                CacheManager(plain, tracer_provider=tracer_provider),
                CacheManager(full, tracer_provider=full_provider),
                InvalidationPublisher(config=plain) as publisher,
            ):
                await publisher.delete("user:alice@example.com")
                await publisher.clear_pattern("order:*")
                await publisher.delete("user:1", "user:2")
                await publisher.delete("user:3", "order:4")
                await eventually(
                    lambda: [
                        len(spans_named(spans, "cache.invalidate.apply"))
                        for spans in (exporter, full_exporter)
                    ],
                    expect=[4, 4],
                )
        finally:
            full_provider.shutdown()

        def named(spans: InMemorySpanExporter) -> list[dict[str, Any]]:
            return [
                {k: v for k, v in attrs(span).items() if k in ("cache.key", "cache.key_prefix")}
                for span in spans_named(spans, "cache.invalidate.apply")
            ]

        assert [
            {"cache.key_prefix": "user"},
            {"cache.key_prefix": "order"},
            {"cache.key_prefix": "user"},
            {},
        ] == named(exporter)
        assert [
            {"cache.key_prefix": "user", "cache.key": "user:alice@example.com"},
            {"cache.key_prefix": "order", "cache.key": "order:*"},
            {"cache.key_prefix": "user"},
            {},
        ] == named(full_exporter)

    def test_message_without_span_has_no_traceparent(self) -> None:
        """Outside any span the field stays absent from the wire."""
        assert (
            b"traceparent"
            not in BusMessage.delete(["k"], traceparent=current_traceparent()).encode()
        )


class TestMetrics:
    """Counters, histograms and gauges through the OpenTelemetry metrics API."""

    async def test_counters_gauges_and_durations(
        self, traced: CacheManager, metric_reader: InMemoryMetricReader, namespace: str
    ) -> None:
        """Hits and misses by tier, sets, gauges and the duration histogram are reported."""
        await traced.set("m:1", 1)
        await traced.get("m:1")
        await traced.get("m:2")
        points = metric_points(metric_reader)
        ours = {
            name: [p for p in found if p.attributes.get("cache.namespace") == namespace]
            for name, found in points.items()
        }
        hits = {p.attributes["cache.tier"]: p.value for p in ours["cache.hits"]}
        misses = {p.attributes["cache.tier"]: p.value for p in ours["cache.misses"]}
        assert 1 == hits["l1"]
        assert 1 == misses["l1"]
        assert 1 == misses["l2"]
        assert [1] == [p.value for p in ours["cache.sets"]]
        assert [1] == [p.value for p in ours["cache.l1.size"]]
        assert [1] == [p.value for p in ours["cache.l2.connected"]]
        assert [1] == [p.value for p in ours["cache.bus.connected"]]
        for name in (
            "cache.evictions",
            "cache.errors",
            "cache.bus.messages.received",
            "cache.bus.messages.published",
            "cache.bus.messages.dropped",
        ):
            assert ours[name], name
        durations = {
            (p.attributes["cache.operation"], p.attributes.get("cache.tier")): p
            for p in ours["cache.operation.duration"]
        }
        assert 1 == durations[("get", "l1")].count
        assert 1 == durations[("set", None)].count
        assert 0 < durations[("get", "l1")].sum < 1  # seconds

    async def test_stopped_manager_reports_nothing(
        self,
        redis_url: str,
        namespace: str,
        meter_provider: MeterProvider,
        metric_reader: InMemoryMetricReader,
    ) -> None:
        """After stop, the observable instruments no longer report the manager."""
        config = CacheConfig(redis_url=redis_url, namespace=namespace)
        async with CacheManager(config, meter_provider=meter_provider) as cache:
            await cache.set("k", 1)
        points = metric_points(metric_reader)
        assert not [
            p
            for p in points.get("cache.l1.size", [])
            if p.attributes.get("cache.namespace") == namespace
        ]


class TestHelpers:
    """Pure pieces: the histogram and the server attributes."""

    def test_histogram_percentiles(self) -> None:
        """p50/p99 land within a bucket (~19 %) above the true values."""
        histogram = LatencyHistogram()
        for ns in range(1_000, 101_000, 1_000):  # 1 µs .. 100 µs
            histogram.record(ns)
        stats = histogram.stats()
        assert 100 == stats["count"]
        assert stats["p50_ms"] is not None and stats["p99_ms"] is not None
        assert 0.050 <= stats["p50_ms"] <= 0.050 * 1.2
        assert 0.099 <= stats["p99_ms"] <= 0.100
        assert 0.1 == stats["max_ms"]
        assert 256 == len(histogram.counts)
        histogram.record(10**30)  # absurd values land in the last bucket
        assert 256 == len(histogram.counts)

    def test_empty_histogram(self) -> None:
        """No records, no percentiles."""
        assert {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None} == (
            LatencyHistogram().stats()
        )

    def test_server_attributes_never_hold_credentials(self) -> None:
        """Host and port only."""
        assert {"server.address": "db.example", "server.port": 6380} == server_attributes(
            "redis://user:s3cret@db.example:6380/0"
        )
        assert {"server.address": "db.example", "server.port": 6379} == server_attributes(
            "rediss://:s3cret@db.example"
        )
        assert {"server.address": "/tmp/r.sock"} == server_attributes("unix:///tmp/r.sock")
        assert {} == server_attributes(None)

    def test_explicit_noop_provider_is_inactive(self) -> None:
        """An explicit no-op provider counts as none."""
        telemetry = Telemetry(
            namespace="n", redis_url=None, tracer_provider=trace.NoOpTracerProvider()
        )
        assert telemetry.tracing_on is False


class TestGlobalProviderSetLater:
    """A global provider set after the manager started is picked up."""

    def test_picked_up_within_the_recheck_interval(self) -> None:
        """In a fresh process (global providers can be set once): spans appear after
        at most RECHECK_EVERY more operations."""
        script = textwrap.dedent(
            """
            import anyio
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter,
            )
            from coherent_cache import CacheConfig, CacheManager
            from coherent_cache._telemetry import RECHECK_EVERY

            async def main():
                config = CacheConfig(redis_url=None, enable_monitoring=False)
                async with CacheManager(config) as cache:
                    await cache.set("k", 1)
                    await cache.get("k")
                    exporter = InMemorySpanExporter()
                    provider = TracerProvider()
                    provider.add_span_processor(SimpleSpanProcessor(exporter))
                    trace.set_tracer_provider(provider)
                    for _ in range(RECHECK_EVERY + 1):
                        await cache.get("k")
                    names = {s.name for s in exporter.get_finished_spans()}
                    assert names == {"cache.get"}, names
                    print("OK")

            anyio.run(main)
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT_DIR,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "OK" in result.stdout, result.stderr


@pytest.fixture(scope="module")
def auth_server() -> Iterator[RedisServer]:
    """A private server that requires the password s3cret."""
    with RedisServer(extra_args=("--requirepass", "s3cret")) as server:
        yield server


class TestSecrets:
    """A password in the Redis URL never shows in logs, stats, health, repr or spans."""

    @pytest.mark.parametrize("case", ["right", "wrong", "down"])
    async def test_password_never_leaks(
        self,
        case: str,
        auth_server: RedisServer,
        namespace: str,
        tracer_provider: TracerProvider,
        exporter: InMemorySpanExporter,
    ) -> None:
        """Right password, wrong password (containing it), server down: "s3cret" (in the
        password and the bus signing key) appears in no log line, stats, health, repr or
        span attribute."""
        port = {"right": auth_server.port, "wrong": auth_server.port, "down": free_port()}[case]
        password = "s3cret-but-wrong" if case == "wrong" else "s3cret"
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        config = CacheConfig(
            redis_url=url,
            namespace=namespace,
            connect_timeout=0.5,
            bus_signing_keys=(SecretStr("s3cret-bus-signing-key"),),
        )
        seen: list[str] = []
        with structlog.testing.capture_logs() as logs:
            cache = CacheManager(config, tracer_provider=tracer_provider)
            seen.append(repr(cache))
            async with cache:
                await cache.set("user:1", {"a": 1})
                await cache.get("user:1")
                await cache.delete("user:1")
                await cache.clear_pattern("user:*")
                seen.append(repr(cache))
                seen.append(repr(cache.config))
                seen.append(str(await cache.get_stats()))
                health = await cache.health()
                seen.append(str(health))
                if cache.monitor is not None:
                    seen.append(str(await cache.monitor.check()))
            expected = "healthy" if case == "right" else "degraded"
            assert expected == health["status"]
        seen.extend(str(entry) for entry in logs)
        for span in exporter.get_finished_spans():
            seen.append(str(attrs(span)))
            seen.extend(str(dict(e.attributes or {})) for e in span.events)
        assert logs
        assert exporter.get_finished_spans()
        assert not [text for text in seen if "s3cret" in text]
