"""Retention: delete what is older than ``LOOMVIEW_RETENTION_DAYS``, a small batch at a time.

Run in the background by the ``runforwarder`` worker (dashboard/maintenance.py)
and by hand with ``python manage.py prune``. Each batch is one short
transaction taken like an ingest (``store._writer``: SQLite's writer queue,
PostgreSQL's span-writer lock), deleting at most ``BATCH`` rows found through
an index, with a pause between batches: ingest waits for one batch at most,
a few milliseconds, never for a whole run or table.

What goes, as an explicit list (a table added later registers here):

- **Runs** whose last span ended before the cutoff: their spans first, then
  every row of ``RUN_TABLES`` for the run (keyed by ``workflow_id``/``run_id``;
  the run summary last, so an interrupted round finds the run again).
- **Stray spans** that belong to no run (no Temporal ids, or no run id) and
  ended before the cutoff, through the partial index ``span_strays``.
- **Aged rows** of ``AGED_TABLES``: each row by its own time column (finished
  per-run exports, spans of no run still waiting for their parent).

The overview's rollups are not aged: each run leaves them (``rollups.forget``)
in the batch that deletes its summary, so they always equal a recount of the
runs kept.
- **The audit log**, under its own and usually longer ``LOOMVIEW_AUDIT_RETENTION_DAYS``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from tracing import rollups, store

logger = logging.getLogger(__name__)

# Rows per delete; each batch is one transaction.
BATCH = 200
# Between batches, so ingest (and readers) get the database.
PAUSE_SECONDS = 0.02
# Old runs looked up at a time.
RUNS_PER_ROUND = 50


@dataclass(frozen=True)
class AgedTable:
    """Rows of ``model`` older than the cutoff by ``column`` (nanoseconds or a datetime)."""

    label: str
    model: str  # "app_label.ModelName", resolved when pruning
    column: str
    nanoseconds: bool
    only: Q = field(default_factory=Q)
    # The setting that holds this table's retention in days (0: keep forever).
    days_setting: str = "LOOMVIEW_RETENTION_DAYS"


# Per-run tables deleted with a run's spans, in this order (the summary last).
RUN_TABLES: list[str] = [
    "tracing.ArchivedHistory",
    "tracing.TraceLink",
    "tracing.RunExport",
    "tracing.RunLineage",
    "tracing.MissingParent",
    "tracing.RunSummary",
]

AGED_TABLES: list[AgedTable] = [
    AgedTable(
        "exports",
        "tracing.RunExport",
        "updated_at",
        nanoseconds=False,
        only=Q(status__in=["done", "failed"]),
    ),
    # Spans of no run still waiting for their parent (a run's own go with the run).
    AgedTable("missing_parents", "tracing.MissingParent", "received_ns", nanoseconds=True),
    AgedTable(
        "audit_entries",
        "dashboard.AuditEntry",
        "created",
        nanoseconds=False,
        days_setting="LOOMVIEW_AUDIT_RETENTION_DAYS",
    ),
]


def register_run_table(model: str, *, before_summary: bool = True) -> None:
    """Delete rows of ``model`` (with ``workflow_id`` and ``run_id``) with their run."""
    if model not in RUN_TABLES:
        RUN_TABLES.insert(len(RUN_TABLES) - 1 if before_summary else len(RUN_TABLES), model)


def register_aged_table(table: AgedTable) -> None:
    if table not in AGED_TABLES:
        AGED_TABLES.append(table)


@dataclass
class PruneResult:
    cutoff: datetime | None
    deleted: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    # The longest a batch held the database, in seconds.
    longest_batch: float = 0.0

    def count(self, label: str, n: int) -> None:
        if n:
            self.deleted[label] = self.deleted.get(label, 0) + n

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def days(setting: str = "LOOMVIEW_RETENTION_DAYS") -> int:
    return int(getattr(settings, setting, 0) or 0)


def _model(label: str) -> type[models.Model]:
    return apps.get_model(label)


class _Batcher:
    def __init__(self, result: PruneResult, pause: float, should_stop: Callable[[], bool]) -> None:
        self.result = result
        self.pause = pause
        self.should_stop = should_stop

    def run(self, work: Callable[[], int]) -> int:
        """One batch in its own short write transaction; returns rows deleted."""
        with store._writer():
            # From when this batch has the database (not while it queues behind an ingest).
            started = time.monotonic()
            deleted = work()
            held = time.monotonic() - started
        self.result.batches += 1
        self.result.longest_batch = max(self.result.longest_batch, held)
        if self.pause:
            time.sleep(self.pause)
        return deleted

    def drain(self, label: str, queryset: Callable[[], models.QuerySet[Any]]) -> None:
        """Delete what queryset() selects, BATCH rows at a time, until none are left."""

        def batch() -> int:
            qs = queryset()
            ids = list(qs.values_list("pk", flat=True)[:BATCH])
            if not ids:
                return 0
            deleted, _ = qs.model._base_manager.filter(pk__in=ids).delete()
            return deleted

        while not self.should_stop():
            deleted = self.run(batch)
            self.result.count(label, deleted)
            if deleted < BATCH:
                return


def prune(
    now: datetime | None = None,
    *,
    pause: float = PAUSE_SECONDS,
    should_stop: Callable[[], bool] = lambda: False,
) -> PruneResult:
    """Delete everything past its retention; a no-op when retention is off."""
    now = now or timezone.now()
    span_days = days()
    result = PruneResult(cutoff=now - timedelta(days=span_days) if span_days else None)
    batcher = _Batcher(result, pause, should_stop)
    if result.cutoff is not None:
        _prune_runs(int(result.cutoff.timestamp() * 1e9), batcher)
    for table in AGED_TABLES:
        table_days = days(table.days_setting)
        if not table_days or should_stop():
            continue
        cutoff = now - timedelta(days=table_days)
        limit: Any = int(cutoff.timestamp() * 1e9) if table.nanoseconds else cutoff
        model = _model(table.model)
        batcher.drain(
            table.label,
            lambda model=model, table=table, limit=limit: model._base_manager.filter(  # type: ignore[misc]
                table.only, **{f"{table.column}__lt": limit}
            ),
        )
    if result.total:
        logger.info("retention deleted %s", result.deleted)
    return result


def _prune_runs(cutoff_ns: int, batcher: _Batcher) -> None:
    from tracing.models import RunSummary, Span

    while not batcher.should_stop():
        old = list(
            RunSummary.objects.filter(last_span_ns__lt=cutoff_ns)
            .order_by("last_span_ns")
            .values_list("workflow_id", "run_id")[:RUNS_PER_ROUND]
        )
        if not old:
            break
        for workflow_id, run_id in old:
            if batcher.should_stop():
                return
            batcher.drain(
                "spans",
                lambda w=workflow_id, r=run_id: Span.objects.filter(workflow_id=w, run_id=r),  # type: ignore[misc]
            )

            def rest(w: str = workflow_id, r: str = run_id) -> int:
                # The run leaves the overview's rollups in the batch that deletes
                # its summary: they always count the runs the store has.
                total = rollups.forget([(w, r)])
                batcher.result.count("run rollup states", total)
                for label in RUN_TABLES:
                    model = _model(label)
                    deleted, _ = model._base_manager.filter(workflow_id=w, run_id=r).delete()
                    if label == "tracing.RunSummary":
                        batcher.result.count("runs", deleted)
                    else:
                        batcher.result.count(str(model._meta.verbose_name_plural), deleted)
                    total += deleted
                return total

            batcher.run(rest)
    batcher.drain(
        "spans",
        lambda: Span.objects.filter(Q(workflow_id="") | Q(run_id=""), end_ns__lt=cutoff_ns),
    )
