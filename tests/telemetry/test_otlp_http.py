"""The worker's exporter to Loomview's receiver: delivers, retries what it should, never raises."""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, TraceFlags

from telemetry.otlp_http import WireBatchSpanProcessor, WireSpanExporter
from tests.conftest import free_port
from tests.tracing.collector import running_collector

RESOURCE = Resource.create({"service.name": "loomview-worker"})


def spans(count: int = 3) -> list[ReadableSpan]:
    return [
        ReadableSpan(
            name=f"span {n}",
            context=SpanContext(7, n + 1, is_remote=False, trace_flags=TraceFlags(1)),
            resource=RESOURCE,
            attributes={"temporal.workflow.id": "wf-1", "n": n},
            start_time=1_000 + n,
            end_time=2_000 + n,
        )
        for n in range(count)
    ]


def test_delivers_protobuf_with_the_token() -> None:
    with running_collector() as collector:
        exporter = WireSpanExporter(collector.url, headers={"Authorization": "Bearer t0k"})
        assert exporter.export(spans(3)) == SpanExportResult.SUCCESS
        assert exporter.export(spans(2)) == SpanExportResult.SUCCESS
        exporter.shutdown()
    assert [s.name for s in collector.spans] == ["span 0", "span 1", "span 2", "span 0", "span 1"]
    assert collector.spans[1].attributes == {"temporal.workflow.id": "wf-1", "n": 1}
    assert all(h["Authorization"] == "Bearer t0k" for h in collector.headers)
    assert all(h["Content-Type"] == "application/x-protobuf" for h in collector.headers)


def test_retries_a_busy_receiver_as_retry_after_says() -> None:
    with running_collector() as collector:
        collector.status, collector.retry_after = 503, "0.2"
        exporter = WireSpanExporter(collector.url, timeout=10)

        def recover() -> None:
            while len(collector.headers) < 2:
                time.sleep(0.01)
            collector.status = None

        threading.Thread(target=recover).start()
        assert exporter.export(spans(1)) == SpanExportResult.SUCCESS
    assert len(collector.headers) >= 3 and len(collector.spans) == 1


def test_a_rejection_is_not_retried_and_not_raised() -> None:
    with running_collector(status=400) as collector:
        exporter = WireSpanExporter(collector.url)
        assert exporter.export(spans(1)) == SpanExportResult.FAILURE
    assert len(collector.headers) == 1 and collector.spans == []


def test_nobody_listening_fails_within_the_timeout() -> None:
    exporter = WireSpanExporter(f"http://127.0.0.1:{free_port()}/v1/traces", timeout=1.5)
    began = time.monotonic()
    assert exporter.export(spans(1)) == SpanExportResult.FAILURE
    assert time.monotonic() - began < 5


def test_shutdown_stops_retrying_and_later_exports() -> None:
    with running_collector(status=503) as collector:
        exporter = WireSpanExporter(collector.url, timeout=30)
        threading.Timer(0.3, exporter.shutdown).start()
        began = time.monotonic()
        assert exporter.export(spans(1)) == SpanExportResult.FAILURE
        assert time.monotonic() - began < 5
        assert exporter.export(spans(1)) == SpanExportResult.FAILURE


def test_a_kept_alive_connection_the_receiver_closed_is_opened_again_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The receiver keeps the connection open, then drops it while idle (as a server
    with a keep-alive timeout does): the next export reconnects, with no retry delay."""
    delivered: list[int] = []

    class ClosingHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            delivered.append(len(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.close_connection = True  # closed after answering, without saying so

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), ClosingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        exporter = WireSpanExporter(f"http://127.0.0.1:{server.server_address[1]}/v1/traces")
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="telemetry.otlp_http"):
            for _ in range(3):
                assert exporter.export(spans(1)) == SpanExportResult.SUCCESS
                time.sleep(0.05)  # the server has closed its end by now
        assert time.monotonic() - began < 0.8  # no back-off (the first is ~1 s)
        assert len(delivered) == 3 and caplog.text == ""
        exporter.shutdown()
    finally:
        server.shutdown()
        server.server_close()


# -- WireBatchSpanProcessor: the batch processor that queues encoded spans -------------


def test_batches_encoded_spans_and_flushes_what_is_queued() -> None:
    with running_collector() as collector:
        processor = WireBatchSpanProcessor(
            WireSpanExporter(collector.url), schedule_delay_millis=60_000, max_export_batch_size=4
        )
        for span in spans(10):
            processor.on_end(span)
        # Two full batches go at once (the thread is woken), the rest waits for a flush.
        deadline = time.monotonic() + 10
        while len(collector.spans) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(collector.spans) == 8
        assert processor.force_flush()
        processor.shutdown()
    assert [s.name for s in collector.spans] == [f"span {n}" for n in range(10)]
    assert collector.spans[3].attributes == {"temporal.workflow.id": "wf-1", "n": 3}
    assert collector.batch_sizes == [4, 4, 2]


def test_exports_on_its_schedule_and_at_shutdown() -> None:
    with running_collector() as collector:
        processor = WireBatchSpanProcessor(
            WireSpanExporter(collector.url), schedule_delay_millis=50
        )
        processor.on_end(spans(1)[0])
        deadline = time.monotonic() + 10
        while not collector.spans and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [s.name for s in collector.spans] == ["span 0"]
        for span in spans(3)[1:]:
            processor.on_end(span)
        processor.shutdown()
        processor.on_end(spans(1)[0])  # after shutdown: dropped, not raised
    assert [s.name for s in collector.spans] == ["span 0", "span 1", "span 2"]
    assert not processor.force_flush()


def test_a_full_queue_drops_the_oldest_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with running_collector() as collector:
        processor = WireBatchSpanProcessor(
            WireSpanExporter(collector.url),
            schedule_delay_millis=60_000,
            max_queue_size=5,
            max_export_batch_size=5,
        )
        processor._export_lock.acquire()  # no export until the flush below
        with caplog.at_level(logging.WARNING, logger="telemetry.otlp_http"):
            for span in spans(8):
                processor.on_end(span)
        processor._export_lock.release()
        processor.force_flush()
        processor.shutdown()
    assert [s.name for s in collector.spans] == [f"span {n}" for n in range(3, 8)]
    assert "export queue full" in caplog.text


def test_unsampled_and_unencodable_spans_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    unsampled = ReadableSpan(
        name="unsampled", context=SpanContext(7, 99, is_remote=False), resource=RESOURCE
    )

    class Broken(ReadableSpan):
        @property
        def attributes(self) -> Any:
            raise RuntimeError("no attributes")

    broken = Broken(
        name="broken",
        context=SpanContext(7, 98, is_remote=False, trace_flags=TraceFlags(1)),
        resource=RESOURCE,
    )
    with running_collector() as collector:
        processor = WireBatchSpanProcessor(WireSpanExporter(collector.url))
        with caplog.at_level(logging.ERROR, logger="telemetry.otlp_http"):
            for span in [unsampled, broken, *spans(1)]:
                processor.on_end(span)
        processor.shutdown()
    assert [s.name for s in collector.spans] == ["span 0"]
    assert "could not encode span 'broken'" in caplog.text
