"""The run page's trace-health panel: tracing.health's report for one run, kept.

``load`` reads what the report needs from the store (with the run page's other
reads), ``build`` makes the report without touching the database, and
``keep`` writes back what only the page can see (model attempts no span
covers, spans no event explains, the history's close time) so the runs list
flags the run as its page does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from telemetry import vocab
from tracing import health, store
from tracing.correlation import RunStory

_SCHEDULED = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED


@dataclass
class Facts:
    store: health.StoreFacts = field(default_factory=health.StoreFacts)
    # When the run has no spans of its own: spans of the workflow elsewhere.
    elsewhere: dict[str, int] = field(default_factory=dict)


@dataclass
class RunHealth:
    report: health.Health
    elsewhere: dict[str, int] = field(default_factory=dict)
    # The history's close time, for keep().
    close_ns: int | None = None
    has_summary: bool = False

    def as_json(self) -> dict[str, Any]:
        return {**self.report.as_json(), "spans_elsewhere": self.elsewhere or None}


def load(workflow_id: str, run_id: str, spans: Sequence[dict[str, Any]]) -> Facts:
    facts = Facts(store=health.store_facts(spans, workflow_id, run_id))
    if not spans:
        found = store.spans_mentioning(workflow_id, run_id)
        facts.elsewhere = {k: v for k, v in found.items() if v}
    return facts


def build(
    spans: Sequence[dict[str, Any]],
    story: RunStory,
    events: Sequence[HistoryEvent],
    facts: Facts,
    close_ns: int | None,
) -> RunHealth:
    activity_ids = None
    if events:
        activity_ids = {
            e.activity_task_scheduled_event_attributes.activity_id
            for e in events
            if e.event_type == _SCHEDULED
        }
    stopped = bool(events) and events[-1].event_type in vocab.WORKFLOW_STOPPED_EVENT_TYPES
    report = health.report(spans, story, facts.store, activity_ids, stopped)
    return RunHealth(report, facts.elsewhere, close_ns, facts.store.has_summary)


def keep(workflow_id: str, run_id: str, run_health: RunHealth) -> None:
    if run_health.has_summary:
        health.record_from_page(workflow_id, run_id, run_health.report, run_health.close_ns)
