"""Real OpenTelemetry SDK spans and OTLP bodies built from them, for the receiver tests."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode, Tracer

SERVICE = "test-worker"


def record(
    build: Callable[[Tracer], object],
    service: str = SERVICE,
    scope_attributes: dict[str, Any] | None = None,
) -> list[ReadableSpan]:
    """Run build with a real SDK tracer and return the spans it finished."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    build(provider.get_tracer("loomview.tests", "1.0", attributes=scope_attributes))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def request_of(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    return encode_spans(spans)


def protobuf_body(spans: Sequence[ReadableSpan]) -> bytes:
    return bytes(encode_spans(spans).SerializeToString())


def json_document(request: ExportTraceServiceRequest, snake_case: bool = False) -> dict[str, Any]:
    """OTLP/JSON as the spec writes it: hex ids, integer enums, int64 as strings."""
    document = json_format.MessageToDict(
        request, use_integers_for_enums=True, preserving_proto_field_name=snake_case
    )
    id_keys = ("trace_id", "span_id", "parent_span_id") if snake_case else (
        "traceId", "spanId", "parentSpanId"
    )  # fmt: skip
    resource_key, scope_key = (
        ("resource_spans", "scope_spans") if snake_case else ("resourceSpans", "scopeSpans")
    )

    def to_hex(obj: dict[str, Any]) -> None:
        for key in id_keys:
            if key in obj:
                obj[key] = base64.b64decode(obj[key]).hex()

    for resource_spans in document.get(resource_key, []):
        for scope_spans in resource_spans.get(scope_key, []):
            for span in scope_spans.get("spans", []):
                to_hex(span)
                for link in span.get("links", []):
                    to_hex(link)
    return document


def json_body(spans: Sequence[ReadableSpan], snake_case: bool = False) -> bytes:
    return json.dumps(json_document(encode_spans(spans), snake_case)).encode()


def agent_run(
    tracer: Tracer,
    workflow_id: str = "wf-1",
    run_id: str = "run-1",
    *,
    failed_attempts: int = 0,
    activity_id: str = "1",
    tokens: tuple[int, int] = (100, 20),
) -> None:
    """A Temporal workflow with one model call (with retries) and one tool call.

    Shaped like the bundled worker plus stock instrumentation: Temporal's
    RunWorkflow/RunActivity spans carry the ids; the OpenInference-style LLM
    span inside each attempt carries none.
    """
    ids = {"temporalWorkflowID": workflow_id, "temporalRunID": run_id}
    agent = {**ids, "agents.span.type": "agent", "gen_ai.agent.name": "Triage"}
    with (
        tracer.start_as_current_span("RunWorkflow:SupportWorkflow", attributes=ids),
        tracer.start_as_current_span("Triage", attributes=agent),
    ):
        for attempt in range(1, failed_attempts + 2):
            failed = attempt <= failed_attempts
            activity_attrs: dict[str, Any] = {
                **ids,
                "temporalActivityID": activity_id,
                "temporal.activity.attempt": attempt,
            }
            llm_attrs: dict[str, Any] = {
                "openinference.span.kind": "LLM",
                "llm.model_name": "demo-model",
                "llm.token_count.prompt": tokens[0],
                "llm.token_count.completion": tokens[1],
                "input.value": '[{"role": "user", "content": "hi"}]',
                "output.value": "" if failed else "hello",
            }
            with tracer.start_as_current_span(
                "RunActivity:invoke_model_activity", attributes=activity_attrs
            ) as activity:
                with tracer.start_as_current_span("ChatCompletion", attributes=llm_attrs) as llm:
                    if failed:
                        llm.set_status(Status(StatusCode.ERROR, f"boom {attempt}"))
                if failed:
                    activity.set_status(Status(StatusCode.ERROR, f"attempt {attempt} failed"))
        tool_attrs = {
            "agents.span.type": "function",
            "gen_ai.tool.name": "get_weather",
            "gen_ai.tool.call.arguments": '{"city": "Paris"}',
        }
        with tracer.start_as_current_span("get_weather", attributes=tool_attrs):
            pass


def native_run(tracer: Tracer, tokens: tuple[int, int] = (120, 31)) -> None:
    """What OpenAIAgentsPlugin(use_otel_instrumentation=True) exports for one agent turn
    whose model call failed once: OpenInference spans and the plugin's temporal:* spans,
    none of them naming a workflow, a run or an activity."""
    from opentelemetry import trace

    def start(name: str, kind: str, parent: Any, at: int, **attrs: Any) -> Any:
        return tracer.start_span(
            name,
            context=trace.set_span_in_context(parent) if parent is not None else None,
            start_time=at,
            attributes={"openinference.span.kind": kind, **attrs},
        )

    t0 = 1_700_000_000_000_000_000
    s = 1_000_000_000
    root = start("Agent workflow", "AGENT", None, t0)
    agent = start("Triage agent", "AGENT", root, t0, **{"graph.node.id": "Triage agent"})
    turn = start("turn", "CHAIN", agent, t0)
    begin = start("temporal:startActivity", "CHAIN", turn, t0 + s)
    for attempt in (1, 2):
        at = t0 + (2 * attempt) * s
        frame = start("temporal:executeActivity", "CHAIN", begin, at)
        response = start("response", "LLM", frame, at + 1)
        if attempt == 2:
            response.set_attributes(
                {"llm.token_count.prompt": tokens[0], "llm.token_count.completion": tokens[1]}
            )
        response.end(at + s // 2)
        frame.end(at + s // 2 + 1)
    begin.end(t0 + 5 * s)
    handoff = start("handoff to Billing", "TOOL", turn, t0 + 6 * s)
    handoff.set_attributes({"input.value": "Triage agent", "output.value": "Billing"})
    handoff.end(t0 + 6 * s + 1)
    turn.end(t0 + 7 * s)
    agent.end(t0 + 8 * s)
    root.end(t0 + 9 * s)
