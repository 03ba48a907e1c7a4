"""Run lineage from histories: resets (and resets of resets), chains, children."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from temporalio.api.enums.v1 import ContinueAsNewInitiator, EventType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent
from temporalio.converter import JSONPlainPayloadConverter

from dashboard.actions import reset_from
from tracing import lineage, links
from tracing.correlation import reset_point

json_plain = JSONPlainPayloadConverter()

S = 1_000_000_000


def event(event_id: int, kind: int, **attrs: Any) -> HistoryEvent:
    ts = Timestamp()
    ts.FromNanoseconds(event_id * S)
    return HistoryEvent(event_id=event_id, event_type=kind, event_time=ts, **attrs)  # type: ignore[arg-type]


def started(**attrs: Any) -> HistoryEvent:
    return event(
        1,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
        workflow_execution_started_event_attributes=attrs,
    )


def scheduled(event_id: int, activity_id: str) -> HistoryEvent:
    return event(
        event_id,
        EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
        activity_task_scheduled_event_attributes={
            "activity_id": activity_id,
            "activity_type": {"name": "invoke_model_activity"},
        },
    )


def completed(event_id: int, scheduled_id: int) -> HistoryEvent:
    return event(
        event_id,
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
        activity_task_completed_event_attributes={"scheduled_event_id": scheduled_id},
    )


def reset_marker(event_id: int, base: str) -> HistoryEvent:
    return event(
        event_id,
        EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
        workflow_task_failed_event_attributes={
            "cause": WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW,
            "base_run_id": base,
        },
    )


def test_a_reset_run_inherits_the_activities_closed_before_its_reset_point() -> None:
    events = [
        started(),
        scheduled(5, "1"),
        completed(7, 5),
        # Scheduled before the reset point but not closed there: run again, not inherited.
        scheduled(9, "2"),
        reset_marker(10, "run-1"),
        scheduled(14, "2"),
        completed(16, 14),
    ]
    found = lineage.from_history(events)
    assert found.is_reset and found.reset_from_run_id == "run-1"
    assert (found.reset_event_id, found.reset_ns) == (10, 10 * S)
    assert found.inherited_activities == ["1"]
    assert not lineage.from_history([started(), scheduled(5, "1"), completed(7, 5)]).is_reset


def test_a_reset_of_a_reset_finds_each_call_in_the_run_that_made_it() -> None:
    """run-3 was reset from run-2 before call 3; run-2 was reset from run-1 before call 2."""
    run_2 = lineage.Lineage(reset_from_run_id="run-1", inherited_activities=["1"])
    run_3 = lineage.Lineage(reset_from_run_id="run-2", inherited_activities=["1", "2"])
    chain = lineage.reset_chain("wf", "run-3", run_3, {"run-2": run_2, "run-1": lineage.Lineage()})
    assert chain == [("run-2", ["2"]), ("run-1", ["1"])]
    # A loop in the lineage (hostile or corrupt) ends.
    looped = lineage.Lineage(reset_from_run_id="run-3", inherited_activities=["1"])
    assert lineage.reset_chain("wf", "run-3", looped, {"run-3": looped}) == []


def test_chains_and_children_come_from_the_first_and_last_events() -> None:
    first = started(
        continued_execution_run_id="run-1",
        initiator=ContinueAsNewInitiator.CONTINUE_AS_NEW_INITIATOR_RETRY,
        parent_workflow_execution={"workflow_id": "parent", "run_id": "parent-run"},
    )
    child = event(
        5,
        EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED,
        child_workflow_execution_started_event_attributes={
            "workflow_execution": {"workflow_id": "kid", "run_id": "kid-run"}
        },
    )
    close = event(
        9,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
        workflow_execution_continued_as_new_event_attributes={"new_execution_run_id": "run-3"},
    )
    found = lineage.from_history([first, child, close])
    assert (found.previous_run_id, found.previous_kind) == ("run-1", "retry")
    assert (found.parent_workflow_id, found.parent_run_id) == ("parent", "parent-run")
    assert found.next_run_id == "run-3"
    assert found.children == [("kid", "kid-run")]


def test_a_reset_of_a_reset_is_reset_from_the_run_named_by_its_last_marker() -> None:
    """run-3's history copies run-2's up to the reset point, run-2's own marker included."""
    events = [
        started(),
        scheduled(5, "1"),
        completed(7, 5),
        reset_marker(10, "run-1"),  # copied from run-2: run-2 was reset from run-1
        scheduled(14, "2"),
        completed(16, 14),
        reset_marker(20, "run-2"),  # run-3's own reset
        scheduled(24, "3"),
        completed(26, 24),
    ]
    found = lineage.from_history(events)
    assert (found.reset_from_run_id, found.reset_event_id) == ("run-2", 20)
    assert found.inherited_activities == ["1", "2"]
    # The story's inherited calls and the Actions card's link read the same marker.
    assert reset_point(events) == ("run-2", 20)
    assert reset_from(events) == "run-2"
    assert reset_point(events[:3]) == ("", None) and reset_from(events[:3]) is None


def test_a_reset_runs_history_ties_only_the_activities_after_its_reset_point() -> None:
    """Activities before the reset point are copies of the base run's: their spans and
    usage are the base run's, and counting them here would count them twice."""

    def traced(event_id: int, activity_id: str) -> HistoryEvent:
        found = scheduled(event_id, activity_id)
        parent = f"00-{'ab' * 16}-{int(activity_id):016x}-01"
        payload = json_plain.to_payload({"traceparent": parent})
        assert payload is not None
        found.activity_task_scheduled_event_attributes.header.fields["_tracer-data"].CopyFrom(
            payload
        )
        return found

    base = [started(), traced(5, "1"), completed(7, 5), traced(9, "2"), completed(11, 9)]
    assert sorted(links.model_calls(links.history_links(base))) == ["1", "2"]
    reset = [*base[:3], reset_marker(10, "run-1"), traced(14, "2"), completed(16, 14)]
    found = links.history_links(reset)
    assert [(link.activity_id, link.span_id) for link in found] == [("2", f"{2:016x}")]
    assert sorted(links.model_calls(found)) == ["2"]
