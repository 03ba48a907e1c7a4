"""A real OTLP/HTTP receiver for tests: records every span delivery, duplicates included."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tracing import otlp


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def _attrs(key_values: Any) -> str:
    return repr(sorted((kv.key, _value(kv.value)) for kv in key_values))


@dataclass(frozen=True)
class CollectedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    attributes: dict[str, Any]
    service_name: str
    span_kind: int = 0
    events: tuple[Any, ...] = ()
    links: tuple[Any, ...] = ()
    resource: tuple[tuple[str, Any], ...] = ()
    scope: str = ""
    scope_version: str = ""
    scope_attributes: str = "[]"

    @property
    def kind(self) -> str:
        return str(self.attributes.get("agents.span.type", "otel"))

    @property
    def workflow_id(self) -> str | None:
        value = self.attributes.get(
            "temporal.workflow.id", self.attributes.get("temporalWorkflowID")
        )
        return None if value is None else str(value)


@dataclass
class Collector:
    url: str
    spans: list[CollectedSpan] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Set while running to change the answer (e.g. 503, then 200 again).
    status: int | None = None
    retry_after: str | None = None
    headers: list[dict[str, str]] = field(default_factory=list)
    # Spans in each request received, in order.
    batch_sizes: list[int] = field(default_factory=list)

    def add(self, request: ExportTraceServiceRequest) -> None:
        rows = []
        for resource_spans in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    rows.append(
                        CollectedSpan(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            status_code=span.status.code,
                            status_message=span.status.message,
                            attributes={kv.key: _value(kv.value) for kv in span.attributes},
                            service_name=str(resource.get("service.name", "")),
                            span_kind=span.kind,
                            events=tuple(
                                (e.name, e.time_unix_nano, _attrs(e.attributes))
                                for e in span.events
                            ),
                            links=tuple(
                                (link.trace_id.hex(), link.span_id.hex(), _attrs(link.attributes))
                                for link in span.links
                            ),
                            resource=tuple(sorted((k, repr(v)) for k, v in resource.items())),
                            scope=scope_spans.scope.name,
                            scope_version=scope_spans.scope.version,
                            scope_attributes=_attrs(scope_spans.scope.attributes),
                        )
                    )
        with self.lock:
            self.spans.extend(rows)
            self.requests += 1
            self.batch_sizes.append(len(rows))

    def for_workflow(self, workflow_id: str) -> list[CollectedSpan]:
        """The run's spans: those that say so, plus their descendants that do not."""
        with self.lock:
            spans = list(self.spans)
        ids = {s.span_id for s in spans if s.workflow_id == workflow_id}
        changed = True
        while changed:
            changed = False
            for span in spans:
                if (
                    span.span_id not in ids
                    and span.parent_span_id in ids
                    and span.workflow_id is None
                ):
                    ids.add(span.span_id)
                    changed = True
        return [s for s in spans if s.span_id in ids]

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 30.0, settle: float = 0.5
    ) -> None:
        """Wait for ``predicate``, then until no new span arrives for ``settle`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("the collector never saw the expected spans")
            time.sleep(0.05)
        count = -1
        while count != len(self.spans):
            count = len(self.spans)
            time.sleep(settle)


@contextmanager
def running_collector(status: int = 200) -> Iterator[Collector]:
    collector: Collector

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            content_type = self.headers.get("Content-Type", "application/x-protobuf")
            request = otlp.parse_request(body, content_type)
            collector.headers.append(dict(self.headers.items()))
            answer = collector.status if collector.status is not None else status
            if answer == 200:
                collector.add(request)
            payload = ExportTraceServiceResponse().SerializeToString()
            self.send_response(answer)
            self.send_header("Content-Type", "application/x-protobuf")
            if collector.retry_after is not None and answer != 200:
                self.send_header("Retry-After", collector.retry_after)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    collector = Collector(url=f"http://127.0.0.1:{server.server_address[1]}/v1/traces")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        server.shutdown()
        server.server_close()
