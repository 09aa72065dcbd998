"""Tracing set up from the standard ``OTEL_*`` variables: the example app's, and the tests'.

``setup_tracing()`` returns an OpenTelemetry SDK tracer provider exporting spans over OTLP
through a ``BatchSpanProcessor``, configured only by the environment, or ``None`` when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is not set (or the packages are missing): the library
itself never installs a provider. The compose stack's apps (compose/docker-compose.yml)
and the OTLP end-to-end test (tests/coherence/test_otlp.py) both run this function::

    OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4318   # base URL: /v1/traces is added
    OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf        # the default here; or grpc (port 4317)
    OTEL_SERVICE_NAME=coherent-cache-api
    OTEL_RESOURCE_ATTRIBUTES=service.instance.id=app1

Call ``provider.shutdown()`` when the application stops: it exports the spans still
batched.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import structlog

__all__ = ["setup_tracing"]

log = structlog.get_logger("examples.tracing")


def setup_tracing() -> Any:
    """An SDK tracer provider exporting over OTLP, or ``None`` when not configured.

    Configured means ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and ``opentelemetry-sdk`` and
    the exporter (``opentelemetry-exporter-otlp-proto-http``, or ``-grpc`` with
    ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``) are installed; the exporter and the resource
    read the other ``OTEL_*`` variables (service name, resource attributes, headers,
    compression, batch settings) themselves.
    """
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        grpc = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "grpc"
        exporter_module = importlib.import_module(
            "opentelemetry.exporter.otlp.proto." + ("grpc" if grpc else "http") + ".trace_exporter"
        )
    except ImportError as exc:
        log.warning("tracing_disabled", reason="missing package", detail=str(exc))
        return None
    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(exporter_module.OTLPSpanExporter()))
    return provider
