"""One export request to one collector: real HTTP and gRPC servers, every answer they can give."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import free_port
from tests.tracing.collector import running_collector
from tests.tracing.grpc_collector import running_grpc_collector
from tests.tracing.spans import agent_run, record, request_of
from tracing import encode, transport
from tracing.exporters import GRPC, HTTP_JSON, HTTP_PROTOBUF, Exporter

TOKEN = "secret-header-value-4711"


@pytest.fixture(scope="module")
def request_body() -> ExportTraceServiceRequest:
    return request_of(record(agent_run))


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@contextmanager
def answering(answer: Answer) -> Iterator[str]:
    """An HTTP endpoint that answers every POST with ``answer``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
        server.server_close()


def exporter(endpoint: str, **settings: Any) -> Exporter:
    # A name per call: sessions and channels are cached per collector.
    name = f"c{time.monotonic_ns()}"
    return Exporter(name=name, endpoint=endpoint, headers={"x-api-key": TOKEN}, **settings)


@pytest.mark.parametrize("protocol", [HTTP_PROTOBUF, HTTP_JSON])
def test_http_delivers_every_span_with_the_headers(
    request_body: ExportTraceServiceRequest, protocol: str
) -> None:
    with running_collector() as collector:
        outcome = transport.send(exporter(collector.url, protocol=protocol), request_body)
    assert outcome == transport.Outcome(ok=True)
    assert len(collector.spans) == encode.span_count(request_body) == 5
    headers = {k.lower(): v for k, v in collector.headers[0].items()}
    assert headers["x-api-key"] == TOKEN
    expected = "application/json" if protocol == HTTP_JSON else "application/x-protobuf"
    assert headers["content-type"] == expected


def test_grpc_delivers_every_span_with_the_metadata(
    request_body: ExportTraceServiceRequest,
) -> None:
    with running_grpc_collector() as collector:
        outcome = transport.send(exporter(collector.url, protocol=GRPC), request_body)
    assert outcome == transport.Outcome(ok=True)
    assert len(collector.spans) == 5
    assert collector.metadata[0]["x-api-key"] == TOKEN


@pytest.mark.parametrize("content_type", ["application/x-protobuf", "application/json"])
def test_a_partial_success_is_accepted_and_counts_what_was_dropped(
    request_body: ExportTraceServiceRequest, content_type: str
) -> None:
    response = ExportTraceServiceResponse(
        partial_success=ExportTracePartialSuccess(rejected_spans=2, error_message="too old")
    )
    if content_type == "application/json":
        body = b'{"partialSuccess": {"rejectedSpans": "2", "errorMessage": "too old"}}'
    else:
        body = response.SerializeToString()
    with answering(Answer(200, body, {"Content-Type": content_type})) as url:
        outcome = transport.send(exporter(url), request_body)
    assert outcome.ok and outcome.dropped == 2
    assert outcome.error == "collector dropped 2 span(s): too old"


def test_an_unreadable_success_body_is_still_a_success(
    request_body: ExportTraceServiceRequest,
) -> None:
    with answering(Answer(200, b"\xff\x00 not protobuf")) as url:
        assert transport.send(exporter(url), request_body) == transport.Outcome(ok=True)


def test_retryable_http_answers_say_when_to_try_again(
    request_body: ExportTraceServiceRequest,
) -> None:
    with answering(Answer(503, b"overloaded", {"Retry-After": "7"})) as url:
        outcome = transport.send(exporter(url), request_body)
    assert (outcome.ok, outcome.retryable, outcome.retry_after) == (False, True, 7.0)
    assert outcome.error == "HTTP 503: overloaded"
    with answering(Answer(429, b"", {"Retry-After": formatdate(time.time() + 60)})) as url:
        outcome = transport.send(exporter(url), request_body)
    assert outcome.retryable and outcome.retry_after is not None
    assert 55 < outcome.retry_after <= 60


def test_a_rejected_request_is_permanent_and_says_the_collectors_reason(
    request_body: ExportTraceServiceRequest,
) -> None:
    status = status_pb2.Status(code=3, message="span name too long")
    answer = Answer(400, status.SerializeToString(), {"Content-Type": "application/x-protobuf"})
    with answering(answer) as url:
        outcome = transport.send(exporter(url), request_body)
    assert (outcome.ok, outcome.retryable) == (False, False)
    assert outcome.error == "HTTP 400: span name too long"
    answer = Answer(401, b"x" * 5000, {"Content-Type": "text/plain"})
    with answering(answer) as url:
        outcome = transport.send(exporter(url), request_body)
    assert not outcome.retryable and len(outcome.error) == transport.MAX_ERROR_CHARS


def test_grpc_codes_decide_whether_to_retry(request_body: ExportTraceServiceRequest) -> None:
    with running_grpc_collector() as collector:
        collector.fail_with, collector.retry_delay = grpc.StatusCode.UNAVAILABLE, 4
        outcome = transport.send(exporter(collector.url, protocol=GRPC), request_body)
        assert (outcome.ok, outcome.retryable, outcome.retry_after) == (False, True, 4.0)
        assert outcome.error == "gRPC UNAVAILABLE: collector says no"
        collector.fail_with, collector.retry_delay = grpc.StatusCode.INVALID_ARGUMENT, None
        outcome = transport.send(exporter(collector.url, protocol=GRPC), request_body)
        assert (outcome.ok, outcome.retryable, outcome.retry_after) == (False, False, None)


@pytest.mark.parametrize("protocol", [HTTP_PROTOBUF, GRPC])
def test_nobody_listening_is_retryable_and_never_raises_or_leaks_headers(
    request_body: ExportTraceServiceRequest, protocol: str
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/v1/traces"
    if protocol == GRPC:
        endpoint = f"http://127.0.0.1:{free_port()}"
    outcome = transport.send(exporter(endpoint, protocol=protocol, timeout=2.0), request_body)
    assert (outcome.ok, outcome.retryable) == (False, True)
    assert outcome.error and TOKEN not in outcome.error


def test_a_broken_setting_is_an_outcome_not_an_exception(
    request_body: ExportTraceServiceRequest,
) -> None:
    broken = exporter("https://127.0.0.1:1", protocol=GRPC, ca_cert="/nonexistent/ca.pem")
    outcome = transport.send(broken, request_body)
    assert not outcome.ok and "FileNotFoundError" in outcome.error


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    assert transport.retry_after_seconds(None) is None
    assert transport.retry_after_seconds("") is None
    assert transport.retry_after_seconds(" 120 ") == 120.0
    assert transport.retry_after_seconds(formatdate(now + 30), now=now) == pytest.approx(30)
    assert transport.retry_after_seconds(formatdate(now - 30), now=now) == 0.0
    assert transport.retry_after_seconds("soon") is None
    assert transport.retry_after_seconds("-5") is None
