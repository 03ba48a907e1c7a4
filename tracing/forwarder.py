"""Continuous forwarding of stored spans to external collectors, and per-run exports.

Design: a cursor per collector, not an outbox. ``Span.id`` grows in commit
order (SQLite has one writer; on PostgreSQL ingest takes an advisory lock, see
tracing.store), so "everything with an id above the collector's cursor" is
exactly what it has not received yet. Ingest writes nothing extra, the span
table is the durable queue, and the cursor (``ExportCursor``) moves only once
the collector has answered: a crash re-sends at most one batch (at least once,
none lost), with the same ids, since each span is rebuilt from its row.

Each collector has one loop, in the one forwarder process that holds its
lease (``ExportCursor.lease_owner``/``lease_until``, renewed every step), so
running two forwarders never sends a batch twice in parallel and a crashed
forwarder's collectors are taken over when its lease runs out.

The loop runs in a Channels background worker: ``python manage.py
runforwarder`` (what ``make run`` starts) runs channels' ``Worker`` on the
``loomview-forwarder`` channel and starts the consumer at once; messages on
that channel (``forwarder.wake``) only cut a wait short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from channels.consumer import AsyncConsumer
from channels.worker import Worker
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from telemetry import vocab
from tracing import encode, store, transport
from tracing.exporters import Exporter, configured
from tracing.models import ExportCursor, RunExport, RunSummary, Span

logger = logging.getLogger(__name__)

FORWARDER_CHANNEL = "loomview-forwarder"
OWNER = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
IDLE_SECONDS = 0.5
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 60.0
MAX_RETRY_AFTER_SECONDS = 600.0
# A span whose Temporal ids (or workflow type, for a filtered collector) may
# still come from an ancestor that has not arrived, or from its run's history
# (the linker, dashboard.linker, reads it within a couple of seconds), waits
# this long, at most: a collector such as Phoenix keeps the first copy of a span.
HOLD_SECONDS = 5.0
HELD_ROOT_KINDS = frozenset({"trace", "agent", "temporal"})
JOB_MAX_ATTEMPTS = 5

_FIELDS = [f.attname for f in Span._meta.concrete_fields]


def lease_seconds() -> int:
    return int(settings.LOOMVIEW_FORWARDER_LEASE_SECONDS)


@dataclass
class CollectorState:
    """What one forwarder process remembers about one collector between steps."""

    exporter: Exporter
    owner: str = OWNER
    # (span id, monotonic time first seen) of the span the batch waits on.
    hold: tuple[int, float] | None = None
    job_attempts: dict[int, int] = field(default_factory=dict)


def backoff_seconds(failures: int) -> float:
    delay = min(BACKOFF_MAX_SECONDS, BACKOFF_INITIAL_SECONDS * 2 ** max(0, failures - 1))
    return delay * random.uniform(0.8, 1.2)


def read_after(span_id: int, limit: int) -> list[dict[str, Any]]:
    """The next spans after ``span_id``, in id order, as tracing.otlp rows.

    Plain SQL and json.loads: Django's per-row converters cost a fifth of the
    forwarder's time at 10,000 spans/s.
    """
    table = connection.ops.quote_name(Span._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(f) for f in _FIELDS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {columns} FROM {table} WHERE id > %s ORDER BY id LIMIT %s", [span_id, limit]
        )
        fetched = cursor.fetchall()
    data_at = _FIELDS.index("data")
    rows = []
    for values in fetched:
        row = dict(zip(_FIELDS, values, strict=True))
        data = values[data_at]
        row["data"] = json.loads(data) if isinstance(data, str | bytes) else data
        row["inherited"] = bool(row["inherited"])
        rows.append(_row(row))
    return rows


def _row(values: dict[str, Any]) -> dict[str, Any]:
    data = values.pop("data") or {}
    values["attributes"] = data.get("attributes", {})
    values["resource"] = data.get("resource", {})
    values["events"] = data.get("events", [])
    values["links"] = data.get("links", [])
    values["scope"] = data.get("scope", "")
    for key in ("scope_version", "scope_attributes"):
        if key in data:
            values[key] = data[key]
    return values


def claim(state: CollectorState) -> bool:
    """Take or renew this collector's lease; False if another forwarder holds it."""
    now = timezone.now()
    name = state.exporter.name
    ExportCursor.objects.get_or_create(collector=name)
    return bool(
        ExportCursor.objects.filter(collector=name)
        .filter(Q(lease_owner=state.owner) | Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_owner=state.owner, lease_until=now + timedelta(seconds=lease_seconds()))
    )


def release(owner: str = OWNER) -> None:
    """Give up this process's leases (on a clean stop), so a new forwarder starts at once."""
    ExportCursor.objects.filter(lease_owner=owner).update(lease_owner="", lease_until=None)


def _workflow_types(rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    keys = {(r["workflow_id"], r["run_id"]) for r in rows if r["workflow_id"]}
    if not keys:
        return {}
    found = RunSummary.objects.filter(workflow_id__in={w for w, _ in keys}).exclude(
        workflow_type=""
    )
    return {
        (s.workflow_id, s.run_id): s.workflow_type
        for s in found.only("workflow_id", "run_id", "workflow_type")
        if (s.workflow_id, s.run_id) in keys
    }


def _select(
    state: CollectorState, rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """Split a batch into (to send, to skip, wait): ``wait`` > 0 when nothing may go yet.

    A span without Temporal ids may still be adopted by an ancestor in a later
    export, or tied through its run's history (the plugin's own OTel mode); a
    filtered collector needs the span's workflow type, which for stock
    instrumentation comes from the run's summary. The batch stops before the
    first such span until it has waited HOLD_SECONDS, then goes whole.
    """
    wanted = state.exporter.workflow_types
    types = _workflow_types(rows) if wanted else {}

    def workflow_type(row: dict[str, Any]) -> str:
        own = row["attributes"].get(vocab.WORKFLOW_TYPE)
        return str(own) if own else types.get((row["workflow_id"], row["run_id"]), "")

    def undecided(row: dict[str, Any]) -> bool:
        if not row["workflow_id"]:
            # A root goes at once, unless it is an agent trace's root (the history may
            # still tie it: the plugin's own OTel mode puts no ids on any span).
            return bool(row["parent_span_id"]) or row["kind"] in HELD_ROOT_KINDS
        return bool(wanted) and not workflow_type(row)

    cut = next((i for i, row in enumerate(rows) if undecided(row)), None)
    if cut is not None:
        span_id, since = state.hold if state.hold else (0, 0.0)
        if span_id != rows[cut]["id"]:
            span_id, since = rows[cut]["id"], time.monotonic()
            state.hold = (span_id, since)
        waited = time.monotonic() - since
        if waited < HOLD_SECONDS:
            if cut == 0:
                return [], [], HOLD_SECONDS - waited
            rows = rows[:cut]
        else:
            state.hold = None
    if not wanted:
        return rows, [], 0.0
    send = [r for r in rows if workflow_type(r) in wanted]
    skip = [r for r in rows if workflow_type(r) not in wanted]
    return send, skip, 0.0


def _fail(name: str, owner: str, outcome: transport.Outcome, failures: int) -> float:
    """Record a retryable failure; returns the wait before the next attempt."""
    delay = backoff_seconds(failures)
    if outcome.retry_after is not None:
        delay = min(MAX_RETRY_AFTER_SECONDS, max(outcome.retry_after, 0.0))
    now = timezone.now()
    ExportCursor.objects.filter(collector=name, lease_owner=owner).update(
        failures=failures,
        retry_at=now + timedelta(seconds=delay),
        last_error=outcome.error,
        last_error_at=now,
    )
    logger.warning("collector %s: %s; retry %d in %.1f s", name, outcome.error, failures, delay)
    return delay


def forward_batch(state: CollectorState, cursor: ExportCursor) -> float:
    """Send the next batch after the cursor; returns how long to wait before the next."""
    exporter = state.exporter
    rows = read_after(cursor.last_span_id, exporter.batch_size)
    if not rows:
        state.hold = None
        return IDLE_SECONDS
    send, skip, wait = _select(state, rows)
    if wait:
        return min(wait, IDLE_SECONDS)
    last_id = max(r["id"] for r in (*send, *skip))
    outcome = (
        transport.send(exporter, encode.request_from_rows(send, exporter.project)) if send else None
    )
    now = timezone.now()
    mine = ExportCursor.objects.filter(collector=exporter.name, lease_owner=state.owner)
    if outcome is None or outcome.ok:
        dropped = outcome.dropped if outcome else 0
        changes: dict[str, Any] = {
            "last_span_id": last_id,
            "delivered": F("delivered") + len(send) - dropped,
            "rejected": F("rejected") + dropped,
            "skipped": F("skipped") + len(skip),
            "failures": 0,
            "retry_at": None,
        }
        if send:
            changes["last_success_at"] = now
        if outcome and outcome.error:
            changes.update(last_error=outcome.error, last_error_at=now)
        mine.update(**changes)
        return 0.0 if len(rows) >= exporter.batch_size else IDLE_SECONDS
    if not outcome.retryable:
        # The collector refuses these spans for good: count them and move on,
        # so one bad batch cannot stop the stream.
        mine.update(
            last_span_id=last_id,
            rejected=F("rejected") + len(send),
            skipped=F("skipped") + len(skip),
            failures=0,
            retry_at=None,
            last_error=f"rejected {len(send)} span(s): {outcome.error}",
            last_error_at=now,
        )
        logger.warning(
            "collector %s rejected %d span(s): %s", exporter.name, len(send), outcome.error
        )
        return 0.0
    return _fail(exporter.name, state.owner, outcome, cursor.failures + 1)


def run_job(state: CollectorState) -> bool:
    """Advance the oldest per-run export to this collector by one batch; False if none."""
    exporter = state.exporter
    job = (
        RunExport.objects.filter(
            collector=exporter.name, status__in=[RunExport.PENDING, RunExport.RUNNING]
        )
        .order_by("id")
        .first()
    )
    if job is None:
        return False
    rows = store.spans_for_run(job.workflow_id, job.run_id)
    if job.status == RunExport.PENDING:
        job.status, job.total, job.sent = RunExport.RUNNING, len(rows), 0
    batch = rows[job.sent : job.sent + exporter.batch_size]
    if batch:
        outcome = transport.send(exporter, encode.request_from_rows(batch, exporter.project))
        if outcome.ok:
            job.sent += len(batch)
            job.error = outcome.error
            state.job_attempts.pop(job.id, None)
        else:
            attempts = state.job_attempts.get(job.id, 0) + 1
            state.job_attempts[job.id] = attempts
            job.error = outcome.error
            if not outcome.retryable or attempts >= JOB_MAX_ATTEMPTS:
                job.status = RunExport.FAILED
                state.job_attempts.pop(job.id, None)
            else:
                time.sleep(min(backoff_seconds(attempts), 5.0))
    if job.status == RunExport.RUNNING and job.sent >= len(rows):
        job.status, job.total = RunExport.DONE, len(rows)
    job.save()
    return True


def step(state: CollectorState) -> float:
    """One round for one collector: lease, a per-run export batch, a forwarding batch."""
    if not claim(state):
        state.hold = None
        return float(lease_seconds()) / 2
    cursor = ExportCursor.objects.get(collector=state.exporter.name)
    if cursor.retry_at is not None and cursor.retry_at > timezone.now():
        remaining = (cursor.retry_at - timezone.now()).total_seconds()
        return min(remaining, lease_seconds() / 3)
    busy = run_job(state)
    wait = forward_batch(state, cursor)
    # Come back within a third of the lease even during a long backoff (up to
    # a minute, or a Retry-After of ten): each step renews the lease, so the
    # collector never shows "no forwarder" and no other forwarder takes it over.
    return 0.0 if busy else min(wait, lease_seconds() / 3)


@dataclass
class CollectorStats:
    exporter: Exporter
    delivered: int
    rejected: int
    skipped: int
    pending: int
    lag_seconds: float | None
    last_error: str
    last_error_at: datetime | None
    last_success_at: datetime | None
    retry_at: datetime | None
    failures: int
    forwarder: str
    running: bool

    @property
    def state(self) -> str:
        if not self.running:
            return "no forwarder"
        if self.failures:
            return "retrying"
        return "backlog" if self.pending else "up to date"


def stats(exporter: Exporter) -> CollectorStats:
    cursor = ExportCursor.objects.filter(collector=exporter.name).first() or ExportCursor(
        collector=exporter.name
    )
    pending_spans = Span.objects.filter(id__gt=cursor.last_span_id)
    pending = pending_spans.count()
    oldest = pending_spans.order_by("id").values_list("end_ns", flat=True).first()
    lag = None if oldest is None else max(0.0, time.time() - oldest / 1e9)
    now = timezone.now()
    running = cursor.lease_until is not None and cursor.lease_until > now
    return CollectorStats(
        exporter=exporter,
        delivered=cursor.delivered,
        rejected=cursor.rejected,
        skipped=cursor.skipped,
        pending=pending,
        lag_seconds=lag,
        last_error=cursor.last_error,
        last_error_at=cursor.last_error_at,
        last_success_at=cursor.last_success_at,
        retry_at=cursor.retry_at if cursor.retry_at and cursor.retry_at > now else None,
        failures=cursor.failures,
        forwarder=cursor.lease_owner if running else "",
        running=running,
    )


class ForwarderConsumer(AsyncConsumer):
    """One asyncio task per configured collector, for the life of the worker."""

    tasks: dict[str, asyncio.Task[None]]
    wake: asyncio.Event

    async def forwarder_start(self, message: dict[str, Any]) -> None:
        if getattr(self, "tasks", None) is not None:
            return
        self.tasks = {}
        self.wake = asyncio.Event()
        exporters = configured()
        if not exporters:
            logger.info("no collectors configured (LOOMVIEW_EXPORTERS); forwarder idle")
        for exporter in exporters:
            logger.info(
                "forwarding to %s (%s %s, headers %s)",
                exporter.name,
                exporter.protocol,
                exporter.display_endpoint,
                sorted(exporter.masked_headers) or "none",
            )
            self.tasks[exporter.name] = asyncio.create_task(self._serve(exporter))

    async def forwarder_wake(self, message: dict[str, Any]) -> None:
        await self.forwarder_start(message)
        self.wake.set()

    async def _serve(self, exporter: Exporter) -> None:
        state = CollectorState(exporter)
        run_step = sync_to_async(step, thread_sensitive=False)
        while True:
            try:
                delay = await run_step(state)
            except DatabaseError:
                logger.warning(
                    "collector %s: database error; retrying", exporter.name, exc_info=True
                )
                delay = 1.0
            except Exception:
                logger.exception("collector %s: forwarder step failed", exporter.name)
                delay = 5.0
            if delay > 0:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), delay)


class ForwarderWorker(Worker):
    """channels' Worker that starts the consumer at once instead of on a first message."""

    async def handle(self) -> None:
        for channel in self.channels:
            queue = self.get_or_create_application_instance(
                channel, {"type": "channel", "channel": channel}
            )
            await queue.put({"type": "forwarder.start"})
        await super().handle()


async def wake() -> None:
    """Nudge the forwarder (reaches it through a shared channel layer such as Redis)."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    with contextlib.suppress(Exception):
        await layer.send(FORWARDER_CHANNEL, {"type": "forwarder.wake"})


def enqueue_run_export(workflow_id: str, run_id: str, collector: str) -> RunExport:
    with transaction.atomic():
        return RunExport.objects.create(workflow_id=workflow_id, run_id=run_id, collector=collector)
