import gzip
import json

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

from tests.tracing.spans import agent_run, json_document, protobuf_body, record, request_of
from tracing import otlp


def _rich_spans() -> list:
    def build(tracer):  # type: ignore[no-untyped-def]
        with tracer.start_as_current_span(
            "RunWorkflow:SupportWorkflow",
            attributes={
                "temporalWorkflowID": "wf-1",
                "temporalRunID": "run-1",
                "count": 3,
                "ratio": 0.5,
                "flag": True,
                "tags": ["a", "b"],
            },
        ) as span:
            span.add_event("started", {"step": 1})
            with tracer.start_as_current_span("child", links=[]) as child:
                child.set_attribute("openinference.span.kind", "LLM")

    return record(build)


def test_protobuf_spans_become_rows() -> None:
    spans = _rich_spans()
    result = otlp.decode(protobuf_body(spans), otlp.PROTOBUF)
    assert result.rejected == 0
    rows = {r["name"]: r for r in result.rows}
    root, child = rows["RunWorkflow:SupportWorkflow"], rows["child"]
    assert root["trace_id"] == format(spans[1].context.trace_id, "032x")
    assert root["span_id"] == format(spans[1].context.span_id, "016x")
    assert root["parent_span_id"] == ""
    assert child["parent_span_id"] == root["span_id"]
    assert root["attributes"]["count"] == 3
    assert root["attributes"]["ratio"] == 0.5
    assert root["attributes"]["flag"] is True
    assert root["attributes"]["tags"] == ["a", "b"]
    assert root["events"] == [
        {"name": "started", "time_ns": root["events"][0]["time_ns"], "attributes": {"step": 1}}
    ]
    assert root["resource"]["service.name"] == "test-worker"
    assert root["service_name"] == "test-worker"
    assert root["scope"] == "loomview.tests"
    assert root["end_ns"] >= root["start_ns"] > 0
    assert root["kind"] == "temporal"
    assert root["workflow_id"] == "wf-1" and root["run_id"] == "run-1"
    assert root["workflow_type"] == "SupportWorkflow"
    assert child["kind"] == "generation"
    assert child["workflow_id"] == ""


@pytest.mark.parametrize("snake_case", [False, True])
def test_json_decodes_to_the_same_rows_as_protobuf(snake_case: bool) -> None:
    spans = record(lambda t: agent_run(t, failed_attempts=1))
    document = json_document(request_of(spans), snake_case=snake_case)
    text = json.dumps(document)
    # The spec's JSON: hex ids, integer enums, 64-bit integers as strings.
    assert '"intValue": "100"' in text or '"int_value": "100"' in text
    first = document["resource_spans" if snake_case else "resourceSpans"][0]
    span = first["scope_spans" if snake_case else "scopeSpans"][0]["spans"][0]
    assert len(span["trace_id" if snake_case else "traceId"]) == 32
    assert isinstance(span["kind"], int)
    from_json = otlp.decode(text.encode(), otlp.JSON)
    from_protobuf = otlp.decode(protobuf_body(spans), otlp.PROTOBUF)
    assert from_json.rows == from_protobuf.rows
    assert len(from_json.rows) == 7


def test_nested_any_values_flatten_to_json() -> None:
    request = request_of(record(lambda t: t.start_span("x").end()))
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.append(
        KeyValue(
            key="nested",
            value=AnyValue(
                kvlist_value=KeyValueList(
                    values=[
                        KeyValue(key="list", value=AnyValue(array_value=ArrayValue(values=[
                            AnyValue(int_value=1), AnyValue(string_value="two")
                        ]))),
                        KeyValue(key="raw", value=AnyValue(bytes_value=b"\x00\x01")),
                        KeyValue(key="empty", value=AnyValue()),
                    ]
                )
            ),
        )
    )  # fmt: skip
    (row,) = otlp.rows_from_request(request).rows
    assert row["attributes"]["nested"] == {"list": [1, "two"], "raw": "AAE=", "empty": None}
    json.dumps(row)


def test_malformed_protobuf_is_a_decode_error() -> None:
    with pytest.raises(otlp.DecodeError, match="not a valid protobuf"):
        otlp.decode(b"\xff\xff\xff\xff not protobuf", otlp.PROTOBUF)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not an OTLP/JSON"),
        (b'{"resourceSpans": 5}', "not a valid OTLP/JSON"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "x"}]}]}]}',
         "OTLP/JSON"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)  # fmt: skip
def test_malformed_json_is_a_decode_error(body: bytes, message: str) -> None:
    with pytest.raises(otlp.DecodeError, match=message):
        otlp.decode(body, otlp.JSON)


def test_invalid_spans_are_rejected_one_by_one() -> None:
    request = request_of(record(lambda t: [t.start_span(f"s{i}").end() for i in range(5)]))
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].trace_id = b"\x01" * 8
    spans[1].span_id = bytes(8)
    spans[2].end_time_unix_nano = spans[2].start_time_unix_nano - 1
    spans[3].parent_span_id = b"\x01\x02"
    result = otlp.rows_from_request(request)
    assert [r["name"] for r in result.rows] == [spans[4].name]
    assert result.rejected == 4
    message = result.error_message()
    assert "rejected 4 span(s)" in message
    assert "trace_id must be 16 non-zero bytes" in message
    assert "span_id must be 8 non-zero bytes" in message
    assert "end_time_unix_nano is before start_time_unix_nano" in message


def test_json_ids_that_are_not_hex_reject_the_span() -> None:
    document = json_document(request_of(record(lambda t: t.start_span("s").end())))
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = "zz" * 16
    result = otlp.decode(json.dumps(document).encode(), otlp.JSON)
    assert result.rows == [] and result.rejected == 1


def test_gunzip_limits_the_decompressed_size() -> None:
    assert otlp.gunzip(gzip.compress(b"abc"), 3) == b"abc"
    bomb = gzip.compress(b"\0" * 1_000_000)
    assert len(bomb) < 2_000
    with pytest.raises(otlp.BodyTooLarge):
        otlp.gunzip(bomb, 10_000)
    with pytest.raises(otlp.DecodeError, match="gzip"):
        otlp.gunzip(b"not gzip", 100)
    with pytest.raises(otlp.DecodeError, match="truncated"):
        otlp.gunzip(gzip.compress(b"abc" * 100)[:-12], 1_000)


@pytest.mark.parametrize(
    ("attrs", "name", "kind"),
    [
        ({"agents.span.type": "handoff"}, "x", "handoff"),
        ({"agents.span.type": "mcp_tools"}, "x", "mcp_tools"),
        ({"agents.span.type": "speech"}, "x", "other"),
        ({"openinference.span.kind": "LLM"}, "x", "generation"),
        ({"openinference.span.kind": "TOOL"}, "x", "function"),
        ({"openinference.span.kind": "AGENT", "graph.node.id": "Triage"}, "x", "agent"),
        # OpenInference's trace root ("Agent workflow") names no agent: it is not one.
        ({"openinference.span.kind": "AGENT"}, "Agent workflow", "trace"),
        ({"openinference.span.kind": "TOOL"}, "handoff to Billing", "handoff"),
        ({"openinference.span.kind": "CHAIN"}, "temporal:startActivity", "temporal"),
        ({"openinference.span.kind": "CHAIN"}, "temporal:executeActivity", "temporal"),
        ({"openinference.span.kind": "CHAIN"}, "x", "custom"),
        ({"openinference.span.kind": "EMBEDDING"}, "x", "other"),
        ({"gen_ai.operation.name": "chat"}, "x", "generation"),
        ({"gen_ai.operation.name": "text_completion"}, "x", "generation"),
        ({"gen_ai.operation.name": "execute_tool"}, "x", "function"),
        ({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "Triage"}, "x", "agent"),
        ({"gen_ai.operation.name": "invoke_agent"}, "Agent workflow", "trace"),
        ({"gen_ai.operation.name": "agent_handoff"}, "x", "handoff"),
        ({"traceloop.span.kind": "handoff", "gen_ai.operation.name": "handoff"}, "x", "handoff"),
        ({"traceloop.span.kind": "workflow"}, "Agent Workflow", "trace"),
        ({"traceloop.span.kind": "tool", "gen_ai.operation.name": "execute_tool"}, "x", "function"),
        ({"agents.span.type": "function", "openinference.span.kind": "LLM"}, "x", "function"),
        ({}, "RunActivity:invoke_model_activity", "temporal"),
        ({}, "StartActivity:get_weather", "temporal"),
        ({}, "HandleSignal:message", "temporal"),
        ({}, "SignalWorkflow:message", "temporal"),
        ({}, "HandleUpdate:ask", "temporal"),
        ({}, "HandleQuery:status", "temporal"),
        ({}, "Something:else", "other"),
        ({}, "plain", "other"),
    ],
)
def test_span_kind_is_normalized(attrs: dict, name: str, kind: str) -> None:
    assert otlp.correlation_keys(attrs, name)["kind"] == kind


def test_correlation_keys_first_found_wins() -> None:
    keys = otlp.correlation_keys(
        {
            "temporal.workflow.id": "wf-ours",
            "temporalWorkflowID": "wf-theirs",
            "temporalRunID": "run-theirs",
            "temporalActivityID": "7",
            "temporal.activity.attempt": 2,
            "gen_ai.response.model": "gpt-resp",
            "llm.model_name": "llm-model",
            "llm.token_count.prompt": 11,
            "gen_ai.usage.output_tokens": 0,
            "llm.token_count.completion": 99,
            "agents.agent.name": "Triage",
            "tool.name": "lookup",
        },
        "x",
    )
    assert keys["workflow_id"] == "wf-ours"
    assert keys["run_id"] == "run-theirs"
    assert keys["activity_id"] == "7"
    assert keys["attempt"] == 2
    assert keys["model"] == "gpt-resp"
    assert keys["tokens_in"] == 11
    assert keys["tokens_out"] == 0
    assert keys["agent"] == "Triage"
    assert keys["tool"] == "lookup"


def test_openinference_agent_name_from_graph_node_and_trace_root_is_no_agent() -> None:
    agent = {"openinference.span.kind": "AGENT"}
    assert otlp.correlation_keys({**agent, "graph.node.id": "Billing"}, "x")["agent"] == "Billing"
    assert otlp.correlation_keys({**agent, "agent.name": "Billing"}, "x")["agent"] == "Billing"
    # OpenInference's trace root: an AGENT span named after the trace, naming no agent.
    root = otlp.correlation_keys(agent, "Agent workflow")
    assert (root["kind"], root["agent"]) == ("trace", "")
    # The GenAI instrumentations stamp a default agent name on every span.
    tool = {"gen_ai.operation.name": "execute_tool", "gen_ai.agent.name": "Triage"}
    assert otlp.correlation_keys(tool, "execute_tool lookup")["agent"] == ""
    chat = {"gen_ai.operation.name": "chat", "gen_ai.agent.name": "OpenAI Agent"}
    assert otlp.correlation_keys(chat, "chat gpt-4o")["agent"] == ""
    # A model span names the agent that called it.
    chat = {"gen_ai.operation.name": "chat", "gen_ai.agent.name": "Triage"}
    assert otlp.correlation_keys(chat, "chat gpt-4o")["agent"] == "Triage"
    assert otlp.correlation_keys({}, "Support agent")["agent"] == ""


def test_responses_are_encoded_in_the_request_content_type() -> None:
    from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    body = otlp.encode_response(2, "rejected 2", otlp.PROTOBUF)
    parsed = ExportTraceServiceResponse.FromString(body)
    assert parsed.partial_success.rejected_spans == 2
    assert json.loads(otlp.encode_response(0, "", otlp.JSON)) == {}
    assert Status.FromString(otlp.encode_status(3, "bad", otlp.PROTOBUF)).message == "bad"
    assert json.loads(otlp.encode_status(3, "bad", otlp.JSON)) == {"code": 3, "message": "bad"}
