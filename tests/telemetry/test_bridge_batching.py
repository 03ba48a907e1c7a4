"""The bridge's spans, converted a few at a time and their content encoded once.

With only Loomview's batch processors the bridge converts ended spans in small
batches (on the thread that ends the batch's last span, at a trace's end, at a
flush, and on the export thread's schedule), and keeps the encoded attributes of
span data that comes back (agents, handoffs, Temporal's spans) by content.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from agents.tracing.provider import DefaultTraceProvider
from agents.tracing.span_data import CustomSpanData
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.sdk.resources import Resource

from telemetry.agents_bridge import OtelBridgeProcessor
from telemetry.otel import FanOutSpanProcessor
from telemetry.otlp_http import WireBatchSpanProcessor, WireSpanExporter
from telemetry.redact import set_extra_patterns


class Capture(WireSpanExporter):
    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9/v1/traces")
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()

    def send(self, body: bytes, count: int) -> Any:
        with self.lock:
            self.bodies.append(body)

    def spans(self) -> list[SpanProto]:
        with self.lock:
            bodies = list(self.bodies)
        found: list[SpanProto] = []
        for body in bodies:
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    found.extend(scope.spans)
        return found


@pytest.fixture
def wired() -> Iterator[tuple[DefaultTraceProvider, OtelBridgeProcessor, Capture]]:
    capture = Capture()
    batch = WireBatchSpanProcessor(capture, schedule_delay_millis=50)
    bridge = OtelBridgeProcessor(
        FanOutSpanProcessor([batch]), Resource.create({"service.name": "batching"})
    )
    assert bridge._queues == [batch]  # the path under test: bytes straight to the queue
    provider = DefaultTraceProvider()
    provider.set_processors([bridge])
    try:
        yield provider, bridge, capture
    finally:
        batch.shutdown()


def _attributes(span: SpanProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = (kind, getattr(kv.value, kind) if kind else None)
    return out


def _open_trace(provider: DefaultTraceProvider, name: str) -> Any:
    """A trace started and left open (its end would convert what waits)."""
    trace = provider.create_trace(name)
    trace.start()
    return trace


def test_a_lone_span_reaches_the_exporter_on_schedule_with_no_more_spans_or_flush(
    wired: tuple[DefaultTraceProvider, OtelBridgeProcessor, Capture],
) -> None:
    provider, _, capture = wired
    trace = _open_trace(provider, "waiting for a signal")
    with provider.create_span(CustomSpanData(name="lone", data={"n": 1}), parent=trace):
        pass
    # The trace stays open, no other span ends and nobody flushes: the export
    # thread converts the held-back span on its own schedule (50 ms here).
    deadline = time.monotonic() + 5
    while not capture.spans() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [span.name for span in capture.spans()] == ["lone"]


def test_spans_ended_on_many_threads_are_each_exported_once(
    wired: tuple[DefaultTraceProvider, OtelBridgeProcessor, Capture],
) -> None:
    provider, bridge, capture = wired
    trace = _open_trace(provider, "fan out")
    threads, per_thread = 6, 150

    def work(index: int) -> None:
        for n in range(per_thread):
            with provider.create_span(
                CustomSpanData(name=f"t{index}-{n}", data={"n": n % 7}), parent=trace
            ):
                pass

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    bridge.force_flush()
    names = [span.name for span in capture.spans()]
    assert len(names) == threads * per_thread
    assert set(names) == {f"t{i}-{n}" for i in range(threads) for n in range(per_thread)}
    # Content shared by many spans (n % 7) still gives each span its own value.
    for span in capture.spans():
        n = int(span.name.split("-")[1])
        assert _attributes(span)["agents.custom.n"] == ("int_value", n % 7)


def test_spans_of_the_same_content_keep_their_own_ids_and_values_of_each_type(
    wired: tuple[DefaultTraceProvider, OtelBridgeProcessor, Capture],
) -> None:
    provider, bridge, capture = wired
    with provider.create_trace("types") as trace:
        for value in (1, True, 1.0, 1, "1", [1], (1,), None):
            with provider.create_span(CustomSpanData(name="same", data={"v": value}), parent=trace):
                pass
    bridge.force_flush()
    spans = [span for span in capture.spans() if span.name == "same"]
    found = [_attributes(span).get("agents.custom.v") for span in spans]
    assert found == [
        ("int_value", 1),
        ("bool_value", True),
        ("double_value", 1.0),
        ("int_value", 1),
        ("string_value", "1"),
        None,  # containers are in agents.custom.data only
        None,
        None,
    ]
    data = [_attributes(span)["agents.custom.data"][1] for span in spans]
    assert data == [
        '{"v":1}',
        '{"v":true}',
        '{"v":1.0}',
        '{"v":1}',
        '{"v":"1"}',
        '{"v":[1]}',
        '{"v":[1]}',
        '{"v":null}',
    ]
    assert len({span.span_id for span in spans}) == len(spans)
    span_ids = {_attributes(span)["agents.span_id"][1] for span in spans}
    assert len(span_ids) == len(spans)


def test_changed_redaction_patterns_apply_to_span_content_seen_before(
    wired: tuple[DefaultTraceProvider, OtelBridgeProcessor, Capture],
) -> None:
    provider, bridge, capture = wired

    def one() -> dict[str, Any]:
        with (
            provider.create_trace("patterns") as trace,
            provider.create_span(
                CustomSpanData(name="ticket", data={"note": "case ZQ-48151623 opened"}),
                parent=trace,
            ),
        ):
            pass
        bridge.force_flush()
        return _attributes([span for span in capture.spans() if span.name == "ticket"][-1])

    assert one()["agents.custom.note"] == ("string_value", "case ZQ-48151623 opened")
    set_extra_patterns([r"ZQ-\d{8}"])
    try:
        redacted = one()
    finally:
        set_extra_patterns([])
    assert redacted["agents.custom.note"] == ("string_value", "case [REDACTED] opened")
    assert "ZQ-48151623" not in redacted["agents.custom.data"][1]
