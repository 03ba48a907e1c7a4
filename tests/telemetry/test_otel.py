"""The worker's OpenTelemetry setup: processors, the env variables it honours, the wiring."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode
from temporalio.contrib.opentelemetry import OpenTelemetryPlugin

from telemetry import otel, vocab
from tests.tracing.collector import running_collector

SECRET = "sk-proj-" + "Ab1" * 12


class Flusher(SpanProcessor):
    """Records the timeout it was given; takes ``takes`` seconds; answers ``answer``."""

    def __init__(self, answer: bool = True, takes: float = 0.0, raises: bool = False) -> None:
        self.answer, self.takes, self.raises = answer, takes, raises
        self.timeouts: list[int] = []
        self.ended: list[str] = []

    def on_end(self, span: ReadableSpan) -> None:
        if self.raises:
            raise RuntimeError("exporter broke")
        self.ended.append(span.name)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.timeouts.append(timeout_millis)
        time.sleep(self.takes)
        if self.raises:
            raise RuntimeError("exporter broke")
        return self.answer


def tracer_with(*processors: SpanProcessor) -> TracerProvider:
    provider = TracerProvider()
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


# -- FanOutSpanProcessor ------------------------------------------------------


def test_force_flush_calls_every_processor_even_after_one_fails() -> None:
    first, second, third = Flusher(answer=False), Flusher(raises=True), Flusher()
    fan_out = otel.FanOutSpanProcessor([first, second, third])
    assert fan_out.force_flush(1000) is False
    assert [len(p.timeouts) for p in (first, second, third)] == [1, 1, 1]
    assert otel.FanOutSpanProcessor([Flusher(), Flusher()]).force_flush(1000) is True


def test_force_flush_shares_one_deadline() -> None:
    slow, after = Flusher(takes=0.3), Flusher()
    fan_out = otel.FanOutSpanProcessor([slow, after])
    assert fan_out.force_flush(1000) is True
    assert 900 <= slow.timeouts[0] <= 1000
    # The second one gets what the first left, not the full second again.
    assert 0 < after.timeouts[0] <= 700


def test_force_flush_past_the_deadline_still_tries_each_and_reports_failure() -> None:
    slow, late = Flusher(takes=0.2), Flusher()
    fan_out = otel.FanOutSpanProcessor([slow, late])
    assert fan_out.force_flush(50) is False
    assert late.timeouts == [0]


def test_one_broken_processor_does_not_cost_the_others_their_spans(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken, healthy = Flusher(raises=True), Flusher()
    provider = tracer_with(otel.FanOutSpanProcessor([broken, healthy]))
    with caplog.at_level(logging.ERROR, logger=otel.__name__):
        provider.get_tracer("t").start_span("lookup").end()
    assert healthy.ended == ["lookup"]
    assert "span processor Flusher failed" in caplog.text


# -- Correlating and redacting ---------------------------------------------------


def test_temporal_attributes_are_copied_to_ours_and_the_workflow_type_read_from_the_name() -> None:
    memory = InMemorySpanExporter()
    provider = tracer_with(otel.CorrelatingSpanProcessor(), SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    tracer.start_span(
        "RunWorkflow:triage",
        attributes={"temporalWorkflowID": "wf-1", "temporalRunID": "run-1"},
    ).end()
    tracer.start_span(
        "StartWorkflow:approval", attributes={vocab.WORKFLOW_TYPE: "kept", vocab.RUN_ID: "mine"}
    ).end()
    tracer.start_span("RunActivity:lookup", attributes={"temporalActivityID": "3"}).end()
    run, start, activity = (dict(s.attributes or {}) for s in memory.get_finished_spans())
    assert run[vocab.WORKFLOW_ID] == "wf-1" and run[vocab.RUN_ID] == "run-1"
    assert run[vocab.WORKFLOW_TYPE] == "triage"
    assert start[vocab.WORKFLOW_TYPE] == "kept" and start[vocab.RUN_ID] == "mine"
    assert activity[vocab.ACTIVITY_ID] == "3" and vocab.WORKFLOW_TYPE not in activity


def test_redaction_covers_attributes_events_and_status_and_drops_tooling_queries() -> None:
    memory = InMemorySpanExporter()
    provider = tracer_with(otel.RedactingSpanProcessor(SimpleSpanProcessor(memory)))
    tracer = provider.get_tracer("t")
    span = tracer.start_span("chat", attributes={vocab.GEN_AI_INPUT_MESSAGES: f"key {SECRET}"})
    span.add_event("retry", {"error": f"401 for {SECRET}"})
    span.set_status(Status(StatusCode.ERROR, f"bad key {SECRET}"))
    span.end()
    tracer.start_span(f"{vocab.TOOLING_QUERY_PREFIX}stack_trace").end()
    tracer.start_span("HandleQuery:status").end()
    spans = memory.get_finished_spans()
    assert [s.name for s in spans] == ["chat", "HandleQuery:status"]
    chat = spans[0]
    dumped = str(chat.attributes) + str([e.attributes for e in chat.events]) + str(chat.status)
    assert SECRET not in dumped
    assert "[REDACTED]" in str(chat.attributes) and "[REDACTED]" in str(chat.status.description)
    assert chat.status.status_code is StatusCode.ERROR
    assert chat.events[0].name == "retry"


def test_worker_processor_correlates_and_redacts_once_at_the_end() -> None:
    """The worker's one processor: what the two above do, on a copy made at the end."""
    memory = InMemorySpanExporter()
    provider = tracer_with(otel.WorkerSpanProcessor(SimpleSpanProcessor(memory)))
    tracer = provider.get_tracer("t")
    span = tracer.start_span(
        "RunWorkflow:triage",
        attributes={"temporalWorkflowID": "wf-1", "temporalRunID": "run-1"},
    )
    span.set_attribute("input.value", f"key {SECRET}")  # set while the span lives
    span.add_event("retry", {"error": f"401 for {SECRET}"})
    span.set_status(Status(StatusCode.ERROR, f"bad key {SECRET}"))
    span.end()
    tracer.start_span("RunActivity:lookup", attributes={"temporalActivityID": "3"}).end()
    tracer.start_span(f"{vocab.TOOLING_QUERY_PREFIX}stack_trace").end()
    run, activity = memory.get_finished_spans()
    attributes = dict(run.attributes or {})
    assert attributes[vocab.WORKFLOW_ID] == "wf-1" and attributes[vocab.RUN_ID] == "run-1"
    assert attributes[vocab.WORKFLOW_TYPE] == "triage"
    assert attributes["temporalWorkflowID"] == "wf-1"  # Temporal's own spelling kept
    assert attributes["input.value"] == "key [REDACTED]"
    dumped = str(attributes) + str([e.attributes for e in run.events]) + str(run.status)
    assert SECRET not in dumped and run.status.status_code is StatusCode.ERROR
    assert dict(activity.attributes or {})[vocab.ACTIVITY_ID] == "3"
    assert vocab.WORKFLOW_TYPE not in dict(activity.attributes or {})


# -- Environment variables -------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [("", 200), ("750", 750), (" 50 ", 50)])
def test_schedule_delay_reads_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: int
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", raw)
    assert otel.schedule_delay_from_env() == expected


@pytest.mark.parametrize("raw", ["soon", "1.5", "0", "-10"])
def test_a_bad_schedule_delay_warns_and_falls_back_to_the_default(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, raw: str
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", raw)
    with caplog.at_level(logging.WARNING, logger=otel.__name__):
        assert otel.schedule_delay_from_env() == otel.DEFAULT_SCHEDULE_DELAY_MS
    assert "OTEL_BSP_SCHEDULE_DELAY" in caplog.text and repr(raw) in caplog.text


@pytest.fixture
def no_otlp_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_extra_exporter_follows_the_standard_variables(no_otlp_env: pytest.MonkeyPatch) -> None:
    assert otel.extra_exporter_from_env() is None
    no_otlp_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    assert isinstance(otel.extra_exporter_from_env(), OTLPSpanExporter)
    no_otlp_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    exporter = otel.extra_exporter_from_env()
    assert isinstance(exporter, GrpcSpanExporter)
    exporter.shutdown()
    no_otlp_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "carrier-pigeon")
    with pytest.raises(ValueError, match="carrier-pigeon"):
        otel.extra_exporter_from_env()


def test_dashboard_exporter_sends_the_token_as_a_bearer_header() -> None:
    provider = TracerProvider()
    with running_collector() as collector:
        for token in ("lv_token", None):
            exporter = otel.dashboard_exporter(collector.url, token)
            span = provider.get_tracer("t").start_span(f"sent with {token}")
            span.end()
            assert isinstance(span, ReadableSpan)
            assert exporter.export([span]).name == "SUCCESS"
            exporter.shutdown()
    assert [s.name for s in collector.spans] == ["sent with lv_token", "sent with None"]
    sent = [{k.lower(): v for k, v in headers.items()} for headers in collector.headers]
    assert sent[0]["authorization"] == "Bearer lv_token"
    assert "authorization" not in sent[1]


# -- configure_tracing ----------------------------------------------------------------


def test_configure_tracing_wires_correlation_redaction_and_the_agents_bridge(
    no_otlp_env: pytest.MonkeyPatch,
) -> None:
    from agents import set_trace_processors
    from agents.tracing import custom_span, trace

    memory = InMemorySpanExporter()
    tracing = otel.configure_tracing(
        service_name="unit-worker",
        exporters=[memory],
        resource_attributes={"deployment.environment": "test"},
        schedule_delay_ms=10,
        set_global=False,
    )
    try:
        tracer = tracing.provider.get_tracer("t")
        tracer.start_span(
            "RunWorkflow:triage", attributes={"temporalWorkflowID": "wf-9", "note": SECRET}
        ).end()
        # An Agents SDK span reaches the same exporter through the bridge.
        with trace("Support run"), custom_span("lookup", {"api_key": SECRET}):
            pass
        tracing.shutdown()
    finally:
        set_trace_processors([])
    spans = {s.name: s for s in memory.get_finished_spans()}
    assert set(spans) >= {"RunWorkflow:triage", "Support run"}
    run = spans["RunWorkflow:triage"]
    assert run.attributes is not None
    assert run.attributes[vocab.WORKFLOW_ID] == "wf-9"
    assert run.attributes[vocab.WORKFLOW_TYPE] == "triage"
    assert run.resource.attributes[vocab.SERVICE_NAME] == "unit-worker"
    assert run.resource.attributes["deployment.environment"] == "test"
    assert SECRET not in str([dict(s.attributes or {}) for s in spans.values()])
    # Temporal's OTel plugin (its lean form, telemetry.temporal_interceptor), and the
    # one that keeps span ids distinct per run (resets).
    assert [type(p).__name__ for p in tracing.plugins] == [
        "LeanOpenTelemetryPlugin",
        "RunScopePlugin",
    ]
    assert isinstance(tracing.plugins[0], OpenTelemetryPlugin)


def test_temporal_spans_written_straight_to_the_queue_are_the_spans_of_the_span_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With only Loomview's batch processors the worker's processor writes Temporal's
    spans as OTLP bytes itself; each must be the span the ReadableSpan path sends."""
    import dataclasses

    from google.protobuf.json_format import MessageToDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        TraceFlags,
        TraceState,
        set_span_in_context,
    )
    from temporalio.testing import ActivityEnvironment

    from telemetry import wire
    from telemetry.otlp_http import WireBatchSpanProcessor, WireSpanExporter
    from telemetry.run_ids import run_scoped_tracer_provider

    class Capture(WireSpanExporter):
        bodies: list[bytes] = []

        def send(self, body: bytes, count: int) -> SpanExportResult:
            self.bodies.append(body)
            return SpanExportResult.SUCCESS

    class Records(SpanProcessor):
        def __init__(self) -> None:
            self.records: list[wire.Record] = []

        def on_end(self, span: ReadableSpan) -> None:
            self.records.append(wire.span_record(span))

    straight: list[str] = []
    original = otel.WorkerSpanProcessor._straight_to_queues

    def spy(self: otel.WorkerSpanProcessor, span: object, name: str, run: object) -> bool:
        taken = original(self, span, name, run)  # type: ignore[arg-type]
        if taken:
            straight.append(name)
        return taken

    monkeypatch.setattr(otel.WorkerSpanProcessor, "_straight_to_queues", spy)
    batch = WireBatchSpanProcessor(Capture("http://127.0.0.1:9/v1/traces"), 60_000)
    records = Records()
    provider = run_scoped_tracer_provider(Resource.create({"service.name": "w"}))
    provider.add_span_processor(otel.WorkerSpanProcessor(otel.FanOutSpanProcessor([batch])))
    provider.add_span_processor(otel.WorkerSpanProcessor(records))

    def activity_body() -> None:
        tracer = provider.get_tracer("temporalio.contrib.opentelemetry._otel_interceptor")
        ids = {"temporalWorkflowID": "order-1", "temporalRunID": "test-run"}
        parent = SpanContext(2**100 + 7, 99, True, TraceFlags(1), TraceState([("vendor", "x")]))
        span = tracer.start_span(
            "RunActivity:lookup",
            context=set_span_in_context(NonRecordingSpan(parent)),
            attributes={**ids, "temporalActivityID": "test", "note": f"key {SECRET}"},
        )
        span.set_status(Status(StatusCode.ERROR, f"ValueError: bad key {SECRET}"))
        span.end()
        tracer.start_span("StartActivity:lookup", attributes=ids).end()
        failed = tracer.start_span("RunActivity:broken", attributes=ids)
        failed.record_exception(ValueError(f"boom {SECRET}"))
        failed.end()
        tracer.start_span("mine", attributes={vocab.WORKFLOW_ID: "not the run's"}).end()

    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(environment.info, workflow_id="order-1")
    environment.run(activity_body)
    batch.force_flush()
    batch.shutdown()

    assert straight == ["RunActivity:lookup", "StartActivity:lookup"]

    def spans(body: bytes) -> list[dict[str, Any]]:
        request = ExportTraceServiceRequest.FromString(body)
        found = []
        for span in request.resource_spans[0].scope_spans[0].spans:
            fields = MessageToDict(span)
            fields["attributes"] = {kv.key: MessageToDict(kv.value) for kv in span.attributes}
            found.append(fields)
        return found

    sent, expected = spans(Capture.bodies[0]), spans(wire.encode_records(records.records))
    assert sent == expected
    assert SECRET not in str(sent)
    lookup = sent[0]
    assert lookup["traceState"] == "vendor=x" and lookup["status"]["code"] == "STATUS_CODE_ERROR"
    assert lookup["attributes"][vocab.WORKFLOW_ID] == {"stringValue": "order-1"}
    assert lookup["attributes"][vocab.ACTIVITY_ATTEMPT] == {"intValue": "1"}
    assert sent[3]["attributes"][vocab.WORKFLOW_ID] == {"stringValue": "not the run's"}
