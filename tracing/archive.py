"""Closed runs' Temporal histories kept next to their spans (``ArchivedHistory``).

Only closed histories are stored (a closed history never changes again), as a
zlib-compressed ``temporal.api.history.v1.History`` protobuf: a 500-call run's
history of ~5,000 events is ~1.5 MB of protobuf and ~200 kB stored. Who
archives what is dashboard/archive.py; this module only reads and writes.
"""

from __future__ import annotations

import zlib

from django.db import IntegrityError, transaction
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History

from telemetry import vocab
from tracing.models import ArchivedHistory


def is_closed(history: History) -> bool:
    events = history.events
    return bool(events) and events[-1].event_type in vocab.WORKFLOW_CLOSE_EVENT_TYPES


def save(workflow_id: str, run_id: str, history: History) -> bool:
    """Archive a closed run's history; False if it is not closed or already archived."""
    if not is_closed(history):
        return False
    if ArchivedHistory.objects.filter(workflow_id=workflow_id, run_id=run_id).exists():
        return False
    raw = history.SerializeToString()
    last = history.events[-1]
    try:
        with transaction.atomic():
            ArchivedHistory.objects.create(
                workflow_id=workflow_id,
                run_id=run_id,
                history=zlib.compress(raw, 6),
                event_count=len(history.events),
                size_bytes=len(raw),
                close_event=EventType.Name(last.event_type).removeprefix("EVENT_TYPE_"),
                closed_ns=last.event_time.ToNanoseconds() if last.HasField("event_time") else None,
            )
    except IntegrityError:
        # Another process archived it first.
        return False
    return True


def load(workflow_id: str, run_id: str) -> History | None:
    """The archived history of a run, or None."""
    blob = (
        ArchivedHistory.objects.filter(workflow_id=workflow_id, run_id=run_id)
        .values_list("history", flat=True)
        .first()
    )
    if blob is None:
        return None
    return History.FromString(zlib.decompress(bytes(blob)))


def archived_keys(keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these runs are archived already."""
    if not keys:
        return set()
    found = ArchivedHistory.objects.filter(
        workflow_id__in={w for w, _ in keys}, run_id__in={r for _, r in keys}
    ).values_list("workflow_id", "run_id")
    return {k for k in found if k in keys}
