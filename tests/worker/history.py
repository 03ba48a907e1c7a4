"""Reading Temporal histories in tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

MODEL_ACTIVITY = "invoke_model_activity"


@dataclass
class ActivityRecord:
    activity_id: str
    activity_type: str
    task_queue: str
    attempts: list[int] = field(default_factory=list)
    outcome: str = "pending"
    failure: str = ""


async def activities(handle: WorkflowHandle) -> list[ActivityRecord]:
    """Every activity the run scheduled, in order, with the attempts Temporal recorded."""
    history = await handle.fetch_history()
    by_event: dict[int, ActivityRecord] = {}
    ordered: list[ActivityRecord] = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            record = ActivityRecord(
                attrs.activity_id, attrs.activity_type.name, attrs.task_queue.name
            )
            by_event[event.event_id] = record
            ordered.append(record)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            by_event[started.scheduled_event_id].attempts.append(started.attempt)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = event.activity_task_completed_event_attributes
            by_event[done.scheduled_event_id].outcome = "completed"
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            failed = event.activity_task_failed_event_attributes
            by_event[failed.scheduled_event_id].outcome = "failed"
            by_event[failed.scheduled_event_id].failure = failed.failure.message
    return ordered


async def model_calls(handle: WorkflowHandle) -> list[ActivityRecord]:
    return [a for a in await activities(handle) if a.activity_type == MODEL_ACTIVITY]


async def event_types(handle: WorkflowHandle) -> list[str]:
    history = await handle.fetch_history()
    return [EventType.Name(event.event_type) for event in history.events]
