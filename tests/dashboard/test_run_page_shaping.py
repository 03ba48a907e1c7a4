"""The run page's pure shaping functions (dashboard.run_page), on a recorded real run.

The views are tested in test_run_page.py; here: payload decoding, the header,
compact history, the span tree, the timeline data and the JSON, with no
database and no server.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import ApplicationFailureInfo, Failure
from temporalio.api.history.v1 import History, HistoryEvent

from dashboard import run_page
from dashboard.templatetags.runs_format import duration_ns
from tests.dashboard.run_fixtures import history_proto, recorded
from tracing.correlation import correlate


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def payload(encoding: str, data: bytes) -> dict[str, Any]:
    return {"metadata": {"encoding": b64(encoding)}, "data": base64.b64encode(data).decode()}


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    return recorded()


@pytest.fixture
def history(run: dict[str, Any]) -> History:
    return history_proto(run)


@pytest.fixture
def spans(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The recorded spans as tracing.store.spans_for_run returns them."""
    rows = []
    for stored in copy.deepcopy(run["spans"]):
        data = stored.pop("data") or {}
        rows.append(
            {
                **stored,
                "attributes": data.get("attributes", {}),
                "resource": data.get("resource", {}),
                "events": data.get("events", []),
                "links": data.get("links", []),
                "scope": data.get("scope", ""),
            }
        )
    return rows


def span(span_id: str, parent: str = "", start: int = 0, end: int = 10, **fields: Any) -> dict:
    return {
        "trace_id": "t" * 32,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": fields.pop("name", span_id),
        "kind": fields.pop("kind", "custom"),
        "start_ns": start,
        "end_ns": end,
        "status_code": fields.pop("status_code", 0),
        "activity_id": "",
        "attempt": None,
        **fields,
    }


# -- payloads ---------------------------------------------------------------------


def test_payloads_decode_to_values_and_never_fail() -> None:
    assert run_page.decode_payload(payload("json/plain", b'{"a": [1, 2]}')) == {"a": [1, 2]}
    assert run_page.decode_payload(payload("binary/null", b"")) is None
    assert run_page.decode_payload(payload("binary/protobuf", b"\x01\x02\x03")) == {
        "payload": "binary/protobuf",
        "bytes": 3,
    }
    # Broken JSON, broken base64, no metadata: described, not raised.
    assert run_page.decode_payload(payload("json/plain", b"{nope")) == {
        "payload": "json/plain",
        "bytes": 5,
    }
    assert run_page.decode_payload(
        {"metadata": {"encoding": b64("json/plain")}, "data": "abc"}
    ) == {"undecodable payload": "json/plain"}
    assert run_page.decode_payload({}) == {"payload": "unknown encoding", "bytes": 0}


def test_payloads_are_decoded_in_place_anywhere_in_an_event() -> None:
    one = payload("json/plain", b'"hi"')
    two = payload("json/plain", b"2")
    event = {"input": {"payloads": [one]}, "nested": [{"args": {"payloads": [one, two]}}], "n": 3}
    assert run_page.decode_payloads(event) == {
        "input": "hi",
        "nested": [{"args": ["hi", 2]}],
        "n": 3,
    }


def test_maybe_json_parses_only_what_looks_like_json() -> None:
    assert run_page.maybe_json('{"city": "Paris"}') == {"city": "Paris"}
    assert run_page.maybe_json("[1]") == [1]
    assert run_page.maybe_json("{not json") == "{not json"
    assert run_page.maybe_json("42") == "42"
    assert run_page.maybe_json(None) is None


# -- history -----------------------------------------------------------------------


def test_event_names_and_labels() -> None:
    event = HistoryEvent(event_type=EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT)
    assert run_page.event_type_name(event) == "EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT"
    assert run_page.event_label("EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT") == "ActivityTaskTimedOut"
    newer = HistoryEvent(event_type=EventType.ValueType(9999))  # newer than our protos
    assert run_page.event_type_name(newer) == "EVENT_TYPE_9999"


def test_a_failure_and_its_causes_one_line_each_bounded() -> None:
    failure = Failure(
        message="Activity task failed",
        cause=Failure(
            message="503 Service Unavailable",
            application_failure_info=ApplicationFailureInfo(type="InjectedModelFault"),
        ),
    )
    assert run_page.failure_message(failure) == (
        "Activity task failed\nInjectedModelFault: 503 Service Unavailable"
    )
    assert run_page.failure_message(None) == ""
    deep = Failure(message="0")
    for n in range(1, 50):
        deep = Failure(message=str(n), cause=deep)
    assert run_page.failure_message(deep).splitlines() == [str(n) for n in range(49, 41, -1)]


def test_the_header_of_a_closed_run(history: History) -> None:
    header = run_page.header_from_history(history.events)
    assert (header.status, header.status_label, header.is_open) == (
        "COMPLETED",
        "Completed",
        False,
    )
    assert header.workflow_type == "triage" and header.task_queue
    assert header.input["prompt"].startswith("Our dashboard sync is stuck")
    assert header.input["faults"] == ["call=1:fail=2", "call=3:slow=1500"]
    assert header.result["answered_by"] == "Technical support"
    assert header.has_input and header.has_result and header.failure == ""
    assert header.start_ns is not None and header.close_ns is not None
    assert header.start_ns < header.close_ns


def test_the_header_of_an_open_run_and_of_no_history(history: History) -> None:
    header = run_page.header_from_history(history.events[:10])
    assert header.status == "RUNNING" and header.is_open
    assert header.close_ns is None and not header.has_result
    empty = run_page.header_from_history([])
    assert empty.status == "UNKNOWN" and not empty.is_open and empty.start_ns is None


def test_compact_history_folds_each_activity_and_numbers_model_calls(history: History) -> None:
    full = run_page.full_history(history.events)
    assert [row.event_id for row in full] == [e.event_id for e in history.events]
    compact = run_page.compact_history(full)
    groups = [row for row in compact if isinstance(row, run_page.ActivityGroup)]
    others = [row for row in compact if isinstance(row, run_page.HistoryRow)]
    assert [(g.activity_type, g.number) for g in groups] == [
        ("invoke_model_activity", 1),
        ("invoke_model_activity", 2),
        ("check_service_status", 0),
        ("invoke_model_activity", 3),
        ("invoke_model_activity", 4),
    ]
    assert all(g.outcome == "completed" and g.started and g.closed for g in groups)
    # Call 1 failed twice: Temporal records the third attempt and the last failure.
    assert groups[0].attempt == 3 and "Injected model failure" in groups[0].last_failure
    assert groups[1].attempt == 1 and groups[1].last_failure == ""
    # Workflow-task bookkeeping is left out; start and close stay.
    assert [row.label for row in others] == [
        "WorkflowExecutionStarted",
        "WorkflowExecutionCompleted",
    ]


def test_history_rows_decode_their_attributes_on_demand(history: History) -> None:
    started = run_page.full_history(history.events)[0]
    assert started.label == "WorkflowExecutionStarted"
    assert started.attributes["input"]["prompt"].startswith("Our dashboard")
    assert json.loads(started.details) == started.attributes
    assert started.time is not None and started.time.tzinfo is not None
    assert started.clock == started.time.strftime("%H:%M:%S.%f")


def test_history_clock_reads_utc_to_the_microsecond() -> None:
    assert run_page.clock(None) == ""
    assert run_page.clock(0) == "00:00:00.000000"
    # 2026-12-01T23:59:59.123456789Z: truncated, never rounded into the next second.
    assert run_page.clock(1_796_169_599_123_456_789) == "23:59:59.123456"
    assert run_page.clock(1_750_000_000_000_001_000) == "15:06:40.000001"


# -- spans -------------------------------------------------------------------------------


def assert_well_formed(rows: list[run_page.TreeRow]) -> None:
    """Every opened branch is closed exactly once, in order."""
    open_branches = 0
    for row in rows:
        if row.has_children:
            open_branches += 1
        open_branches -= len(row.closes)
        assert open_branches >= 0
    assert open_branches == 0


def test_the_span_tree_is_depth_first_with_relative_bars() -> None:
    spans = [
        span("root", start=0, end=1000),
        span("b", "root", start=500, end=1000),
        span("a", "root", start=0, end=400),
        span("a1", "a", start=100, end=101),
    ]
    rows = run_page.span_tree(spans, 0, 1000)
    assert [(r.span["span_id"], r.depth, r.has_children) for r in rows] == [
        ("root", 0, True),
        ("b", 1, False),
        ("a", 1, True),
        ("a1", 2, False),
    ]
    assert_well_formed(rows)
    by_id = {r.span["span_id"]: r for r in rows}
    assert (by_id["root"].offset_pct, by_id["root"].width_pct) == (0.0, 100.0)
    assert (by_id["b"].offset_pct, by_id["b"].width_pct) == (50.0, 50.0)
    assert by_id["a1"].width_pct == 0.3  # a sliver stays visible
    assert all(r.duration == duration_ns(r.span["end_ns"] - r.span["start_ns"]) for r in rows)


def test_the_span_tree_survives_cycles_self_parents_and_missing_parents() -> None:
    spans = [
        span("x", "y"),
        span("y", "x"),  # a cycle: neither is anyone's root
        span("self", "self"),
        span("orphan", "gone"),
        span("child", "orphan"),
    ]
    rows = run_page.span_tree(spans, 0, 10)
    shown = [r.span["span_id"] for r in rows]
    # Cycle members have no root to hang from; everything reachable shows once.
    assert sorted(shown) == sorted(set(shown))
    assert {"self", "orphan", "child"} <= set(shown)
    assert_well_formed(rows)


def test_the_rendered_tree_escapes_span_values_and_nests_correctly() -> None:
    spans = [
        span("r", name="<script>alert(1)</script>", kind="agent", status_code=2),
        span("c", "r", name='"quoted" & <b>', activity_id="3", attempt=2),
    ]
    html = str(run_page.render_tree(run_page.span_tree(spans, 0, 10), "/runs/w/r/spans/"))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&quot;quoted&quot; &amp; &lt;b&gt;" in html
    assert html.count("<details") == html.count("</details>") == 1
    assert 'class="span-row is-error"' in html and "#3·2" in html
    assert 'href="/runs/w/r/spans/c/"' in html


def test_span_detail_shows_messages_as_json_and_tools_without_repeats() -> None:
    detail = run_page.span_detail_ctx(
        span(
            "g",
            kind="generation",
            end=2_500_000,
            attributes={"gen_ai.input.messages": '[{"role": "user"}]', "b": 1, "a": 2},
        )
    )
    assert detail["duration"] == duration_ns(2_500_000)
    assert detail["sections"] == [("Input messages", run_page.pretty([{"role": "user"}]))]
    assert detail["attributes"] == [
        ("a", "2"),
        ("b", "1"),
        ("gen_ai.input.messages", '[{"role": "user"}]'),
    ]
    tool = run_page.span_detail_ctx(
        span(
            "t",
            kind="function",
            attributes={
                "input.value": '{"city": "Paris"}',
                "gen_ai.tool.call.arguments": '{"city": "Paris"}',
                "gen_ai.tool.call.result": "sunny",
            },
        )
    )
    assert [title for title, _ in tool["sections"]] == ["Tool arguments", "Tool result"]


# -- the story: timeline data, totals, the JSON ---------------------------------------------


def test_timeline_data_from_the_recorded_story(
    history: History, spans: list[dict[str, Any]]
) -> None:
    story = correlate(history.events, spans)
    t0 = min(s["start_ns"] for s in spans)
    t1 = max(s["end_ns"] for s in spans)
    data = run_page.timeline(story, t0, t1)
    assert data["lanes"] == ["Triage agent", "Technical support"]
    assert [c["n"] for c in data["calls"]] == [1, 2, 3, 4]
    first_call = [a for a in data["attempts"] if a["c"] == 0]
    assert [(a["n"], a["f"]) for a in first_call] == [(1, True), (2, True), (3, False)]
    assert all(0 <= a["s"] <= a["e"] <= data["duration"] for a in data["attempts"])
    assert {p["k"] for p in data["points"]} >= {"tool", "handoff"}
    assert json.loads(json.dumps(data)) == data


def test_build_and_story_json_agree_with_the_story(
    history: History, spans: list[dict[str, Any]], run: dict[str, Any]
) -> None:
    loaded = run_page.Loaded(history, None, spans, stored="7")
    assert loaded.signature == f"{len(history.events)}-7"
    ctx = run_page.build(run["workflow_id"], run["run_id"], loaded)
    assert ctx["totals"].model_calls == 4 and ctx["totals"].failed_attempts == 2
    assert ctx["totals"].spans == len(spans)
    assert not ctx["is_open"] and ctx["live_sig"] == loaded.signature
    document = run_page.story_json(ctx)
    assert json.loads(json.dumps(document)) == document
    assert document["status"] == "COMPLETED" and document["failure"] is None
    assert document["totals"]["tokens_in"] == 1296 and document["totals"]["tokens_out"] == 348
    assert document["totals"]["cost_usd"] == "0.0020"
    assert [c["number"] for c in document["model_calls"]] == [1, 2, 3, 4]
    assert [a["failed"] for a in document["model_calls"][0]["attempts"]] == [True, True, False]
    assert [s["span_id"] for s in document["spans"]] == [r.span["span_id"] for r in ctx["tree"]]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.*\+00:00", document["start_time"])


def test_signature_says_when_temporal_could_not_be_asked() -> None:
    assert run_page.Loaded(None, "connection refused", [], "3").signature == "?-3"
    assert run_page.Loaded(None, None, [], "0").signature == "-1-0"
