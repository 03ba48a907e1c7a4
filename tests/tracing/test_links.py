"""Ties from a run's history to spans without Temporal ids (tracing.links), without a database."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from temporalio.api.common.v1 import Header, Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from tracing import links
from tracing.links import RunLink

S = 1_000_000_000
TRACE = "ab" * 16
OTHER_TRACE = "cd" * 16


def payload(value: Any) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode())


def openai_header(trace_id: str, span_id: str) -> Header:
    return Header(
        fields={
            "__openai_span": payload(
                {"traceId": "trace_x", "spanId": "span_y", "traceName": "Agent workflow",
                 "otelTraceId": int(trace_id, 16), "otelSpanId": int(span_id, 16),
                 "otelTraceFlags": 1, "otelTraceState": ""}
            )
        }
    )  # fmt: skip


def tracer_header(trace_id: str, span_id: str) -> Header:
    return Header(fields={"_tracer-data": payload({"traceparent": f"00-{trace_id}-{span_id}-01"})})


def event(event_id: int, kind: int, at: int, **attrs: Any) -> HistoryEvent:
    ts = Timestamp()
    ts.FromNanoseconds(at)
    return HistoryEvent(event_id=event_id, event_type=kind, event_time=ts, **attrs)  # type: ignore[arg-type]


def model_call_events(
    first_id: int, at: int, activity_id: str, header: Header
) -> list[HistoryEvent]:
    """Scheduled, started on attempt 2 (attempt 1 failed), completed with usage."""
    result = payload({"output": [], "usage": {"input_tokens": 120, "output_tokens": 31}})
    return [
        event(first_id, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED, at,
              activity_task_scheduled_event_attributes={
                  "activity_id": activity_id, "activity_type": {"name": "invoke_model_activity"},
                  "header": header}),
        event(first_id + 1, EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED, at + 3 * S,
              activity_task_started_event_attributes={
                  "scheduled_event_id": first_id, "attempt": 2}),
        event(first_id + 2, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED, at + 4 * S,
              activity_task_completed_event_attributes={
                  "scheduled_event_id": first_id, "result": {"payloads": [result]}}),
    ]  # fmt: skip


def test_history_links_read_both_headers_and_the_model_call() -> None:
    events = [
        event(1, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED, 0,
              workflow_execution_started_event_attributes={
                  "header": tracer_header(OTHER_TRACE, "0000000000000001")}),
        *model_call_events(5, S, "1", openai_header(TRACE, "00000000000000aa")),
        event(9, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED, 6 * S,
              workflow_execution_signaled_event_attributes={
                  "signal_name": "finish",
                  "header": tracer_header(OTHER_TRACE, "00000000000000bb")}),
    ]  # fmt: skip
    found = links.history_links(events)
    assert [(link.kind, link.trace_id, link.span_id) for link in found] == [
        ("workflow", OTHER_TRACE, "0000000000000001"),
        ("activity", TRACE, "00000000000000aa"),
        ("signal", OTHER_TRACE, "00000000000000bb"),
    ]
    call = links.model_calls(found)["1"]
    assert (call.attempts, call.failed, call.tokens_in, call.tokens_out) == (2, False, 120, 31)
    assert (call.scheduled_ns, call.closed_ns) == (S, 5 * S)


def test_hostile_headers_are_ignored() -> None:
    bad = [
        Header(fields={"__openai_span": Payload(metadata={"encoding": b"binary/null"})}),
        Header(fields={"__openai_span": payload("not a dict")}),
        Header(fields={"__openai_span": payload({"otelTraceId": -1, "otelSpanId": True})}),
        Header(fields={"__openai_span": payload({"otelTraceId": 2**200, "otelSpanId": 1})}),
        Header(fields={"_tracer-data": payload({"traceparent": "00-zz-yy-01"})}),
        Header(
            fields={"_tracer-data": payload({"traceparent": "00-" + "0" * 32 + "-" + "0" * 16})}
        ),
        Header(fields={"_tracer-data": Payload(metadata={"encoding": b"json/plain"}, data=b"{")}),
    ]
    assert [links.span_contexts(header) for header in bad] == [[]] * len(bad)


def node(span_id: str, parent: str, name: str, start: int, end: int, **extra: Any) -> dict:
    row = {
        "trace_id": TRACE, "span_id": span_id, "parent_span_id": parent, "name": name,
        "start_ns": start, "end_ns": end, "workflow_id": "", "run_id": "", "activity_id": "",
        "attempt": None, "inherited": False,
    }  # fmt: skip
    row.update(extra)
    return row


def link(span_id: str, kind: str = "activity", run: str = "run", **extra: Any) -> RunLink:
    values: dict[str, Any] = (
        {
            "activity_id": "1",
            "activity_type": "invoke_model_activity",
            "scheduled_ns": S,
            "closed_ns": 5 * S,
        }
        if kind == "activity"
        else {}
    )
    values.update(extra)
    return RunLink(trace_id=TRACE, span_id=span_id, kind=kind, workflow_id="wf", run_id=run,
                   **values)  # fmt: skip


def by_id(*rows: dict) -> dict[tuple[str, str], dict]:
    return {(r["trace_id"], r["span_id"]): r for r in rows}


def test_native_spans_get_run_activity_and_attempts() -> None:
    """temporal:startActivity is the span the header names; each executeActivity an attempt."""
    nodes = by_id(
        node("root", "", "Agent workflow", 0, 9 * S),
        node("agent", "root", "Triage agent", 0, 9 * S),
        node("start", "agent", "temporal:startActivity", S, 5 * S),
        node("exec2", "start", "temporal:executeActivity", 3 * S + 1, 4 * S),
        node("gen2", "exec2", "response", 3 * S + 2, 4 * S - 1),
        node("exec1", "start", "temporal:executeActivity", S + 1, 2 * S),
        node("gen1", "exec1", "response", S + 2, 2 * S - 1),
        node("tool", "agent", "lookup_order", 6 * S, 7 * S),
    )
    changes = links.assign(nodes, [link("start")])
    ids = {key[1]: (c["run_id"], c["activity_id"], c["attempt"]) for key, c in changes.items()}
    assert ids == {
        "root": ("run", "", None),
        "agent": ("run", "", None),
        "start": ("run", "1", None),
        "exec1": ("run", "1", 1),
        "gen1": ("run", "1", 1),
        "exec2": ("run", "1", 2),
        "gen2": ("run", "1", 2),
        "tool": ("run", "", None),
    }


def test_without_temporal_spans_the_activity_is_what_runs_within_its_time() -> None:
    """add_temporal_spans=False: the header names the agent's turn; the tool it then runs
    (after the model call closed) is not part of the model call."""
    nodes = by_id(
        node("turn", "", "turn", 0, 9 * S),
        node("gen1", "turn", "response", S + 1, 2 * S),
        node("gen2", "turn", "response", 3 * S + 1, 4 * S),
        node("tool", "turn", "lookup_order", 6 * S, 7 * S),
    )
    changes = links.assign(nodes, [link("turn")])
    ids = {key[1]: (c["activity_id"], c["attempt"]) for key, c in changes.items()}
    assert ids == {"turn": ("", None), "gen1": ("1", 1), "gen2": ("1", 2), "tool": ("", None)}


def test_spans_with_ids_of_their_own_are_left_alone_and_stop_the_walk() -> None:
    nodes = by_id(
        node("start", "", "temporal:startActivity", S, 5 * S),
        node("run", "start", "RunActivity:x", S, 2 * S, workflow_id="wf", run_id="other"),
        node("gen", "run", "response", S, 2 * S, workflow_id="wf", run_id="other",
             inherited=True),
    )  # fmt: skip
    changes = links.assign(nodes, [link("start")])
    assert set(changes) == {(TRACE, "start")}


def test_a_span_current_for_two_runs_has_no_single_owner() -> None:
    nodes = by_id(
        node("client", "", "batch", 0, 9 * S),
        node("child", "client", "work", S, 2 * S),
    )
    found = [link("client", kind="workflow", run="a"), link("client", kind="workflow", run="b")]
    assert links.assign(nodes, found) == {}


def test_parent_cycles_end_the_walk() -> None:
    nodes = by_id(node("a", "b", "x", 0, S), node("b", "a", "y", 0, S), node("c", "", "z", 0, S))
    changes = links.assign(nodes, [link("c", kind="workflow")])
    # a and b never reach a tied span; the trace belongs to one run, so they are its.
    assert {key[1] for key in changes} == {"a", "b", "c"}
