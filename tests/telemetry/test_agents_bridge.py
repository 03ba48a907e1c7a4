import json
from typing import Any

import pytest
from agents.tracing.span_data import (
    AgentSpanData,
    CustomSpanData,
    FunctionSpanData,
    GenerationSpanData,
    GuardrailSpanData,
    HandoffSpanData,
    MCPListToolsSpanData,
)

from telemetry.agents_bridge import span_id_for, span_name_and_attributes, trace_id_for


def test_ids_are_stable_and_distinct() -> None:
    assert span_id_for("span_abc") == span_id_for("span_abc")
    assert span_id_for("span_abc") != span_id_for("span_abd")
    assert trace_id_for("trace_x").bit_length() > 64
    assert 0 < span_id_for("span_abc") < 2**64


def test_agent_span_attributes() -> None:
    name, attrs = span_name_and_attributes(
        AgentSpanData(name="Triage agent", handoffs=["Billing"], tools=["lookup"])
    )
    assert name == "invoke_agent Triage agent"
    assert attrs["gen_ai.operation.name"] == "invoke_agent"
    assert attrs["gen_ai.agent.name"] == "Triage agent"
    assert attrs["openinference.span.kind"] == "AGENT"
    assert attrs["agents.agent.handoffs"] == ["Billing"]


def test_generation_span_has_genai_and_openinference_attributes() -> None:
    data = GenerationSpanData(
        input=[{"role": "user", "content": "hi"}],
        output=[
            {"type": "function_call", "name": "lookup", "call_id": "c1", "arguments": '{"id": 1}'}
        ],
        model="gpt-4o-mini",
        usage={"input_tokens": 12, "output_tokens": 5},
    )
    name, attrs = span_name_and_attributes(data)
    assert name == "chat gpt-4o-mini"
    assert attrs["gen_ai.request.model"] == attrs["llm.model_name"] == "gpt-4o-mini"
    assert attrs["gen_ai.usage.input_tokens"] == attrs["llm.token_count.prompt"] == 12
    assert attrs["gen_ai.usage.output_tokens"] == attrs["llm.token_count.completion"] == 5
    assert attrs["llm.token_count.total"] == 17
    assert json.loads(attrs["gen_ai.input.messages"]) == [{"role": "user", "content": "hi"}]
    output = json.loads(attrs["gen_ai.output.messages"])
    assert output[0]["tool_calls"][0]["name"] == "lookup"
    assert attrs["llm.input_messages.0.message.role"] == "user"
    assert attrs["llm.output_messages.0.message.tool_calls.0.tool_call.function.name"] == "lookup"
    assert attrs["openinference.span.kind"] == "LLM"


def test_function_handoff_guardrail_custom_and_mcp_spans() -> None:
    name, attrs = span_name_and_attributes(
        FunctionSpanData(name="lookup_invoice", input='{"invoice_id": "A1"}', output="ok")
    )
    assert name == "execute_tool lookup_invoice"
    assert attrs["gen_ai.tool.name"] == attrs["tool.name"] == "lookup_invoice"
    assert attrs["gen_ai.tool.call.arguments"] == '{"invoice_id": "A1"}'
    assert attrs["gen_ai.tool.call.result"] == "ok"
    assert attrs["openinference.span.kind"] == "TOOL"

    name, attrs = span_name_and_attributes(HandoffSpanData(from_agent="Triage", to_agent="Billing"))
    assert name == "handoff Triage → Billing"
    assert (attrs["agents.handoff.from"], attrs["agents.handoff.to"]) == ("Triage", "Billing")

    name, attrs = span_name_and_attributes(GuardrailSpanData(name="no_pii", triggered=True))
    assert attrs["agents.guardrail.triggered"] is True
    assert attrs["openinference.span.kind"] == "GUARDRAIL"

    name, attrs = span_name_and_attributes(CustomSpanData(name="fan out", data={"n": 3, "x": [1]}))
    assert name == "fan out" and attrs["agents.custom.n"] == 3
    assert json.loads(attrs["agents.custom.data"]) == {"n": 3, "x": [1]}

    name, attrs = span_name_and_attributes(MCPListToolsSpanData(server="fs", result=["read"]))
    assert attrs["agents.span.type"] == "mcp_tools" and attrs["agents.mcp.tools"] == ["read"]


def test_huge_payloads_are_clipped() -> None:
    _, attrs = span_name_and_attributes(
        FunctionSpanData(name="t", input="x" * 100_000, output=None)
    )
    assert len(attrs["gen_ai.tool.call.arguments"]) < 40_000
    assert attrs["gen_ai.tool.call.arguments"].endswith("[truncated]")


def test_processor_nests_spans_under_their_trace_and_keeps_error_causes() -> None:
    from agents.tracing import SpanError
    from agents.tracing.provider import DefaultTraceProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from telemetry.agents_bridge import OtelBridgeProcessor

    memory = InMemorySpanExporter()
    provider = DefaultTraceProvider()
    provider.set_processors([OtelBridgeProcessor(SimpleSpanProcessor(memory), Resource.create())])
    with (
        provider.create_trace("Support run") as run_trace,
        provider.create_span(AgentSpanData(name="Triage"), parent=run_trace) as agent,
    ):
        with provider.create_span(
            FunctionSpanData(name="lookup", input="{}", output="ok"), parent=agent
        ):
            pass
        with provider.create_span(
            MCPListToolsSpanData(server="docs", result=["search"]), parent=agent
        ):
            pass
        agent.set_error(SpanError(message="Error in agent run", data={"error": "model down"}))
    spans = {s.name: s for s in memory.get_finished_spans()}
    root, agent_span, tool = (
        spans["Support run"],
        spans["invoke_agent Triage"],
        spans["execute_tool lookup"],
    )
    assert root.parent is None and root.attributes is not None
    assert root.attributes["agents.span.type"] == "trace"
    assert agent_span.parent is not None and agent_span.parent.span_id == root.context.span_id
    assert tool.parent is not None and tool.parent.span_id == agent_span.context.span_id
    listing = spans["mcp list_tools docs"]
    assert listing.parent is not None and listing.parent.span_id == agent_span.context.span_id
    assert {s.context.trace_id for s in spans.values()} == {root.context.trace_id}
    assert agent_span.status.description == "Error in agent run: model down"
    assert tool.start_time is not None and root.start_time is not None
    assert root.start_time <= tool.start_time


def test_span_ids_are_scoped_to_a_run() -> None:
    """A reset run replays its original's Agents ids; its spans must not reuse the OTel ids."""
    assert span_id_for("span_abc", "run-1") == span_id_for("span_abc", "run-1")
    assert span_id_for("span_abc", "run-1") != span_id_for("span_abc", "run-2")
    assert span_id_for("span_abc", "run-1") != span_id_for("span_abc")
    assert trace_id_for("trace_x", "run-1") != trace_id_for("trace_x", "run-2")


def _bridge_scenario(provider: Any) -> None:
    """Agents spans with what redaction and encoding must get right: secrets in
    names, values, long texts shared by two attributes and secret-named keys; None
    values; non-text values; an error."""
    from agents.tracing import SpanError

    key = "sk-proj-" + "A1b2C3d4" * 4
    long_text = "the caller said: Bearer " + "t0k3n" * 10 + " and more " * 40
    with (
        provider.create_trace("Support run", group_id="g-1", metadata={"api_key": key}) as trace,
        provider.create_span(AgentSpanData(name="Triage", tools=["lookup"]), parent=trace) as agent,
    ):
        with provider.create_span(
            GenerationSpanData(
                input=[{"role": "user", "content": long_text}],
                output=[{"role": "assistant", "content": f"use {key}"}],
                model="demo",
                usage={"input_tokens": 3, "output_tokens": 4},
            ),
            parent=agent,
        ):
            pass
        with provider.create_span(
            FunctionSpanData(name=f"lookup {key}", input='{"id": 1}', output=None),
            parent=agent,
        ):
            pass
        with provider.create_span(
            CustomSpanData(
                name="fan out",
                data={"n": 3, "ratio": 0.5, "on": True, "none": None, "password": "hunter2",
                      "token": 7, "nested": {"authorization": "x"}, "note": key},
            ),
            parent=agent,
        ):  # fmt: skip
            pass
        with provider.create_span(GuardrailSpanData(name="no_pii", triggered=True), parent=agent):
            pass
        agent.set_error(SpanError(message=f"failed with {key}", data={"error": "model down"}))


@pytest.mark.parametrize("in_activity", [False, True], ids=["no-run", "in-activity"])
def test_spans_written_straight_to_the_queue_are_the_bytes_of_the_span_path(
    in_activity: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only Loomview's batch processors the bridge writes OTLP bytes itself; they
    must be the bytes the ReadableSpan path (any other processor) encodes to."""
    import dataclasses

    from agents.tracing.provider import DefaultTraceProvider
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor
    from temporalio.testing import ActivityEnvironment

    from telemetry import agents_bridge, wire
    from telemetry.agents_bridge import OtelBridgeProcessor
    from telemetry.otel import FanOutSpanProcessor
    from telemetry.otlp_http import WireBatchSpanProcessor, WireSpanExporter

    monkeypatch.setattr(agents_bridge, "_now_ns", lambda: 1_700_000_000_000_000_000)

    class Capture(WireSpanExporter):
        bodies: list[bytes] = []

        def send(self, body: bytes, count: int) -> Any:
            self.bodies.append(body)

    class Records(SpanProcessor):
        def __init__(self) -> None:
            self.records: list[wire.Record] = []

        def on_end(self, span: Any) -> None:
            self.records.append(wire.span_record(span))

    resource = Resource.create({"service.name": "bridge-test"})
    batch = WireBatchSpanProcessor(Capture("http://127.0.0.1:9/v1/traces"), 60_000)
    straight = OtelBridgeProcessor(FanOutSpanProcessor([batch]), resource)
    records = Records()
    via_spans = OtelBridgeProcessor(records, resource)
    assert straight._queues == [batch] and via_spans._queues is None
    provider = DefaultTraceProvider()
    provider.set_processors([straight, via_spans])
    if in_activity:
        environment = ActivityEnvironment()
        environment.info = dataclasses.replace(
            environment.info, workflow_id="order sk-proj-" + "Z9y8X7w6" * 4, attempt=3
        )
        environment.run(_bridge_scenario, provider)
    else:
        _bridge_scenario(provider)
    batch.force_flush()
    batch.shutdown()

    assert len(Capture.bodies) == 1
    assert Capture.bodies[0] == wire.encode_records(records.records)
    request = ExportTraceServiceRequest.FromString(Capture.bodies[0])
    spans = request.resource_spans[0].scope_spans[0].spans
    assert len(spans) == 6
    assert b"sk-proj-" not in Capture.bodies[0] and b"hunter2" not in Capture.bodies[0]
    assert b"Bearer t0k3n" not in Capture.bodies[0]
    names = {span.name for span in spans}
    assert "execute_tool lookup [REDACTED]" in names
    custom = next(span for span in spans if span.name == "fan out")
    keys = {kv.key for kv in custom.attributes}
    assert "agents.custom.none" not in keys and "agents.custom.n" in keys
    if in_activity:
        for span in spans:
            values = {kv.key: kv.value for kv in span.attributes}
            assert values["temporal.workflow.id"].string_value == "order [REDACTED]"
            assert values["temporal.activity.attempt"].int_value == 3
