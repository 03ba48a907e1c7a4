"""The run page's trace-health panel: tracing.health's report for one run, kept.

What only the history shows (model attempts no span covers, spans no event
explains, spans waiting for an ancestor) is written back to the run's summary,
so the runs list flags the run as the page does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from tracing import health, store
from tracing.correlation import RunStory
from tracing.models import RunSummary

_SCHEDULED = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED


@dataclass
class RunHealth:
    report: health.Health
    # When the run has no spans of its own: spans of the workflow elsewhere.
    elsewhere: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {**self.report.as_json(), "spans_elsewhere": self.elsewhere or None}


def build(
    workflow_id: str,
    run_id: str,
    spans: Sequence[dict[str, Any]],
    story: RunStory,
    events: Sequence[HistoryEvent],
    close_ns: int | None,
) -> RunHealth:
    summary = RunSummary.objects.filter(workflow_id=workflow_id, run_id=run_id).first()
    activity_ids = None
    if events:
        activity_ids = {
            e.activity_task_scheduled_event_attributes.activity_id
            for e in events
            if e.event_type == _SCHEDULED
        }
    report = health.report(spans, story, summary, activity_ids)
    if summary is not None:
        health.record_from_page(workflow_id, run_id, report, close_ns)
    elsewhere = {} if spans else store.spans_mentioning(workflow_id, run_id)
    return RunHealth(report, {k: v for k, v in elsewhere.items() if v})
