"""The span store: one row per OTel span, and one summary row per Temporal run.

The columns are what pages filter, join and sort on (correlation keys, kind,
times); everything else a span carries (attributes, events, links, resource)
is kept whole in ``data``. Times are integer nanoseconds since the epoch, as
OTLP sends them, so nothing is lost to datetime rounding.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import models
from django.db.models import Q


def ns_to_datetime(ns: int | None) -> datetime | None:
    return None if ns is None else datetime.fromtimestamp(ns / 1e9, tz=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def datetime_to_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch, exactly: a float timestamp would lose the
    microseconds that tell runs started in the same second apart."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


class StoredJSONField(models.JSONField):
    """A JSONField whose values only the store writes (serialized by orjson: always valid).

    On SQLite, Django's JSONField adds ``CHECK (JSON_VALID(column))``, which parses
    every value again on each write: about 7 µs for a span's 2.8 KB of data, a
    fifth of storing it (bench/README.md). PostgreSQL's jsonb has no such check.
    """

    def db_check(self, connection: Any) -> str | None:
        return None


class Span(models.Model):
    trace_id = models.CharField(max_length=32)
    span_id = models.CharField(max_length=16)
    parent_span_id = models.CharField(max_length=16, blank=True, default="")
    name = models.TextField()
    # Normalized: agent, generation, response, function, handoff, guardrail,
    # custom, trace, mcp_tools, temporal or other.
    kind = models.CharField(max_length=16)
    # OTLP SpanKind (internal, server, client, ...).
    span_kind = models.SmallIntegerField(default=0)
    workflow_id = models.CharField(max_length=1000, blank=True, default="")
    run_id = models.CharField(max_length=255, blank=True, default="")
    activity_id = models.CharField(max_length=255, blank=True, default="")
    attempt = models.PositiveIntegerField(null=True, blank=True)
    # True when the Temporal ids came from an ancestor span, not the span itself.
    inherited = models.BooleanField(default=False)
    model = models.CharField(max_length=255, blank=True, default="")
    agent = models.CharField(max_length=255, blank=True, default="")
    tool = models.CharField(max_length=255, blank=True, default="")
    tokens_in = models.IntegerField(null=True, blank=True)
    tokens_out = models.IntegerField(null=True, blank=True)
    # OTLP StatusCode: 0 unset, 1 ok, 2 error.
    status_code = models.SmallIntegerField(default=0)
    status_message = models.TextField(blank=True, default="")
    start_ns = models.BigIntegerField()
    end_ns = models.BigIntegerField()
    duration_ns = models.BigIntegerField()
    service_name = models.CharField(max_length=255, blank=True, default="")
    # {"attributes", "events", "links", "resource", "scope"}
    data = StoredJSONField(default=dict)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["trace_id", "span_id"], name="span_trace_span_uniq")
        ]
        indexes = [
            models.Index(fields=["workflow_id", "run_id", "start_ns"], name="span_run_start"),
            # Spans still waiting for an ancestor that carries Temporal ids, or
            # for their run id; small, so adopting them when that ancestor
            # arrives stays cheap, and retention finds the old ones without a
            # scan (runs' spans go with their run, see tracing/retention.py).
            models.Index(
                fields=["trace_id"],
                condition=Q(workflow_id="") | Q(run_id=""),
                name="span_strays",
            ),
            # Spans whose run is not known yet, recent first: what the linker ties.
            models.Index(fields=["end_ns"], condition=Q(run_id=""), name="span_untied"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.span_id})"

    @property
    def start(self) -> datetime | None:
        return ns_to_datetime(self.start_ns)

    @property
    def end(self) -> datetime | None:
        return ns_to_datetime(self.end_ns)


class TsVectorField(models.Field):
    """PostgreSQL's ``tsvector`` (text elsewhere, where nothing fills it)."""

    def db_type(self, connection: Any) -> str:
        return "tsvector" if connection.vendor == "postgresql" else "text"


class SpanWords(models.Model):
    """A span's words for search on PostgreSQL (tracing/search.py; GIN index and
    ON DELETE CASCADE from migration 0011). SQLite has its FTS5 table instead."""

    span = models.OneToOneField(
        Span, primary_key=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    words = TsVectorField()

    class Meta:
        db_table = "tracing_spanwords"

    def __str__(self) -> str:
        return f"words of span {self.span_id}"


class RunSummary(models.Model):
    workflow_id = models.CharField(max_length=1000)
    run_id = models.CharField(max_length=255)
    workflow_type = models.CharField(max_length=255, blank=True, default="")
    span_count = models.IntegerField(default=0)
    model_calls = models.IntegerField(default=0)
    attempts = models.IntegerField(default=0)
    failed_attempts = models.IntegerField(default=0)
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)
    agents = models.JSONField(default=list)
    first_span_ns = models.BigIntegerField(null=True, blank=True)
    last_span_ns = models.BigIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    last_error_ns = models.BigIntegerField(null=True, blank=True)
    # {activity_id: {attempt: failed}} for model activities: what lets each
    # batch update the counts above without rescanning the run's spans.
    model_attempts = models.JSONField(default=dict)
    # Trace health kept current on ingest (tracing.health), so the runs list
    # flags and filters runs with problems without reading spans:
    # spans whose parent is not stored, spans in a parent cycle, span ids that
    # arrived again with different content, spans that arrived after the run closed.
    orphan_spans = models.IntegerField(default=0)
    cycle_spans = models.IntegerField(default=0)
    duplicate_spans = models.IntegerField(default=0)
    late_spans = models.IntegerField(default=0)
    # When the run closed, as its root workflow span or its history says.
    closed_ns = models.BigIntegerField(null=True, blank=True)
    # Problems only the history shows ({"attempts_without_span": n, ...}), from
    # the last time the run page or API compared the two.
    history_health = models.JSONField(null=True, blank=True)
    history_problems = models.IntegerField(default=0)
    # Sum of every problem count above: the runs list's filter.
    health_problems = models.IntegerField(default=0)
    # What the run's history says once it has been read (tracing.links):
    # {"calls": {activity_id: [attempts, last failed, tokens in, tokens out]},
    #  "span_tokens": [in, out]}; empty until then. Counts calls and tokens
    # whose spans never arrived.
    history = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workflow_id", "run_id"], name="runsummary_run_uniq")
        ]
        indexes = [
            models.Index(fields=["-last_span_ns"], name="runsummary_recent"),
            # The runs list's keyset pages, newest first (dashboard/runs.py).
            models.Index(
                fields=["-first_span_ns", "-workflow_id", "-run_id"], name="runsummary_list_order"
            ),
            models.Index(
                fields=["workflow_type", "-first_span_ns", "-workflow_id", "-run_id"],
                name="runsummary_list_type",
            ),
            models.Index(
                fields=["-first_span_ns"],
                condition=Q(health_problems__gt=0),
                name="runsummary_unhealthy",
            ),
        ]
        verbose_name_plural = "run summaries"

    def __str__(self) -> str:
        return f"{self.workflow_id} / {self.run_id}"


class MissingParent(models.Model):
    """A stored span whose parent has not been stored (yet).

    Exporters send children before parents, so most rows live for a batch or
    two; the rest are the orphans the trace-health panel reports. One row per
    such span, removed when its parent arrives (tracing.health)."""

    trace_id = models.CharField(max_length=32)
    parent_span_id = models.CharField(max_length=16)
    span_id = models.CharField(max_length=16)
    workflow_id = models.CharField(max_length=1000, blank=True, default="")
    run_id = models.CharField(max_length=255, blank=True, default="")
    received_ns = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["trace_id", "span_id"], name="missingparent_span_uniq")
        ]
        indexes = [
            models.Index(fields=["trace_id", "parent_span_id"], name="missingparent_parent"),
            models.Index(fields=["workflow_id", "run_id"], name="missingparent_run"),
        ]

    def __str__(self) -> str:
        return f"{self.span_id} → {self.parent_span_id} (missing)"


class RunLineage(models.Model):
    """How one run relates to others through Temporal's operations.

    Filled from the run's history when the dashboard reads it (a reset run's
    base and the activities it inherited, the run it continued from and the
    next one, its parent) and, for the bundled worker, at ingest from its root
    span's attributes (parent and previous run), so the runs list can roll
    children up into their parent without reading histories.
    """

    workflow_id = models.CharField(max_length=1000)
    run_id = models.CharField(max_length=255)
    parent_workflow_id = models.CharField(max_length=1000, blank=True, default="")
    parent_run_id = models.CharField(max_length=255, blank=True, default="")
    # The run this one continued (continue-as-new, a retry, a cron run).
    previous_run_id = models.CharField(max_length=255, blank=True, default="")
    # continued_as_new, retry, cron_schedule (Temporal's ContinueAsNewInitiator).
    previous_kind = models.CharField(max_length=32, blank=True, default="")
    next_run_id = models.CharField(max_length=255, blank=True, default="")
    # A reset run: the run it was reset from, the WorkflowTaskFailed event that
    # marks the reset point, when, and the activities it inherited from before it.
    reset_from_run_id = models.CharField(max_length=255, blank=True, default="")
    reset_event_id = models.BigIntegerField(null=True, blank=True)
    reset_ns = models.BigIntegerField(null=True, blank=True)
    inherited_activities = models.JSONField(default=list)
    # True once the history has been read: the reset fields are then known.
    history_read = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workflow_id", "run_id"], name="runlineage_run_uniq")
        ]
        indexes = [
            models.Index(fields=["parent_workflow_id", "parent_run_id"], name="runlineage_parent"),
            models.Index(fields=["workflow_id", "reset_from_run_id"], name="runlineage_reset"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_id} / {self.run_id}"


class TraceLink(models.Model):
    """A span that a run's history names (tracing.links): what ties spans that carry no
    Temporal ids (``OpenAIAgentsPlugin``'s own OTel mode) to their run, whenever they arrive."""

    trace_id = models.CharField(max_length=32)
    span_id = models.CharField(max_length=16)
    workflow_id = models.CharField(max_length=1000)
    run_id = models.CharField(max_length=255)
    # workflow, activity, signal or update
    kind = models.CharField(max_length=16)
    activity_id = models.CharField(max_length=255, blank=True, default="")
    activity_type = models.CharField(max_length=255, blank=True, default="")
    scheduled_ns = models.BigIntegerField(default=0)
    closed_ns = models.BigIntegerField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["trace_id"], name="tracelink_trace"),
            models.Index(fields=["workflow_id", "run_id"], name="tracelink_run"),
        ]

    def __str__(self) -> str:
        return f"{self.trace_id}/{self.span_id} → {self.workflow_id} / {self.run_id}"


class ExportCursor(models.Model):
    """Where continuous forwarding to one collector stands.

    Spans are forwarded in ``Span.id`` order; everything at or below
    ``last_span_id`` is delivered (or, if the collector rejected it for good,
    counted in ``rejected``). The cursor moves only after the collector has
    answered, in the same transaction as the counters, so a crash or restart
    re-sends at most the batch in flight: at least once, never lost.
    """

    collector = models.CharField(max_length=64, unique=True)
    last_span_id = models.BigIntegerField(default=0)
    delivered = models.BigIntegerField(default=0)
    rejected = models.BigIntegerField(default=0)
    # Spans passed over because the collector's workflow type filter excludes them.
    skipped = models.BigIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    last_error_at = models.DateTimeField(null=True, blank=True)
    failures = models.IntegerField(default=0)
    retry_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    # Which forwarder process serves this collector, until when: one at a time.
    lease_owner = models.CharField(max_length=64, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.collector} @ {self.last_span_id}"


class RunExport(models.Model):
    """A one-off export of one run's spans to a collector, run by the forwarder."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    workflow_id = models.CharField(max_length=1000)
    run_id = models.CharField(max_length=255)
    collector = models.CharField(max_length=64)
    status = models.CharField(max_length=16, default=PENDING)
    total = models.IntegerField(default=0)
    sent = models.IntegerField(default=0)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["status", "id"], name="runexport_status"),
            # Retention deletes a run's exports with the run.
            models.Index(fields=["workflow_id", "run_id"], name="runexport_run"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_id} / {self.run_id} → {self.collector} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in (self.DONE, self.FAILED)

    @property
    def percent(self) -> int:
        return 100 if self.total == 0 else min(100, self.sent * 100 // self.total)


# -- rollups for the fleet overview (tracing/rollups.py keeps them current) ------

# Model-call latency histogram: bin 0 holds attempts under 1 ms, bin i (1..62)
# [2^((i-1)/3), 2^(i/3)) ms, bin 63 everything from 2^(62/3) ms (about 32 min)
# up. Bins add up across any set of rows, so p50/p95 of any range and filter
# come from merged rows, within a bin's width (26 %, less after interpolation).
LATENCY_BINS = 64


class RunRollupState(models.Model):
    """One run as the rollups count it: what lets a batch move the run's
    contribution when something about the run changes (its status, its start,
    an attempt's model) without reading its spans again."""

    workflow_id = models.CharField(max_length=1000)
    run_id = models.CharField(max_length=255)
    workflow_type = models.CharField(max_length=255, blank=True, default="")
    task_queue = models.CharField(max_length=255, blank=True, default="")
    # Temporal's status (WorkflowExecutionStatus name) as last seen, "" until then.
    status = models.CharField(max_length=32, blank=True, default="")
    start_ns = models.BigIntegerField()
    end_ns = models.BigIntegerField()
    close_ns = models.BigIntegerField(null=True, blank=True)
    duration_ns = models.BigIntegerField(default=0)
    # USD with the prices in force when the run was last counted; ranks the
    # most expensive runs (the page shows today's prices).
    cost = models.FloatField(null=True, blank=True)
    agents = models.JSONField(default=list)
    model_names = models.JSONField(default=list)
    # {"a": {activity_id: {attempt: [agent, model, failed, tin, tout, model_ns,
    # activity_ns, message]}}, "t": {"agent\x1fmodel": [tin, tout]}}
    facts = models.JSONField(default=dict)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workflow_id", "run_id"], name="rollupstate_run_uniq")
        ]
        indexes = [
            models.Index(fields=["start_ns"], name="rollupstate_start"),
            # The most expensive and slowest runs of a window: walked in order,
            # filtered on the index alone (rows carry their facts, so are wide).
            models.Index(
                fields=["-cost", "start_ns", "workflow_type", "status", "task_queue"],
                name="rollupstate_cost",
            ),
            models.Index(
                fields=["-duration_ns", "start_ns", "workflow_type", "status", "task_queue"],
                name="rollupstate_duration",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_id} / {self.run_id}"


class Rollup(models.Model):
    """Counts per hour of run start x workflow type x task queue x status x agent x model.

    Run counts are kept with ``agent``/``model`` ``"*"`` (any) as well as per
    agent and model the run used, so a filter on either counts each run once;
    model-call measures only on the attempt's own agent and model.
    """

    # Each count is kept per hour, per 6 hours and per day (bucket width), so a
    # month reads 30 rows per cell, not 720.
    width_ns = models.BigIntegerField(default=3600 * 10**9)
    bucket_ns = models.BigIntegerField()
    workflow_type = models.CharField(max_length=255)
    task_queue = models.CharField(max_length=255)
    status = models.CharField(max_length=32)
    agent = models.CharField(max_length=255)
    model = models.CharField(max_length=255)
    runs = models.BigIntegerField(default=0)
    calls = models.BigIntegerField(default=0)
    attempts = models.BigIntegerField(default=0)
    failed_attempts = models.BigIntegerField(default=0)
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)
    failed_tokens_in = models.BigIntegerField(default=0)
    failed_tokens_out = models.BigIntegerField(default=0)
    # LATENCY_BINS counts, "h00".."h63", added below.

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "width_ns",
                    "bucket_ns",
                    "workflow_type",
                    "task_queue",
                    "status",
                    "agent",
                    "model",
                ],
                name="rollup_width_cell_uniq",
            )
        ]

    def __str__(self) -> str:
        return f"{self.bucket_ns} {self.workflow_type} {self.agent} {self.model}"


for _bin in range(LATENCY_BINS):
    Rollup.add_to_class(f"h{_bin:02d}", models.BigIntegerField(default=0))


class FailureRollup(models.Model):
    """Failed model-call attempts per bucket x cell x error message."""

    width_ns = models.BigIntegerField(default=3600 * 10**9)
    bucket_ns = models.BigIntegerField()
    workflow_type = models.CharField(max_length=255)
    task_queue = models.CharField(max_length=255)
    status = models.CharField(max_length=32)
    agent = models.CharField(max_length=255)
    model = models.CharField(max_length=255)
    message = models.CharField(max_length=300)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "width_ns",
                    "bucket_ns",
                    "workflow_type",
                    "task_queue",
                    "status",
                    "agent",
                    "model",
                    "message",
                ],
                name="failurerollup_width_cell_uniq",
            )
        ]

    def __str__(self) -> str:
        return f"{self.bucket_ns} {self.message} x {self.count}"


class ArchivedHistory(models.Model):
    """A closed run's Temporal history, kept next to its spans (dashboard/archive.py).

    Temporal forgets a closed run after its namespace's retention; this copy
    lets the run page, the history views, ``history.json`` and the correlation
    work the same afterwards. ``history`` is the ``temporal.api.history.v1.History``
    protobuf, zlib-compressed.
    """

    workflow_id = models.CharField(max_length=1000)
    run_id = models.CharField(max_length=255)
    history = models.BinaryField()
    event_count = models.IntegerField(default=0)
    # Uncompressed protobuf size, for the figures on the Exports page.
    size_bytes = models.BigIntegerField(default=0)
    # The close event's type name (WORKFLOW_EXECUTION_COMPLETED, ...) and time.
    close_event = models.CharField(max_length=64, blank=True, default="")
    closed_ns = models.BigIntegerField(null=True, blank=True)
    archived_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workflow_id", "run_id"], name="archive_run_uniq")
        ]
        verbose_name_plural = "archived histories"

    def __str__(self) -> str:
        return f"{self.workflow_id} / {self.run_id} ({self.event_count} events)"


class Maintenance(models.Model):
    """One background job (retention, the history archive sweep): who runs it, how it went.

    Any number of ``runforwarder`` processes may run; the lease keeps each job
    on one of them, as ExportCursor's does for collectors.
    """

    job = models.CharField(max_length=32, unique=True)
    lease_owner = models.CharField(max_length=64, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    last_started_at = models.DateTimeField(null=True, blank=True)
    last_finished_at = models.DateTimeField(null=True, blank=True)
    # What the last complete round did, e.g. {"spans": 1200, "runs": 4}.
    last_result = models.JSONField(default=dict, blank=True)
    # Deleted or archived since the job first ran.
    totals = models.JSONField(default=dict, blank=True)
    last_error = models.TextField(blank=True, default="")
    # Where the archive sweep stands: runs closed at or after this were looked at.
    watermark_ns = models.BigIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return self.job
