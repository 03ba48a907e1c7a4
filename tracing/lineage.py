"""How runs relate through Temporal's operations: resets, continue-as-new, retries, children.

``from_history`` reads it from one run's history (pure); ``record`` keeps it in
``RunLineage`` so that the runs list and the run page can use it without
reading histories again; ``record_from_spans`` learns what the bundled
worker's root spans say (parent, previous run) at ingest.

A reset run's history starts with a copy of its base run's history up to the
reset point, then a ``WorkflowTaskFailed`` event with cause
``RESET_WORKFLOW`` that names the base run. Activities that closed before that
event are the base run's: their spans are stored under the base run (or, if
the base was itself reset, under its base), and the new run inherits them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from temporalio.api.enums.v1 import ContinueAsNewInitiator, EventType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent

from telemetry import vocab
from tracing.models import RunLineage

RunKey = tuple[str, str]

_RESET_CAUSE = WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW
_SCHEDULED = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
_INITIATORS = {
    ContinueAsNewInitiator.CONTINUE_AS_NEW_INITIATOR_WORKFLOW: "continued_as_new",
    ContinueAsNewInitiator.CONTINUE_AS_NEW_INITIATOR_RETRY: "retry",
    ContinueAsNewInitiator.CONTINUE_AS_NEW_INITIATOR_CRON_SCHEDULE: "cron_schedule",
}
# Close events that name the run that follows (continue-as-new, a retry, cron).
_NEXT_RUN_FIELDS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: (
        "workflow_execution_continued_as_new_event_attributes"
    ),
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: (
        "workflow_execution_completed_event_attributes"
    ),
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "workflow_execution_failed_event_attributes",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: (
        "workflow_execution_timed_out_event_attributes"
    ),
}
# How far a chain of resets (a reset of a reset ...) is followed for inherited spans.
MAX_RESET_DEPTH = 16


@dataclass
class Lineage:
    parent_workflow_id: str = ""
    parent_run_id: str = ""
    previous_run_id: str = ""
    previous_kind: str = ""
    next_run_id: str = ""
    reset_from_run_id: str = ""
    reset_event_id: int | None = None
    reset_ns: int | None = None
    inherited_activities: list[str] = field(default_factory=list)
    children: list[RunKey] = field(default_factory=list)

    @property
    def is_reset(self) -> bool:
        return bool(self.reset_from_run_id)


def _ns(event: HistoryEvent) -> int:
    return int(event.event_time.ToNanoseconds())


def from_history(events: Sequence[HistoryEvent]) -> Lineage:
    """Everything one run's history says about the runs around it."""
    lineage = Lineage()
    if not events:
        return lineage
    first = events[0]
    if first.HasField("workflow_execution_started_event_attributes"):
        started = first.workflow_execution_started_event_attributes
        if started.HasField("parent_workflow_execution"):
            lineage.parent_workflow_id = started.parent_workflow_execution.workflow_id
            lineage.parent_run_id = started.parent_workflow_execution.run_id
        if started.continued_execution_run_id:
            lineage.previous_run_id = started.continued_execution_run_id
            lineage.previous_kind = _INITIATORS.get(started.initiator, "continued_as_new")
    closed_before: dict[int, int] = {}
    scheduled: dict[int, str] = {}
    for event in events:
        kind = event.event_type
        if kind == _SCHEDULED:
            scheduled[event.event_id] = event.activity_task_scheduled_event_attributes.activity_id
        elif kind in vocab.ACTIVITY_CLOSE_OUTCOMES:
            attrs = getattr(event, event.WhichOneof("attributes") or "", None)
            scheduled_id = getattr(attrs, "scheduled_event_id", 0)
            closed_before.setdefault(scheduled_id, event.event_id)
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            # The last marker is this run's reset; earlier ones were copied from its base
            # (a reset of a reset), whose own lineage names them.
            failed = event.workflow_task_failed_event_attributes
            if failed.cause == _RESET_CAUSE and failed.base_run_id:
                lineage.reset_from_run_id = failed.base_run_id
                lineage.reset_event_id = event.event_id
                lineage.reset_ns = _ns(event)
                lineage.inherited_activities = [
                    activity_id
                    for event_id, activity_id in scheduled.items()
                    if closed_before.get(event_id, event.event_id + 1) < event.event_id
                ]
        elif kind == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            child = event.child_workflow_execution_started_event_attributes.workflow_execution
            lineage.children.append((child.workflow_id, child.run_id))
    close_field = _NEXT_RUN_FIELDS.get(events[-1].event_type)
    if close_field:
        lineage.next_run_id = getattr(events[-1], close_field).new_execution_run_id
    return lineage


_FIELDS = (
    "parent_workflow_id",
    "parent_run_id",
    "previous_run_id",
    "previous_kind",
    "next_run_id",
    "reset_from_run_id",
    "reset_event_id",
    "reset_ns",
    "inherited_activities",
)


def record(workflow_id: str, run_id: str, lineage: Lineage) -> RunLineage:
    """Keep what a run's history says; writes only when something changed."""
    values: dict[str, Any] = {name: getattr(lineage, name) for name in _FIELDS}
    row, created = RunLineage.objects.get_or_create(
        workflow_id=workflow_id, run_id=run_id, defaults={**values, "history_read": True}
    )
    if created:
        _record_children(workflow_id, run_id, lineage.children)
        return row
    changed = [name for name, value in values.items() if value and getattr(row, name) != value]
    if changed or not row.history_read:
        for name in changed:
            setattr(row, name, values[name])
        row.history_read = True
        row.save(update_fields=[*changed, "history_read", "updated_at"])
    _record_children(workflow_id, run_id, lineage.children)
    return row


def _record_children(workflow_id: str, run_id: str, children: Iterable[RunKey]) -> None:
    for child_workflow_id, child_run_id in children:
        if not child_run_id:
            continue
        RunLineage.objects.update_or_create(
            workflow_id=child_workflow_id,
            run_id=child_run_id,
            defaults={"parent_workflow_id": workflow_id, "parent_run_id": run_id},
        )


def for_runs(keys: Iterable[RunKey]) -> dict[RunKey, RunLineage]:
    wanted = set(keys)
    if not wanted:
        return {}
    rows = RunLineage.objects.filter(
        workflow_id__in={w for w, _ in wanted}, run_id__in={r for _, r in wanted}
    )
    return {(r.workflow_id, r.run_id): r for r in rows if (r.workflow_id, r.run_id) in wanted}


def reset_to(workflow_id: str, run_id: str) -> list[str]:
    """Runs that were reset from this one, oldest first."""
    return list(
        RunLineage.objects.filter(workflow_id=workflow_id, reset_from_run_id=run_id)
        .order_by("reset_ns")
        .values_list("run_id", flat=True)
    )


def children_of(keys: Iterable[RunKey]) -> dict[RunKey, list[RunKey]]:
    """The child runs Loomview knows of, per parent run."""
    wanted = set(keys)
    if not wanted:
        return {}
    found: dict[RunKey, list[RunKey]] = {}
    rows = RunLineage.objects.filter(
        parent_workflow_id__in={w for w, _ in wanted}, parent_run_id__in={r for _, r in wanted}
    ).values_list("parent_workflow_id", "parent_run_id", "workflow_id", "run_id")
    for parent_workflow_id, parent_run_id, workflow_id, run_id in rows:
        parent = (parent_workflow_id, parent_run_id)
        if parent in wanted:
            found.setdefault(parent, []).append((workflow_id, run_id))
    return found


def record_from_spans(rows: Iterable[dict[str, Any]]) -> None:
    """What the bundled worker's spans say about a run's parent and previous run.

    Only the few spans that carry these attributes (a run's root spans) cost a
    write; the history, when read, has the last word.
    """
    facts: dict[RunKey, dict[str, str]] = {}
    for row in rows:
        attrs = row.get("attributes") or {}
        parent_run = attrs.get(vocab.PARENT_RUN_ID)
        previous = attrs.get(vocab.CONTINUED_RUN_ID)
        if not (parent_run or previous) or not (row["workflow_id"] and row["run_id"]):
            continue
        found = facts.setdefault((row["workflow_id"], row["run_id"]), {})
        if parent_run:
            found["parent_workflow_id"] = str(attrs.get(vocab.PARENT_WORKFLOW_ID, ""))[:1000]
            found["parent_run_id"] = str(parent_run)[:255]
        if previous:
            found["previous_run_id"] = str(previous)[:255]
    for (workflow_id, run_id), values in facts.items():
        stored, created = RunLineage.objects.get_or_create(
            workflow_id=workflow_id, run_id=run_id, defaults=values
        )
        if created or stored.history_read:
            continue
        changed = [name for name, value in values.items() if getattr(stored, name) != value]
        if changed:
            for name in changed:
                setattr(stored, name, values[name])
            stored.save(update_fields=[*changed, "updated_at"])


def reset_chain(
    workflow_id: str, run_id: str, lineage: Lineage, base_lineage: dict[str, Lineage]
) -> list[tuple[str, list[str]]]:
    """Where a reset run's inherited activities' spans are: [(run id, activity ids)].

    ``base_lineage`` maps the run ids of earlier runs to their lineage (from
    their histories); an activity a base run itself inherited is looked for in
    that run's base, and so on, at most MAX_RESET_DEPTH runs back.
    """
    chain: list[tuple[str, list[str]]] = []
    wanted = list(lineage.inherited_activities)
    base = lineage.reset_from_run_id
    seen = {run_id}
    while wanted and base and base not in seen and len(chain) < MAX_RESET_DEPTH:
        seen.add(base)
        inherited_by_base = set()
        known = base_lineage.get(base)
        if known is not None and known.is_reset:
            inherited_by_base = set(known.inherited_activities) & set(wanted)
        own = [a for a in wanted if a not in inherited_by_base]
        if own:
            chain.append((base, own))
        wanted = [a for a in wanted if a in inherited_by_base]
        base = known.reset_from_run_id if known is not None else ""
    return chain
