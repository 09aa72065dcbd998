"""A small OTLP/HTTP receiver for tests: what a collector (or Jaeger) would get, decoded.

``OtlpReceiver`` listens on 127.0.0.1 (a free port) with a stdlib ``ThreadingHTTPServer``
and accepts the OTLP/HTTP protobuf encoding the real exporters send:

- ``POST /v1/traces``: an ``ExportTraceServiceRequest`` (``Content-Type:
  application/x-protobuf``, body gzip- or deflate-compressed when ``Content-Encoding``
  says so), decoded with ``opentelemetry-proto``; every span is kept as a `ReceivedSpan`,
  and the answer is 200 with an empty ``ExportTraceServiceResponse`` (full success);
- ``POST /v1/metrics``: an ``ExportMetricsServiceRequest``, decoded and counted
  (`metric_names`), answered 200 with an empty ``ExportMetricsServiceResponse``.

Anything else is refused as a collector would: 404 for another path, 405 for another
method, 415 for another content type or encoding, 413 over `MAX_BODY` bytes, 400 for a
body that does not decode. Every request's path, content type and encoding is recorded
(`requests`). Use ``with OtlpReceiver() as receiver:`` and point an exporter at
``receiver.endpoint`` (the base URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT``).
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Self

import anyio
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

MAX_BODY: Final = 16 << 20
"""Largest request body accepted (bytes, before decompression)."""
PROTOBUF: Final = "application/x-protobuf"
IDLE_TIMEOUT: Final = 5.0
"""Seconds an idle keep-alive connection is held before its thread closes it."""


def otlp_environment(endpoint: str, service_name: str, instance_id: str) -> dict[str, str]:
    """The ``OTEL_*`` variables that make a process export its spans to ``endpoint``.

    The same variables, with the same protocol, as the apps of compose/docker-compose.yml
    (tests/test_compose.py checks that they match): the base URL (the exporter adds
    ``/v1/traces``), OTLP over HTTP with protobuf, the service name, and the instance id
    as a resource attribute.
    """
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": service_name,
        "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={instance_id}",
    }


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        found[pair.key] = _value(pair.value)
    return found


@dataclass(frozen=True)
class ReceivedLink:
    """A span link as received: the linked span's ids (hex) and the link's attributes."""

    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as decoded from an export request (ids as lowercase hex, W3C style)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: str
    """``SPAN_KIND_INTERNAL``, ``SPAN_KIND_CONSUMER``..."""
    attributes: dict[str, Any]
    links: list[ReceivedLink]
    resource: dict[str, Any]
    scope_name: str
    scope_version: str
    status_code: str

    @property
    def service_name(self) -> str | None:
        """The ``service.name`` of the resource that sent it."""
        name = self.resource.get("service.name")
        return name if isinstance(name, str) else None


@dataclass(frozen=True)
class ReceivedRequest:
    """One POST as received (whether or not it was accepted)."""

    path: str
    content_type: str
    content_encoding: str
    status: int


def decode_spans(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    """The spans of an export request, each with its resource and scope."""
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            for span in scope_spans.spans:
                links = [
                    ReceivedLink(
                        trace_id=link.trace_id.hex(),
                        span_id=link.span_id.hex(),
                        attributes=_attributes(link.attributes),
                    )
                    for link in span.links
                ]
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        kind=Span.SpanKind.Name(span.kind),
                        attributes=_attributes(span.attributes),
                        links=links,
                        resource=resource,
                        scope_name=scope.name,
                        scope_version=scope.version,
                        status_code=span.status.StatusCode.Name(span.status.code),
                    )
                )
    return spans


@dataclass
class _Store:
    lock: threading.Lock = field(default_factory=threading.Lock)
    spans: list[ReceivedSpan] = field(default_factory=list)
    metric_names: list[str] = field(default_factory=list)
    requests: list[ReceivedRequest] = field(default_factory=list)


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _handler(store: _Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the exporters' sessions expect
        timeout = IDLE_TIMEOUT

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the test output is not the place for an access log

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise _Refused(413, "body too large")
            raw = self.rfile.read(length)
            encoding = (self.headers.get("Content-Encoding") or "identity").lower()
            if encoding == "gzip":
                return gzip.decompress(raw)
            if encoding == "deflate":
                return zlib.decompress(raw)
            if encoding != "identity":
                raise _Refused(415, f"content encoding {encoding!r}")
            return raw

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip()
            try:
                status, reply, reply_type = 200, self._accept(path, content_type), PROTOBUF
            except _Refused as refused:
                status, reply, reply_type = refused.status, str(refused).encode(), "text/plain"
            except (DecodeError, OSError, EOFError, zlib.error, ValueError) as exc:
                status, reply, reply_type = 400, f"undecodable: {exc}".encode(), "text/plain"
            received = ReceivedRequest(
                path=path,
                content_type=content_type,
                content_encoding=self.headers.get("Content-Encoding") or "",
                status=status,
            )
            with store.lock:  # before answering: the sender sees it recorded once answered
                store.requests.append(received)
            self._answer(status, reply, reply_type)

        def _accept(self, path: str, content_type: str) -> bytes:
            """Decode and keep one export request; the (empty) success response."""
            if path not in ("/v1/traces", "/v1/metrics"):
                raise _Refused(404, "not an OTLP path")
            if content_type != PROTOBUF:
                raise _Refused(415, f"content type {content_type!r}")
            body = self._body()
            if path == "/v1/traces":
                spans = decode_spans(ExportTraceServiceRequest.FromString(body))
                with store.lock:
                    store.spans.extend(spans)
                return ExportTraceServiceResponse().SerializeToString()
            metrics = ExportMetricsServiceRequest.FromString(body)
            names = [
                metric.name
                for resource_metrics in metrics.resource_metrics
                for scope_metrics in resource_metrics.scope_metrics
                for metric in scope_metrics.metrics
            ]
            with store.lock:
                store.metric_names.extend(names)
            return ExportMetricsServiceResponse().SerializeToString()

        def do_GET(self) -> None:
            self._answer(405, b"POST only", "text/plain")

    return Handler


class OtlpReceiver:
    """An OTLP/HTTP endpoint on 127.0.0.1 collecting what exporters send (see module doc)."""

    def __init__(self) -> None:
        self._store = _Store()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self._store))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otlp-receiver",
            daemon=True,
        )

    @property
    def endpoint(self) -> str:
        """The base URL (``OTEL_EXPORTER_OTLP_ENDPOINT``): ``http://127.0.0.1:<port>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()  # returns within poll_interval
        self._server.server_close()
        self._thread.join(timeout=5)

    def spans(self, name: str | None = None) -> list[ReceivedSpan]:
        """The spans received so far (those named ``name`` only, if given)."""
        with self._store.lock:
            found = list(self._store.spans)
        return found if name is None else [s for s in found if s.name == name]

    @property
    def metric_names(self) -> list[str]:
        """The name of every metric received, once per export that carried it."""
        with self._store.lock:
            return list(self._store.metric_names)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every POST received so far, accepted or not."""
        with self._store.lock:
            return list(self._store.requests)

    async def wait_for_spans(
        self,
        check: Callable[[list[ReceivedSpan]], bool],
        *,
        within: float = 10.0,
    ) -> list[ReceivedSpan]:
        """The spans received, once ``check(spans)`` holds; AssertionError after ``within`` s."""
        with anyio.move_on_after(within):
            while not check(spans := self.spans()):  # noqa: ASYNC110 - arrivals come from a thread
                await anyio.sleep(0.01)
            return spans
        raise AssertionError(
            f"waited {within}s for spans; received {[s.name for s in self.spans()]}"
        )
