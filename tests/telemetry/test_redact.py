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


def test_secret_changes_finds_what_redacting_each_value_finds() -> None:
    """Only the changed attributes, and every one of them, among many clean ones."""
    from telemetry import redact

    secrets = [
        OPENAI_KEY,
        "Bearer " + "t0k3n" * 4,
        "Basic dXNlcjpwYXNzd29yZA==",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_" + "a1" * 18,
        "xoxb-1234567890-abcdef",
        "AIza" + "b" * 35,
        "eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.c2lnbmF0dXJlMTIz",
    ]
    clean: dict[str, object] = {
        f"attr.{i}": f"task-{i} ordinary text about Basic plans" for i in range(20)
    }
    clean["count"] = 3
    assert redact.secret_changes(clean) == {}
    for secret in secrets:
        for position in (0, 10, 19):
            attributes = dict(clean)
            attributes[f"attr.{position}"] = f"value with {secret} inside"
            expected = {
                key: redact_text(value)
                for key, value in attributes.items()
                if isinstance(value, str) and redact_text(value) != value
            }
            assert redact.secret_changes(attributes) == expected != {}
    redact.set_extra_patterns([r"ACME-\d{6}"])
    try:
        assert redact.secret_changes({"a": "ok", "b": "id ACME-123456"}) == {"b": f"id {REDACTED}"}
    finally:
        redact.set_extra_patterns([])
