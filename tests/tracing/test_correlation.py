from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from tracing.correlation import correlate

S = 1_000_000_000


def event(event_id: int, kind: int, at: int, **attrs: Any) -> HistoryEvent:
    ts = Timestamp()
    ts.FromNanoseconds(at)
    return HistoryEvent(event_id=event_id, event_type=kind, event_time=ts, **attrs)  # type: ignore[arg-type]


def scheduled(event_id: int, at: int, activity_id: str, kind: str = "invoke_model_activity"):  # type: ignore[no-untyped-def]
    return event(
        event_id, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED, at,
        activity_task_scheduled_event_attributes={
            "activity_id": activity_id, "activity_type": {"name": kind}
        },
    )  # fmt: skip


def started(event_id: int, at: int, scheduled_id: int, attempt: int, last_failure: str = ""):  # type: ignore[no-untyped-def]
    return event(
        event_id, EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED, at,
        activity_task_started_event_attributes={
            "scheduled_event_id": scheduled_id, "attempt": attempt,
            "last_failure": {"message": last_failure},
        },
    )  # fmt: skip


def completed(event_id: int, at: int, scheduled_id: int):  # type: ignore[no-untyped-def]
    return event(
        event_id, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED, at,
        activity_task_completed_event_attributes={"scheduled_event_id": scheduled_id},
    )  # fmt: skip


def failed(event_id: int, at: int, scheduled_id: int, message: str):  # type: ignore[no-untyped-def]
    return event(
        event_id, EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED, at,
        activity_task_failed_event_attributes={
            "scheduled_event_id": scheduled_id, "failure": {"message": message}
        },
    )  # fmt: skip


def span(span_id: str, name: str, kind: str, start: int, end: int, **extra: Any) -> dict:
    row = {
        "trace_id": "t" * 32, "span_id": span_id, "parent_span_id": "", "name": name,
        "kind": kind, "start_ns": start, "end_ns": end, "status_code": 0, "status_message": "",
        "workflow_id": "wf", "run_id": "run", "activity_id": "", "attempt": None, "agent": "",
        "model": "", "tool": "", "tokens_in": None, "tokens_out": None, "attributes": {},
    }  # fmt: skip
    row.update(extra)
    return row


def attempt_spans(activity_id: str, attempt: int, start: int, error: str = "", **gen: Any) -> list:
    status = {"status_code": 2, "status_message": error} if error else {}
    ids = {"activity_id": activity_id, "attempt": attempt}
    activity = span(f"a{activity_id}{attempt}", "RunActivity:invoke_model_activity", "temporal",
                    start, start + S, **ids, **status)  # fmt: skip
    generation = span(f"g{activity_id}{attempt}", "generation", "generation", start + 1,
                      start + S - 1, parent_span_id=activity["span_id"],
                      **ids, **status, **gen)  # fmt: skip
    return [activity, generation]


def test_failed_attempts_come_from_spans_and_the_last_from_history() -> None:
    events = [
        scheduled(5, 10 * S, "1"),
        started(6, 40 * S, 5, attempt=3, last_failure="503 overloaded (2)"),
        completed(7, 41 * S, 5),
    ]
    agent = span("ag", "Triage", "agent", 1 * S, 50 * S, agent="Triage")
    rows = [
        agent,
        *attempt_spans("1", 1, 11 * S, error="503 overloaded (1)"),
        *attempt_spans("1", 2, 20 * S),
        *attempt_spans(
            "1", 3, 40 * S, model="demo-1", tokens_in=120, tokens_out=30,
            attributes={"gen_ai.input.messages": '[{"role": "user"}]',
                        "gen_ai.output.messages": '[{"role": "assistant"}]'},
        ),
    ]  # fmt: skip
    for row in rows:
        if row["name"].startswith("RunActivity:"):
            row["parent_span_id"] = "ag"
    story = correlate(events, rows)
    (call,) = story.model_calls
    assert call.matched and call.activity_id == "1"
    assert call.scheduled_ns == 10 * S and call.started_ns == 40 * S and call.closed_ns == 41 * S
    assert [(a.number, a.outcome) for a in call.attempts] == [
        (1, "failed"), (2, "failed"), (3, "completed"),
    ]  # fmt: skip
    # Attempt 1's failure is in its spans; attempt 2's spans looked fine but
    # attempt 3's ActivityTaskStarted carries the failure that ended it.
    assert call.attempts[0].failure == "503 overloaded (1)"
    assert call.attempts[1].failure == "503 overloaded (2)"
    assert call.attempts[2].start_ns == 40 * S
    assert call.model == "demo-1"
    assert call.input == '[{"role": "user"}]' and call.output == '[{"role": "assistant"}]'
    assert (call.tokens_in, call.tokens_out) == (120, 30)
    assert call.agent == "Triage"
    # The page opens an attempt's generation span, and the call's last answer.
    assert [a.model_span_id for a in call.attempts] == ["g11", "g12", "g13"]
    assert call.model_span_id == "g13"
    assert story.items[0].end_ns == 41 * S
    assert (story.total_model_calls, story.total_attempts, story.failed_attempts) == (1, 3, 2)
    assert (story.tokens_in, story.tokens_out) == (120, 30)


def test_history_attempts_without_spans_are_kept_unmatched() -> None:
    events = [
        scheduled(5, 10 * S, "1"),
        started(6, 30 * S, 5, attempt=2, last_failure="timeout"),
        failed(7, 31 * S, 5, "non-retryable: bad request"),
    ]
    story = correlate(events, [])
    (call,) = story.model_calls
    assert call.matched is False and call.outcome == "failed"
    assert [(a.number, a.outcome, a.matched) for a in call.attempts] == [
        (1, "failed", False), (2, "failed", False),
    ]  # fmt: skip
    assert call.attempts[0].failure == "timeout"
    assert call.attempts[1].failure == "non-retryable: bad request"
    assert story.failed_attempts == 2
    assert story.items[0].kind == "model_call" and story.items[0].matched is False


def test_spans_without_events_are_kept_unmatched() -> None:
    rows = [
        *attempt_spans("9", 1, 5 * S, tokens_in=10, tokens_out=2),
        span("f1", "get_weather", "function", 7 * S, 8 * S, tool="get_weather",
             attributes={"gen_ai.tool.call.arguments": '{"city": "Oslo"}'}),
        span("h1", "handoff", "handoff", 9 * S, 9 * S,
             attributes={"agents.handoff.from": "Triage", "agents.handoff.to": "Billing"}),
    ]  # fmt: skip
    story = correlate([], rows)
    (call,) = story.model_calls
    assert call.activity_id == "9" and call.matched is False
    assert [(a.number, a.outcome) for a in call.attempts] == [(1, "completed")]
    assert [(i.kind, i.title, i.matched) for i in story.items] == [
        ("model_call", "model call", False),
        ("tool", "get_weather", False),
        ("handoff", "Triage → Billing", False),
    ]
    assert story.tokens_in == 10
    assert [i.end_ns for i in story.items] == [6 * S, 8 * S, 9 * S]
    assert story.items[1].detail["arguments"] == '{"city": "Oslo"}'


def test_story_orders_calls_tools_signals_and_updates() -> None:
    signal = event(
        10, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED, 15 * S,
        workflow_execution_signaled_event_attributes={"signal_name": "approve"},
    )  # fmt: skip
    accepted = event(
        20, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED, 25 * S,
        workflow_execution_update_accepted_event_attributes={
            "accepted_request": {"meta": {"update_id": "u1"}, "input": {"name": "ask"}}
        },
    )  # fmt: skip
    done = event(
        22, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED, 35 * S,
        workflow_execution_update_completed_event_attributes={"meta": {"update_id": "u1"}},
    )  # fmt: skip
    events = [
        scheduled(5, 10 * S, "1"), started(6, 10 * S, 5, 1), completed(7, 11 * S, 5),
        signal,
        scheduled(12, 16 * S, "2", kind="lookup_order"), started(13, 16 * S, 12, 1),
        completed(14, 17 * S, 12),
        accepted,
        scheduled(23, 30 * S, "3"), started(24, 30 * S, 23, 1), completed(25, 31 * S, 23),
        done,
    ]  # fmt: skip
    rows = [
        *attempt_spans("1", 1, 10 * S),
        span("s1", "HandleSignal:approve", "temporal", 15 * S + 1, 15 * S + 2),
        span("t2", "RunActivity:lookup_order", "temporal", 16 * S, 17 * S, activity_id="2"),
        span("u1", "HandleUpdate:ask", "temporal", 25 * S + 1, 26 * S),
        *attempt_spans("3", 1, 30 * S),
    ]
    story = correlate(events, rows)
    assert [(i.kind, i.title, i.matched) for i in story.items] == [
        ("model_call", "model call", True),
        ("signal", "approve", True),
        ("activity", "lookup_order", True),
        ("update", "ask", True),
        ("model_call", "model call", True),
        ("update", "update u1 completed", True),
    ]
    assert [c.activity_id for c in story.model_calls] == ["1", "3"]
    assert story.items[1].span_ids == ["s1"]
    assert (story.total_model_calls, story.total_attempts, story.failed_attempts) == (2, 2, 0)


def test_signal_without_handler_span_is_unmatched() -> None:
    signal = event(
        3, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED, 1 * S,
        workflow_execution_signaled_event_attributes={"signal_name": "cancel"},
    )  # fmt: skip
    (item,) = correlate([signal], []).items
    assert (item.kind, item.title, item.matched, item.event_ids) == ("signal", "cancel", False, [3])


def test_model_calls_are_numbered_by_model_activities_only() -> None:
    """A tool activity between two model calls takes activity id 2; the second call is call 2."""
    events = [
        scheduled(5, 1 * S, "1"),
        started(6, 1 * S, 5, attempt=1),
        completed(7, 2 * S, 5),
        scheduled(11, 3 * S, "2", kind="check_service_status"),
        started(12, 3 * S, 11, attempt=1),
        completed(13, 4 * S, 11),
        scheduled(17, 5 * S, "3"),
        started(18, 5 * S, 17, attempt=1),
        completed(19, 6 * S, 17),
    ]
    spans = [
        *attempt_spans("1", 1, 1 * S),
        *attempt_spans("3", 1, 5 * S),
        # A model span of an activity this history does not know has no number.
        *attempt_spans("9", 1, 7 * S),
    ]
    story = correlate(events, spans)
    numbered = {c.activity_id: c.number for c in story.model_calls}
    assert numbered == {"1": 1, "3": 2, "9": 0}
    # Without a history, the spans' order numbers them.
    assert [c.number for c in correlate([], spans).model_calls] == [1, 2, 3]


def task_completed(event_id: int, at: int):  # type: ignore[no-untyped-def]
    return event(event_id, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED, at)


def test_waits_are_timers_idle_stretches_and_pending_activities() -> None:
    signal = event(
        9, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED, 70 * S,
        workflow_execution_signaled_event_attributes={"signal_name": "approve"},
    )  # fmt: skip
    timer = event(
        5, EventType.EVENT_TYPE_TIMER_STARTED, 10 * S,
        timer_started_event_attributes={"timer_id": "1", "start_to_fire_timeout": {"seconds": 300}},
    )  # fmt: skip
    canceled = event(
        12, EventType.EVENT_TYPE_TIMER_CANCELED, 71 * S,
        timer_canceled_event_attributes={"timer_id": "1"},
    )  # fmt: skip
    events = [
        task_completed(4, 10 * S),
        timer,
        signal,
        event(10, EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, 70 * S),
        task_completed(11, 71 * S),
        canceled,
        scheduled(13, 71 * S, "2"),
    ]
    waits = correlate(events, []).waits
    assert [(w.kind, w.title, w.time_ns, w.end_ns) for w in waits] == [
        ("wait", "waited for signal approve", 10 * S, 70 * S),
        ("timer", "timer 1", 10 * S, 71 * S),
        ("pending", "invoke_model_activity pending", 71 * S, None),
    ]
    assert waits[1].detail["state"] == "canceled"
    assert waits[1].detail["fire_ns"] == 310 * S


def test_an_open_run_waiting_for_a_message_has_an_open_wait() -> None:
    accepted = event(
        7, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED, 5 * S,
        workflow_execution_update_accepted_event_attributes={
            "accepted_request": {"input": {"name": "send_message"}}
        },
    )  # fmt: skip
    events = [
        task_completed(4, 1 * S),
        event(5, EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, 4 * S),
        task_completed(6, 5 * S),
        accepted,
        scheduled(8, 5 * S, "1"),
        completed(9, 6 * S, 8),
        task_completed(10, 7 * S),
    ]
    waits = correlate(events, []).waits
    assert [(w.kind, w.title, w.time_ns, w.end_ns) for w in waits] == [
        ("wait", "waited for update send_message", 1 * S, 4 * S),
        ("wait", "waiting for a signal or an update", 7 * S, None),
    ]
    # A run that closes in the task that found nothing to do did not wait.
    done = event(11, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, 7 * S)
    assert [w.kind for w in correlate([*events, done], []).waits] == ["wait"]


def test_calls_and_tools_know_their_agent_span_and_attempts_their_tokens() -> None:
    events = [scheduled(5, 10 * S, "1"), started(6, 20 * S, 5, attempt=2), completed(7, 21 * S, 5)]
    triage = span("ag1", "invoke_agent Triage", "agent", 1 * S, 30 * S, agent="Triage")
    billing = span("ag2", "invoke_agent Billing", "agent", 31 * S, 40 * S, agent="Billing")
    rows = [
        triage,
        billing,
        # Failed attempts cost tokens too.
        *attempt_spans("1", 1, 11 * S, error="503", tokens_in=50, tokens_out=0, agent="Triage"),
        *attempt_spans("1", 2, 20 * S, tokens_in=70, tokens_out=9, agent="Triage"),
        span("tool", "execute_tool lookup", "function", 32 * S, 33 * S, parent_span_id="ag2",
             tool="lookup"),
    ]  # fmt: skip
    story = correlate(events, rows)
    (call,) = story.model_calls
    # The model spans hang under Temporal's activity span, outside the agent's
    # subtree: the agent span running then, of the same agent name, is theirs.
    assert call.agent_span_id == "ag1"
    assert [(a.tokens_in, a.tokens_out) for a in call.attempts] == [(50, 0), (70, 9)]
    assert (call.tokens_in, call.tokens_out) == (120, 9)
    (tool,) = [i for i in story.items if i.kind == "tool"]
    assert tool.detail["agent_span_id"] == "ag2"
    assert [(a.span_id, a.agent) for a in story.agents] == [("ag1", "Triage"), ("ag2", "Billing")]


def test_reads_span_names_what_the_story_is_made_of() -> None:
    from tracing.correlation import reads_span

    assert reads_span("generation", "", "chat")
    assert reads_span("temporal", "3", "RunActivity:invoke_model_activity")
    assert reads_span("temporal", "", "HandleSignal:approve")
    assert reads_span("agent", "", "invoke_agent Triage")
    assert not reads_span("custom", "", "process batch 7")
    assert not reads_span("turn", "", "turn")
