from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

from telemetry.otel import redact_span
from telemetry.redact import REDACTED, redact_attributes, redact_text

OPENAI_KEY = "sk-proj-" + "A1b2C3d4" * 6


def test_values_that_look_like_keys_are_redacted_inside_text() -> None:
    text = f"calling with {OPENAI_KEY} and header Authorization: Bearer abc.def-ghi_jkl123"
    redacted = redact_text(text)
    assert OPENAI_KEY not in redacted and "abc.def-ghi_jkl123" not in redacted
    assert redacted.count(REDACTED) == 2
    assert redact_text("AKIAIOSFODNN7EXAMPLE in config") == f"{REDACTED} in config"


def test_secret_attribute_names_are_redacted_whatever_the_value() -> None:
    attributes = redact_attributes(
        {
            "http.request.header.authorization": "Basic dXNlcjpwYXNz",
            "llm.invocation_parameters": '{"api_key": "x"}',
            "openai.api_key": "whatever",
            "gen_ai.usage.input_tokens": 42,
            "llm.token_count.total": 50,
            "input.value": f"my key is {OPENAI_KEY}",
            "nested": ["fine", f"Bearer {'t' * 20}"],
        }
    )
    assert attributes["http.request.header.authorization"] == REDACTED
    assert attributes["openai.api_key"] == REDACTED
    assert attributes["gen_ai.usage.input_tokens"] == 42
    assert attributes["llm.token_count.total"] == 50
    assert attributes["input.value"] == f"my key is {REDACTED}"
    assert attributes["nested"] == ["fine", REDACTED]


def test_redact_span_covers_attributes_and_status() -> None:
    span = ReadableSpan(
        name="chat",
        context=SpanContext(1, 2, is_remote=False),
        attributes={"output.value": f"here: {OPENAI_KEY}"},
        status=Status(StatusCode.ERROR, f"401 for key {OPENAI_KEY}"),
    )
    clean = redact_span(span)
    assert OPENAI_KEY not in str(clean.attributes) and OPENAI_KEY not in str(
        clean.status.description
    )
    assert clean.context == span.context


def test_temporal_tooling_queries_are_not_exported() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from telemetry.otel import RedactingSpanProcessor

    memory = InMemorySpanExporter()
    processor = RedactingSpanProcessor(SimpleSpanProcessor(memory))
    for name in ("HandleQuery:__stack_trace", "HandleQuery:status", "RunWorkflow:triage"):
        context = SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(1))
        processor.on_end(ReadableSpan(name=name, context=context))
    assert [s.name for s in memory.get_finished_spans()] == [
        "HandleQuery:status",
        "RunWorkflow:triage",
    ]


def test_span_names_event_names_and_link_attributes_are_redacted() -> None:
    from opentelemetry.sdk.trace import Event
    from opentelemetry.trace import Link

    context = SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(1))
    span = ReadableSpan(
        name=f"response {OPENAI_KEY}",
        context=context,
        events=(Event(f"retry with {OPENAI_KEY}", {}),),
        links=(Link(context, {"api_key": "x", "note": f"k={OPENAI_KEY}"}),),
    )
    redacted = redact_span(span)
    assert redacted.name == f"response {REDACTED}"
    assert redacted.events[0].name == f"retry with {REDACTED}"
    assert dict(redacted.links[0].attributes or {}) == {
        "api_key": REDACTED,
        "note": f"k={REDACTED}",
    }


def test_configured_patterns_are_parsed_checked_and_applied() -> None:
    import pytest

    from telemetry import redact

    assert redact.parse_patterns("") == []
    assert redact.parse_patterns('["ACME-\\\\d{6}"]') == ["ACME-\\d{6}"]
    for bad in ("not json", '"one"', "[1]", '["("]', '[""]'):
        with pytest.raises(ValueError, match="LOOMVIEW_REDACT_PATTERNS"):
            redact.parse_patterns(bad)
    redact.set_extra_patterns(["ACME-\\d{6}", "internal-[a-z]+"])
    try:
        assert redact_text("ACME-123456 at internal-host") == f"{REDACTED} at {REDACTED}"
    finally:
        redact.set_extra_patterns([])
    assert redact_text("ACME-123456") == "ACME-123456"
