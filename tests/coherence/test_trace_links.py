"""A bus message carries its sender's trace context to an instance in another process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from coherent_cache import CacheConfig, CacheManager

from ..conftest import eventually
from ..support.multiproc import Worker

pytestmark = pytest.mark.anyio


def exported_spans(path: Path) -> list[dict[str, Any]]:
    """The spans the worker wrote so far (one JSON object a line)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class TestTraceLinkAcrossProcesses:
    async def test_apply_span_links_to_the_senders_span(
        self, redis_url: str, namespace: str, tmp_path: Path
    ) -> None:
        """B's cache.invalidate.apply span links to A's cache.delete span: same trace_id
        and span_id, carried by the message's W3C traceparent."""
        spans_file = tmp_path / "worker-spans.jsonl"
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        config = CacheConfig(redis_url=redis_url, namespace=namespace, enable_monitoring=False)
        try:
            async with (
                Worker(redis_url=redis_url, namespace=namespace, _spans_file=str(spans_file)),
                CacheManager(config, tracer_provider=provider) as sender,
            ):
                await sender.delete("user:1")
                (delete,) = [s for s in exporter.get_finished_spans() if s.name == "cache.delete"]

                def applied() -> list[dict[str, Any]]:
                    return [
                        s
                        for s in exported_spans(spans_file)
                        if s["name"] == "cache.invalidate.apply"
                    ]

                await eventually(applied, within=10)
        finally:
            provider.shutdown()
        (apply,) = applied()
        assert delete.context is not None
        (link,) = apply["links"]
        assert f"0x{delete.context.trace_id:032x}" == link["context"]["trace_id"]
        assert f"0x{delete.context.span_id:016x}" == link["context"]["span_id"]
        assert sender.origin == apply["attributes"]["cache.bus.origin"]
        assert "delete" == apply["attributes"]["cache.bus.op"]
        # A new trace of its own in B, linked rather than parented.
        assert apply["parent_id"] is None
