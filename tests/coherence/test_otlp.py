"""Traces end to end over OTLP: two instances in separate processes, the real exporter.

Each worker sets up tracing the way the compose stack's apps do
(``examples.tracing.setup_tracing``, configured only by ``OTEL_*`` variables: OTLP over
HTTP with protobuf, a base endpoint, a service name) and exports to a local OTLP receiver
(tests/support/otlp_receiver.py) that decodes what arrives with ``opentelemetry-proto``.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..support.multiproc import Worker
from ..support.otlp_receiver import (
    PROTOBUF,
    OtlpReceiver,
    ReceivedLink,
    ReceivedSpan,
    otlp_environment,
)

pytestmark = pytest.mark.anyio

KEY = "user:alice@example.com"
"""A key holding personal data: only its prefix may leave the process."""
WRITER, READER = "otlp-writer", "otlp-reader"


def values(span: ReceivedSpan) -> list[Any]:
    """Every attribute value a span carries: its own, its links', its resource's."""
    found = [*span.attributes.values(), *span.resource.values()]
    for link in span.links:
        found.extend(link.attributes.values())
    return found


def only(spans: list[ReceivedSpan], name: str, service: str) -> ReceivedSpan:
    """The one span called ``name`` that ``service`` sent."""
    (span,) = [s for s in spans if s.name == name and s.service_name == service]
    return span


class TestOtlpEndToEnd:
    async def test_write_and_remote_invalidation_arrive_linked(
        self, redis_url: str, namespace: str
    ) -> None:
        """A deletes a key that B holds in L1; both export over OTLP/HTTP on exit. The
        receiver gets A's cache.delete and B's cache.invalidate.apply, B's span in a trace
        of its own with a link to A's span, from two named services, with the key's prefix
        but never the key itself."""
        config: dict[str, Any] = {
            "redis_url": redis_url,
            "namespace": namespace,
            "enable_monitoring": False,
        }
        with OtlpReceiver() as receiver:
            async with (
                Worker(_env=otlp_environment(receiver.endpoint, WRITER, "a"), **config) as a,
                Worker(_env=otlp_environment(receiver.endpoint, READER, "b"), **config) as b,
            ):
                await b.call("set", key=KEY, value={"plan": "pro"})
                assert {"plan": "pro"} == await b.call("peek", key=KEY)
                assert await a.call("delete", key=KEY)
                assert await b.call("wait_gone", key=KEY) is not None
            # Both workers stopped: each shut its tracer provider down, which exports the
            # spans its BatchSpanProcessor still held.

            def arrived(spans: list[ReceivedSpan]) -> bool:
                names = {(s.service_name, s.name) for s in spans}
                return {(WRITER, "cache.delete"), (READER, "cache.invalidate.apply")} <= names

            spans = await receiver.wait_for_spans(arrived, within=10)
            requests = receiver.requests

        # The exporter spoke OTLP/HTTP with protobuf to the base endpoint's /v1/traces.
        assert requests
        assert {("/v1/traces", PROTOBUF, 200)} == {
            (r.path, r.content_type, r.status) for r in requests
        }

        delete = only(spans, "cache.delete", WRITER)
        apply = only(spans, "cache.invalidate.apply", READER)
        assert "SPAN_KIND_INTERNAL" == delete.kind
        assert "SPAN_KIND_CONSUMER" == apply.kind
        assert ("coherent_cache", "coherent_cache") == (delete.scope_name, apply.scope_name)
        assert "a" == delete.resource["service.instance.id"]
        assert "b" == apply.resource["service.instance.id"]
        assert {
            "cache.namespace": namespace,
            "cache.key_prefix": "user",
            "cache.hit": True,
        }.items() <= delete.attributes.items()

        # B's span starts a trace of its own, linked (not parented) to A's write.
        assert [ReceivedLink(delete.trace_id, delete.span_id, {})] == apply.links
        assert apply.parent_span_id is None
        assert apply.trace_id != delete.trace_id
        assert {
            "cache.bus.op": "delete",
            "cache.bus.origin": a.origin,
            "cache.bus.key_count": 1,
            "cache.key_prefix": "user",
            "messaging.destination.name": f"{namespace}:invalidate",
        }.items() <= apply.attributes.items()

        # Two services, each span from its own; the key never in full (trace_full_keys off).
        assert {WRITER, READER} == {s.service_name for s in spans}
        for span in spans:
            assert "cache.key" not in span.attributes, span
            assert not [v for v in values(span) if "alice" in str(v)], span
