"""LeanTracer makes the spans the OTel SDK's tracer makes, field for field."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode

from telemetry.temporal_spans import LeanSpan, LeanTracer


class CountingIds(IdGenerator):
    def __init__(self) -> None:
        self.next = 0

    def generate_span_id(self) -> int:
        self.next += 1
        return self.next

    def generate_trace_id(self) -> int:
        self.next += 1
        return 1000 + self.next


def provider(
    sampler: sampling.Sampler | None = None,
) -> tuple[TracerProvider, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    made = TracerProvider(id_generator=CountingIds(), sampler=sampler)
    made.add_span_processor(SimpleSpanProcessor(memory))
    return made, memory


def story(tracer: Any) -> None:
    """Spans as Temporal's interceptor makes them: nested, with kinds, a status, an error."""
    with tracer.start_as_current_span(
        "RunWorkflow:triage",
        kind=SpanKind.SERVER,
        attributes={"temporalWorkflowID": "wf-1", "temporalRunID": "run-1"},
        start_time=10,
    ) as run:
        child = tracer.start_span(
            "StartActivity:lookup",
            kind=SpanKind.CLIENT,
            attributes={"temporalWorkflowID": "wf-1", "n": 3, "tags": ["a", "b"]},
            start_time=11,
        )
        child.set_attribute("extra", True)
        child.add_event("retry", {"attempt": 2}, timestamp=12)
        child.set_status(Status(StatusCode.ERROR, "ValueError: boom"))
        child.set_status(Status(StatusCode.UNSET))
        child.end(end_time=13)
        child.set_attribute("late", 1)
        child.end(end_time=99)
        run.update_name("RunWorkflow:triage")
        with (
            pytest.raises(ValueError),
            tracer.start_as_current_span("RunActivity:fail", start_time=14),
        ):
            raise ValueError("no such customer")
        ok = tracer.start_span("HandleQuery:status", start_time=15)
        ok.set_status(StatusCode.OK)
        ok.set_status(StatusCode.ERROR, "ignored once OK")
        ok.end(end_time=16)


def fields(span: ReadableSpan) -> dict[str, Any]:
    return {
        "name": span.name,
        "context": span.context,
        "parent": span.parent,
        "kind": span.kind,
        "attributes": dict(span.attributes or {}),
        "status": (span.status.status_code, span.status.description),
        "events": [
            (e.name, {k: v for k, v in (e.attributes or {}).items() if k != "exception.stacktrace"})
            for e in span.events
        ],
        "stacktrace": [bool((e.attributes or {}).get("exception.stacktrace")) for e in span.events],
        "start": span.start_time,
        "end": span.end_time if (span.end_time or 0) < 1000 else "now",
        "resource": span.resource,
        "scope": span.instrumentation_scope,
        "dropped": (span.dropped_attributes, span.dropped_events, span.dropped_links),
    }


def test_lean_spans_are_the_sdk_spans() -> None:
    sdk_provider, sdk_memory = provider()
    lean_provider, lean_memory = provider()
    story(sdk_provider.get_tracer("temporal"))
    lean = LeanTracer(lean_provider.get_tracer("temporal"))  # type: ignore[arg-type]
    story(lean)
    sdk_spans = sdk_memory.get_finished_spans()
    lean_spans = lean_memory.get_finished_spans()
    assert [type(s) for s in lean_spans] == [LeanSpan] * 4
    assert [fields(s) for s in lean_spans] == [fields(s) for s in sdk_spans]
    assert dict(lean_spans[0].attributes or {})["tags"] == ("a", "b")  # validated as the SDK


def test_children_of_an_unsampled_parent_are_not_recorded_and_other_samplers_use_the_sdk() -> None:
    made, memory = provider()
    lean = LeanTracer(made.get_tracer("temporal"))  # type: ignore[arg-type]
    unsampled = trace_api.SpanContext(7, 8, is_remote=True, trace_flags=trace_api.TraceFlags(0))
    parent = trace_api.set_span_in_context(trace_api.NonRecordingSpan(unsampled))
    span = lean.start_span("RunActivity:x", context=parent)
    assert not span.is_recording()
    assert span.get_span_context().trace_id == 7
    span.end()
    assert memory.get_finished_spans() == ()

    off_provider, _ = provider(sampler=sampling.ALWAYS_OFF)
    off = LeanTracer(off_provider.get_tracer("temporal"))  # type: ignore[arg-type]
    dropped = off.start_span("RunWorkflow:x", context=context_api.Context())
    assert not isinstance(dropped, LeanSpan) and not dropped.is_recording()


def test_current_span_context_is_get_current_spans() -> None:
    from opentelemetry.trace.propagation import _SPAN_KEY

    from telemetry.temporal_spans import current_span_context

    made, _ = provider()
    tracer = made.get_tracer("t")
    assert current_span_context() == trace_api.INVALID_SPAN_CONTEXT
    with tracer.start_as_current_span("outer") as outer:
        assert current_span_context() == outer.get_span_context()
        assert current_span_context() == trace_api.get_current_span().get_span_context()
        # An explicit context wins over the current one, as with get_current_span.
        other = trace_api.NonRecordingSpan(
            trace_api.SpanContext(7, 8, is_remote=True, trace_flags=trace_api.TraceFlags(1))
        )
        given = trace_api.set_span_in_context(other)
        assert current_span_context(given) == other.get_span_context()
    # Something that is not a span under the span key: no span, as get_current_span says.
    token = context_api.attach(context_api.set_value(_SPAN_KEY, "not a span"))
    try:
        assert current_span_context() == trace_api.INVALID_SPAN_CONTEXT
        assert trace_api.get_current_span().get_span_context() == trace_api.INVALID_SPAN_CONTEXT
    finally:
        context_api.detach(token)
