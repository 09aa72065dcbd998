"""The test OTLP receiver decodes what the real exporters send, and refuses what they don't."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind

from .support.otlp_receiver import PROTOBUF, OtlpReceiver, ReceivedLink


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def post(url: str, body: bytes, content_type: str = PROTOBUF, method: str = "POST") -> int:
    """The HTTP status of one request (bounded by a timeout)."""
    request = urllib.request.Request(url, data=body if method == "POST" else None, method=method)
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


class TestDecoding:
    @pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
    def test_spans_from_the_real_exporter(
        self, receiver: OtlpReceiver, compression: Compression
    ) -> None:
        """Names, ids, parent, kind, links, typed attributes, resource and scope arrive
        as sent, plain or gzip-compressed."""
        provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
        exporter = OTLPSpanExporter(
            endpoint=f"{receiver.endpoint}/v1/traces", compression=compression, timeout=5
        )
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("scope", "1.2")
        try:
            with tracer.start_as_current_span("outer") as outer:
                with tracer.start_as_current_span(
                    "inner",
                    kind=SpanKind.CONSUMER,
                    links=[Link(outer.get_span_context(), {"why": "test"})],
                    attributes={"s": "x", "i": 3, "f": 0.5, "b": True, "l": ["a", "b"]},
                ):
                    pass
        finally:
            provider.shutdown()
        inner, outer_received = receiver.spans("inner")[0], receiver.spans("outer")[0]
        context = outer.get_span_context()
        assert f"{context.trace_id:032x}" == outer_received.trace_id == inner.trace_id
        assert f"{context.span_id:016x}" == outer_received.span_id == inner.parent_span_id
        assert outer_received.parent_span_id is None
        assert "SPAN_KIND_CONSUMER" == inner.kind
        assert [ReceivedLink(outer_received.trace_id, outer_received.span_id, {"why": "test"})] == (
            inner.links
        )
        assert {"s": "x", "i": 3, "f": 0.5, "b": True, "l": ["a", "b"]} == inner.attributes
        assert "svc" == inner.service_name
        assert ("scope", "1.2") == (inner.scope_name, inner.scope_version)
        encoding = "gzip" if compression is Compression.Gzip else ""
        assert {("/v1/traces", encoding, 200)} == {
            (r.path, r.content_encoding, r.status) for r in receiver.requests
        }

    def test_metrics_are_accepted_and_counted(self, receiver: OtlpReceiver) -> None:
        """An OTLP metrics export is answered 200 and its metric names are counted."""
        exporter = OTLPMetricExporter(endpoint=f"{receiver.endpoint}/v1/metrics", timeout=5)
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
        provider = MeterProvider(metric_readers=[reader])
        provider.get_meter("scope").create_counter("things").add(2)
        provider.shutdown()  # collects and exports once
        assert ["things"] == receiver.metric_names
        assert [("/v1/metrics", 200)] == [(r.path, r.status) for r in receiver.requests]


class TestRefusals:
    def test_what_a_collector_refuses(self, receiver: OtlpReceiver) -> None:
        """Another path, method, content type or an undecodable body is refused, and
        nothing is collected."""
        base = receiver.endpoint
        assert 404 == post(f"{base}/v1/logs", b"")
        assert 415 == post(f"{base}/v1/traces", b"{}", content_type="application/json")
        assert 400 == post(f"{base}/v1/traces", b"\xff\xff\xff\xff")
        assert 405 == post(f"{base}/v1/traces", b"", method="GET")
        assert [] == receiver.spans()
        assert [404, 415, 400] == [r.status for r in receiver.requests]

    @pytest.mark.anyio
    async def test_waiting_is_bounded(self, receiver: OtlpReceiver) -> None:
        """Waiting for spans that never come fails after ``within`` seconds."""
        with pytest.raises(AssertionError, match=r"waited 0\.05s for spans"):
            await receiver.wait_for_spans(lambda spans: bool(spans), within=0.05)
