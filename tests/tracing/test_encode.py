"""Stored rows back into OTLP: what the receiver decoded comes out the same, redacted."""

from __future__ import annotations

import json
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.trace import Link, Status, StatusCode, Tracer

from telemetry import vocab
from telemetry.redact import REDACTED
from tests.tracing.spans import agent_run, protobuf_body, record
from tracing import encode, otlp

SECRET = "sk-proj-" + "Qx7" * 12
KEPT = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "span_kind",
    "start_ns",
    "end_ns",
    "status_code",
    "status_message",
    "service_name",
    "scope",
    "attributes",
    "events",
    "links",
    "resource",
    "workflow_id",
    "run_id",
    "activity_id",
    "attempt",
)


def a_run_with_events_links_and_errors(tracer: Tracer) -> None:
    agent_run(tracer, failed_attempts=1)
    with tracer.start_as_current_span(
        "HandleSignal:approve",
        attributes={vocab.WORKFLOW_ID: "wf-1", vocab.RUN_ID: "run-1", "n": 3.5, "ok": True},
    ) as first:
        first.add_event("decided", {"by": "oncall", "tags": ["a", "b"], "count": 2})
    with tracer.start_as_current_span(
        "followup", links=[Link(first.get_span_context(), {"why": "same approval"})]
    ) as followup:
        followup.set_status(Status(StatusCode.ERROR, "it went wrong"))


def decoded(build: Any = a_run_with_events_links_and_errors) -> list[dict[str, Any]]:
    result = otlp.decode(protobuf_body(record(build)), otlp.PROTOBUF)
    assert result.rejected == 0
    return result.rows


def kept(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**{key: row[key] for key in KEPT}, "scope_version": row.get("scope_version")}
        for row in rows
    ]


def exported(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """kept(rows) as a collector gets them: what the export adds, and only that, on top."""
    views = kept(rows)
    for row, view in zip(rows, views, strict=True):
        view["attributes"] = {**encode.semantic_attributes(row), **row["attributes"]}
    return views


def test_rows_survive_a_round_trip_through_protobuf() -> None:
    rows = decoded()
    request = encode.request_from_rows(rows)
    assert encode.span_count(request) == len(rows) == 9
    again = otlp.decode(request.SerializeToString(), otlp.PROTOBUF)
    assert kept(again.rows) == exported(rows)
    assert {r["scope_version"] for r in again.rows} == {"1.0"}
    # What makes the round trip worth testing is there to lose.
    assert any(r["events"] for r in rows) and any(r["links"] for r in rows)
    assert any(r["status_code"] == vocab.STATUS_ERROR for r in rows)
    assert any(r["parent_span_id"] for r in rows) and any(not r["parent_span_id"] for r in rows)


def test_otlp_json_has_hex_ids_and_integer_enums_and_decodes_to_the_same_rows() -> None:
    rows = decoded()
    document = encode.to_json(encode.request_from_rows(rows))
    first = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert first["traceId"] == rows[0]["trace_id"] and first["spanId"] == rows[0]["span_id"]
    assert isinstance(first["kind"], int)
    linked = next(
        span
        for scope in document["resourceSpans"][0]["scopeSpans"]
        for span in scope["spans"]
        if span.get("links")
    )
    assert len(linked["links"][0]["spanId"]) == 16  # hex, not base64
    again = otlp.decode(json.dumps(document).encode(), otlp.JSON)
    assert kept(again.rows) == exported(rows)


def test_inherited_temporal_ids_are_added_only_when_the_span_has_none() -> None:
    rows = decoded(agent_run)
    llm = next(r for r in rows if r["name"] == "ChatCompletion")
    assert not llm["workflow_id"]
    # The store fills these from the ancestors; the export then writes them down.
    inherited = {**llm, "workflow_id": "wf-1", "run_id": "run-1", "activity_id": "1", "attempt": 1}
    attrs = otlp.attributes(encode.export_attributes(inherited))
    assert attrs[vocab.WORKFLOW_ID] == "wf-1" and attrs[vocab.RUN_ID] == "run-1"
    assert attrs[vocab.ACTIVITY_ID] == "1" and attrs[vocab.ACTIVITY_ATTEMPT] == 1
    # Temporal's own spelling counts as having the id: no second copy under ours.
    workflow = next(r for r in rows if r["name"].startswith("RunWorkflow:"))
    attrs = otlp.attributes(encode.export_attributes(workflow))
    assert attrs["temporalWorkflowID"] == "wf-1" and vocab.WORKFLOW_ID not in attrs
    # No run, no Temporal ids and no session added; what other tools read, only.
    attrs = otlp.attributes(encode.export_attributes(llm))
    assert attrs == {**encode.semantic_attributes(llm), **llm["attributes"]}
    assert not {vocab.WORKFLOW_ID, vocab.RUN_ID, vocab.OI_SESSION} & attrs.keys()


def test_secrets_are_redacted_everywhere_on_the_way_out() -> None:
    def leaky(tracer: Tracer) -> None:
        with tracer.start_as_current_span(
            "call", attributes={"api_key": "plain-looking", "prompt": f"my key is {SECRET}"}
        ) as first:
            first.add_event("retry", {"authorization": "Bearer abcdefghijkl"})
            first.set_status(Status(StatusCode.ERROR, f"401 for {SECRET}"))
        with tracer.start_as_current_span(
            "next", links=[Link(first.get_span_context(), {"note": SECRET})]
        ):
            pass

    rows = decoded(leaky)
    # The receiver redacts on the way in too; these rows hold the secrets as a
    # span stored before that (or before a LOOMVIEW_REDACT_PATTERNS) would.
    assert rows[0]["attributes"]["api_key"] == REDACTED
    rows[0]["attributes"].update(api_key="plain-looking", prompt=f"my key is {SECRET}")
    rows[0]["events"][0]["attributes"]["authorization"] = "Bearer abcdefghijkl"
    rows[0]["status_message"] = f"401 for {SECRET}"
    rows[1]["links"][0]["attributes"]["note"] = SECRET
    for row in rows:
        row["resource"] = {**row["resource"], "deploy.token": "tok-123456"}
    request = encode.request_from_rows(rows)
    wire = request.SerializeToString()
    for secret in (SECRET.encode(), b"plain-looking", b"abcdefghijkl", b"tok-123456"):
        assert secret not in wire
    call = otlp.decode(wire, otlp.PROTOBUF).rows[0]
    assert call["attributes"]["api_key"] == REDACTED
    assert call["attributes"]["prompt"] == f"my key is {REDACTED}"
    assert call["events"][0]["attributes"]["authorization"] == REDACTED
    assert REDACTED in call["status_message"]
    assert call["resource"]["deploy.token"] == REDACTED
    # The stored rows are left as they were: redaction is on the copy that leaves.
    assert rows[0]["attributes"]["api_key"] == "plain-looking"


def test_spans_are_grouped_by_resource_then_scope() -> None:
    rows = decoded(agent_run)
    other = [{**row, "resource": {"service.name": "other"}} for row in rows[:2]]
    renamed = [{**rows[2], "scope": "another.scope"}, {**rows[3], "scope": ""}]
    request = encode.request_from_rows([*rows[:2], *other, *renamed, *rows[4:]])
    services = [
        otlp.attributes(r.resource.attributes)["service.name"] for r in request.resource_spans
    ]
    assert services == ["test-worker", "other"]
    scopes = [s.scope.name for s in request.resource_spans[0].scope_spans]
    assert scopes == ["loomview.tests", "another.scope", ""]
    assert [len(s.spans) for s in request.resource_spans[0].scope_spans] == [
        len(rows) - 2,
        1,
        1,
    ]
    assert encode.span_count(request) == len(rows) + 2


def test_any_value_keeps_each_type_and_never_fails() -> None:
    def roundtrip(value: Any) -> Any:
        return otlp.any_value(encode.any_value(value))

    assert encode.any_value(None) == AnyValue()
    assert roundtrip("text") == "text"
    assert roundtrip(True) is True  # a bool is not encoded as the int 1
    assert roundtrip(7) == 7 and roundtrip(-(2**63)) == -(2**63)
    assert roundtrip(2**63) == str(2**63)  # beyond int64: kept as text, not lost
    assert roundtrip(1.5) == 1.5
    assert roundtrip(["a", 1, [True]]) == ["a", 1, [True]]
    assert roundtrip({"k": {"n": 1}}) == {"k": {"n": 1}}
    assert roundtrip(("a", "b")) == ["a", "b"]

    class Odd:
        def __str__(self) -> str:
            return "odd"

    assert roundtrip(Odd()) == "odd"
