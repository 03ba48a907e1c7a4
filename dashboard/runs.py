"""The runs list: Temporal visibility merged with the span store, filtered and paged.

Visibility knows every run, including those that never sent a span; the store
(tracing.RunSummary) knows runs whose history Temporal has already deleted,
and everything about the agents. A row is one (workflow id, run id), built
from whichever side knows it.

Pages are keyset-paged on (start time, workflow id, run id), newest first: a
cursor names the last row shown and the next page starts strictly below it, so
rows that arrive meanwhile never shift a page. Temporal's SQL visibility
cannot ORDER BY, so one page of it (what the server returns first: open runs,
then the most recently closed) is fetched and sorted here.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django import forms
from django.conf import settings
from django.db import connection
from django.db.models import BooleanField, Count, Exists, OuterRef, Q, QuerySet, Sum
from django.db.models.expressions import RawSQL
from django.urls import NoReverseMatch, reverse

from dashboard import linker, run_family, temporal
from telemetry import vocab
from tracing import health, lineage, pricing, rollups, search
from tracing.models import RunRollupState, RunSummary, Span, datetime_to_ns

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
# One visibility page: enough to fill a page of the list even when spans are off.
VISIBILITY_LIMIT = 100

RunKey = tuple[str, str]
SortKey = tuple[int, str, str]

# Status names as the SDK spells them -> as visibility queries spell them.
STATUSES = {
    "RUNNING": "Running",
    "COMPLETED": "Completed",
    "FAILED": "Failed",
    "CANCELED": "Canceled",
    "TERMINATED": "Terminated",
    "CONTINUED_AS_NEW": "ContinuedAsNew",
    "TIMED_OUT": "TimedOut",
}
UNKNOWN = "UNKNOWN"
RANGES = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
RANGE_CHOICES = [
    ("", "All time"),
    ("15m", "Last 15 min"),
    ("1h", "Last hour"),
    ("24h", "Last 24 h"),
    ("7d", "Last 7 days"),
    ("custom", "Custom…"),
]
DATETIME_FORMATS = [
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%dT%H:%M:%S",
    # The overview's links end a bar just before the next one starts.
    "%Y-%m-%dT%H:%M:%S.%f",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
]


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _iso(ns: int) -> str:
    return (EPOCH + timedelta(microseconds=ns // 1000)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


MAX_CURSOR_NS = 2**63 - 1001


def encode_cursor(key: SortKey) -> str:
    raw = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> SortKey:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        ns, workflow_id, run_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError("not a cursor") from exc
    if not (isinstance(ns, int) and isinstance(workflow_id, str) and isinstance(run_id, str)):
        raise ValueError("not a cursor")
    # A cursor is a start time the store holds (int64 nanoseconds); anything
    # else would overflow the query, not page it.
    if not 0 <= ns <= MAX_CURSOR_NS or len(workflow_id) > 1000 or len(run_id) > 255:
        raise ValueError("not a cursor")
    return ns, workflow_id, run_id


@dataclass(frozen=True)
class Filters:
    status: str = ""
    workflow_type: str = ""
    agent: str = ""
    since_ns: int | None = None
    until_ns: int | None = None
    text: str = ""
    model: str = ""
    task_queue: str = ""
    # Only runs whose trace health shows a problem (tracing.health).
    problems: bool = False
    # Only runs with a failed model-call attempt of this message (the overview's
    # top failure messages link here).
    failure: str = ""
    # Runs whose spans hold every word of ``text`` (what the agents said), found
    # by tracing.search before the list is built (with_text_runs).
    text_runs: frozenset[RunKey] = frozenset()


async def with_text_runs(filters: Filters) -> Filters:
    """The filters with the runs whose prompts, outputs, tool arguments or errors
    match the search text."""
    if not filters.text:
        return filters
    found = await sync_to_async(search.matching_runs)(filters.text)
    return dataclasses.replace(filters, text_runs=frozenset(found))


class RunFilterForm(forms.Form):
    status = forms.ChoiceField(
        required=False,
        choices=[("", "Any status")]
        + [(s, s.replace("_", " ").capitalize()) for s in STATUSES]
        + [(UNKNOWN, "Unknown (not in Temporal)")],
    )
    type = forms.CharField(required=False, max_length=255, label="Workflow type")
    agent = forms.CharField(required=False, max_length=255)
    model = forms.CharField(required=False, max_length=255)
    queue = forms.CharField(required=False, max_length=255, label="Task queue")
    range = forms.ChoiceField(required=False, choices=RANGE_CHOICES, label="Started")
    since = forms.DateTimeField(required=False, input_formats=DATETIME_FORMATS, label="From")
    until = forms.DateTimeField(required=False, input_formats=DATETIME_FORMATS, label="To")
    q = forms.CharField(required=False, max_length=200, label="Search")
    failure = forms.CharField(
        required=False, max_length=rollups.MESSAGE_MAX, strip=False, label="Failed attempt"
    )
    health = forms.ChoiceField(
        required=False,
        choices=[("", "Any trace health"), ("problems", "Trace problems")],
        label="Trace health",
    )
    cursor = forms.CharField(required=False, max_length=2000)

    def clean_cursor(self) -> SortKey | None:
        text = self.cleaned_data.get("cursor", "")
        if not text:
            return None
        try:
            return decode_cursor(text)
        except ValueError:
            raise forms.ValidationError(
                "This page link is broken; start from the newest runs."
            ) from None

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            self.add_error("until", "“To” must be after “From”.")
        return data

    def filters(self, now: datetime | None = None) -> Filters:
        data = self.cleaned_data
        since_ns = until_ns = None
        window = RANGES.get(data.get("range") or "")
        if window is not None:
            since_ns = datetime_to_ns((now or datetime.now(UTC)) - window)
        elif data.get("range") == "custom" or data.get("since") or data.get("until"):
            since_ns = datetime_to_ns(data["since"]) if data.get("since") else None
            # "To" is inclusive down to its last nanosecond: the form speaks in
            # microseconds at best, the store in nanoseconds.
            until_ns = datetime_to_ns(data["until"]) + 999 if data.get("until") else None
        return Filters(
            status=data.get("status") or "",
            workflow_type=(data.get("type") or "").strip(),
            agent=(data.get("agent") or "").strip(),
            since_ns=since_ns,
            until_ns=until_ns,
            text=(data.get("q") or "").strip(),
            model=(data.get("model") or "").strip(),
            task_queue=(data.get("queue") or "").strip(),
            problems=data.get("health") == "problems",
            failure=data.get("failure") or "",
        )


def dom_id(workflow_id: str, run_id: str) -> str:
    """A stable HTML id for a run's row; ids may hold any character, so hash them."""
    return "run-" + vocab.run_digest(workflow_id, run_id)[:16]


def run_url(workflow_id: str, run_id: str) -> str:
    try:
        return reverse("dash-run", args=[workflow_id, run_id])
    except NoReverseMatch:
        # An id the run page's route cannot carry (e.g. one with a slash).
        return ""


@dataclass
class RunRow:
    workflow_id: str
    run_id: str
    workflow_type: str = ""
    status: str = UNKNOWN
    start_ns: int = 0
    close_ns: int | None = None
    last_span_ns: int | None = None
    agents: list[str] = field(default_factory=list)
    model_calls: int = 0
    attempts: int = 0
    failed_attempts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: Decimal | None = None
    last_error: str = ""
    in_temporal: bool = False
    has_spans: bool = False
    # Trace-health problems counted for this run (0: none known).
    health_problems: int = 0
    # A reset run: the run it was reset from (its figures include what it inherited),
    # and when its history says it was reset (its own start, as on its page).
    reset_from: str = ""
    reset_ns: int | None = None
    # A child run: its parent.
    parent: tuple[str, str] | None = None
    # A parent: how many children, and what they add (never in the columns above,
    # so a column's sum over the list counts each model call once).
    children: int = 0
    children_figures: Any = None
    # Found by a search in what the agents said: (before, the word, after).
    match: tuple[str, str, str] | None = None

    @property
    def key(self) -> RunKey:
        return self.workflow_id, self.run_id

    @property
    def sort_key(self) -> SortKey:
        return self.start_ns, self.workflow_id, self.run_id

    @property
    def dom_id(self) -> str:
        return dom_id(self.workflow_id, self.run_id)

    @property
    def url(self) -> str:
        return run_url(self.workflow_id, self.run_id)

    @property
    def status_label(self) -> str:
        return self.status.replace("_", " ").capitalize()

    @property
    def retries(self) -> int:
        return max(self.attempts - self.model_calls, 0)

    @property
    def own_start_ns(self) -> int:
        """When the run began: a reset run at its reset marker (the run page's start;
        Temporal's start time for it is a few ms off), others at their start. The
        list is ordered and paged by start_ns, the time Temporal's visibility has."""
        return self.reset_ns if self.reset_ns is not None else self.start_ns

    @property
    def started(self) -> datetime:
        return datetime.fromtimestamp(self.own_start_ns / 1e9, tz=UTC)

    @property
    def duration_ns(self) -> int | None:
        if self.in_temporal:
            end = self.close_ns if self.close_ns is not None else time.time_ns()
            return max(end - self.own_start_ns, 0)
        if self.last_span_ns is not None:
            return max(self.last_span_ns - self.own_start_ns, 0)
        return None

    @property
    def running(self) -> bool:
        return self.status == "RUNNING"

    def as_json(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "run_id": self.run_id,
            "workflow_type": self.workflow_type,
            "status": self.status,
            "start_time": _iso(self.own_start_ns),
            "close_time": _iso(self.close_ns) if self.close_ns is not None else None,
            "duration_ms": None if self.duration_ns is None else self.duration_ns // 1_000_000,
            "agents": list(self.agents),
            "model_calls": self.model_calls,
            "attempts": self.attempts,
            "retried_attempts": self.retries,
            "failed_attempts": self.failed_attempts,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "estimated_cost_usd": None
            if self.cost is None
            else str(self.cost.quantize(Decimal("0.000001"))),
            "last_error": self.last_error,
            "in_temporal": self.in_temporal,
            "has_spans": self.has_spans,
            "url": self.url,
            "health_problems": self.health_problems,
            "reset_from": self.reset_from or None,
            "parent": (
                {"workflow_id": self.parent[0], "run_id": self.parent[1]} if self.parent else None
            ),
            "children": (
                {"children": self.children, **self.children_figures.as_json()}
                if self.children and self.children_figures is not None
                else None
            ),
        }


@dataclass
class Page:
    rows: list[RunRow]
    next_cursor: str | None
    temporal_error: str | None


# -- Temporal side ---------------------------------------------------------


def visibility_query(filters: Filters, cursor: SortKey | None = None) -> str:
    clauses = []
    # Unknown runs are those visibility does not list: not a clause it can answer.
    if filters.status and filters.status != UNKNOWN:
        clauses.append(f"ExecutionStatus = {temporal.quote(STATUSES[filters.status])}")
    if filters.workflow_type:
        clauses.append(f"WorkflowType = {temporal.quote(filters.workflow_type)}")
    if filters.task_queue:
        clauses.append(f"TaskQueue = {temporal.quote(filters.task_queue)}")
    if filters.since_ns is not None:
        clauses.append(f"StartTime >= {temporal.quote(_iso(filters.since_ns))}")
    if filters.until_ns is not None:
        clauses.append(f"StartTime <= {temporal.quote(_iso(filters.until_ns))}")
    if cursor is not None:
        # Inclusive: equal start times are told apart by the ids, here.
        clauses.append(f"StartTime <= {temporal.quote(_iso(cursor[0] + 1000))}")
    return " AND ".join(clauses)


def _from_visibility(run: temporal.VisibilityRun) -> RunRow:
    return RunRow(
        workflow_id=run.workflow_id,
        run_id=run.run_id,
        workflow_type=run.workflow_type,
        status=run.status,
        start_ns=datetime_to_ns(run.start_time),
        close_ns=datetime_to_ns(run.close_time) if run.close_time else None,
        in_temporal=True,
    )


async def _visibility(query: str, limit: int) -> tuple[list[temporal.VisibilityRun], str | None]:
    try:
        return await temporal.list_runs(query, limit), None
    except temporal.TemporalUnavailable as exc:
        logger.warning("%s", exc)
        return [], exc.reason
    except ValueError as exc:
        logger.warning("%s", exc)
        return [], str(exc)


async def _visibility_for(keys: set[RunKey], filters: Filters) -> list[temporal.VisibilityRun]:
    """Visibility of these runs, in one request (errors mean: status unknown)."""
    if not keys:
        return []
    ids = sorted({w for w, _ in keys})
    clause = "WorkflowId IN (" + ", ".join(temporal.quote(w) for w in ids) + ")"
    query = " AND ".join(filter(None, [visibility_query(filters), clause]))
    found, _ = await _visibility(query, max(len(ids) * 4, VISIBILITY_LIMIT))
    return [r for r in found if (r.workflow_id, r.run_id) in keys]


# -- store side --------------------------------------------------------------

_SUMMARY_COLUMNS = (
    "workflow_id",
    "run_id",
    "workflow_type",
    "model_calls",
    "attempts",
    "failed_attempts",
    "tokens_in",
    "tokens_out",
    "agents",
    "first_span_ns",
    "last_span_ns",
    "last_error",
    "health_problems",
)


def _store_filtered(filters: Filters) -> QuerySet[RunSummary]:
    qs = RunSummary.objects.filter(first_span_ns__isnull=False).only(*_SUMMARY_COLUMNS)
    if filters.workflow_type:
        qs = qs.filter(workflow_type=filters.workflow_type)
    if filters.agent:
        # Agents are a JSON list; match the quoted name as it is stored.
        qs = qs.filter(agents__icontains=json.dumps(filters.agent))
    if filters.model or filters.task_queue:
        # Models and task queues per run are the overview's rollup state.
        states = RunRollupState.objects.filter(
            workflow_id=OuterRef("workflow_id"), run_id=OuterRef("run_id")
        )
        if filters.model:
            states = states.filter(model_names__icontains=json.dumps(filters.model))
        if filters.task_queue:
            states = states.filter(task_queue=filters.task_queue)
        qs = qs.filter(Exists(states))
    if filters.since_ns is not None:
        qs = qs.filter(first_span_ns__gte=filters.since_ns)
    if filters.until_ns is not None:
        qs = qs.filter(first_span_ns__lte=filters.until_ns)
    if filters.text:
        # The runs found in what the agents said, by their summaries' ids: one
        # lookup on the (workflow id, run id) index, not one OR clause per run.
        said = Q(id__in=_summary_ids(filters.text_runs)) if filters.text_runs else Q()
        qs = qs.filter(
            Q(workflow_id__icontains=filters.text) | Q(last_error__icontains=filters.text) | said
        )
    if filters.problems:
        qs = health.unhealthy(qs)
    if filters.status == UNKNOWN and rollups.enabled():
        # Runs whose Temporal status has not been seen, as the overview counts
        # them; the merge then drops any that visibility does know.
        qs = qs.filter(
            Exists(
                RunRollupState.objects.filter(
                    workflow_id=OuterRef("workflow_id"), run_id=OuterRef("run_id"), status=""
                )
            )
        )
    if filters.failure:
        sql, params = rollups.failed_with_sql(qs.model._meta.db_table, filters.failure)
        qs = qs.filter(RawSQL(sql, params, output_field=BooleanField()))
    return qs


def _summary_ids(keys: frozenset[RunKey]) -> list[int]:
    if not keys:
        return []
    if connection.vendor == "postgresql":
        # Two array parameters: psycopg binds on the client, and splitting a
        # statement of a thousand placeholders costs more than the lookup.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM tracing_runsummary WHERE (workflow_id, run_id) IN "
                "(SELECT * FROM unnest(%s::text[], %s::text[]))",
                [[w for w, _ in keys], [r for _, r in keys]],
            )
            return [row[0] for row in cursor.fetchall()]
    found = RunSummary.objects.filter(
        workflow_id__in={w for w, _ in keys}, run_id__in={r for _, r in keys}
    ).values_list("id", "workflow_id", "run_id")
    return [pk for pk, workflow_id, run_id in found if (workflow_id, run_id) in keys]


# The list's order, newest first: runsummary_list_order (migration 0002) in full.
LIST_ORDER = ("-first_span_ns", "-workflow_id", "-run_id")
# A search first tries the newest summaries in list order (below the cursor): when
# they hold a page of matches, the page is those, and the substring tests ran on
# a few thousand rows instead of every summary.
SEARCH_WINDOW = 5000


def _below(qs: QuerySet[RunSummary], cursor: SortKey | None) -> QuerySet[RunSummary]:
    if cursor is None:
        return qs
    ns, workflow_id, run_id = cursor
    # The bound on the index's first column first: a range both databases walk in
    # list order (three OR'd branches alone made SQLite merge three index reads
    # and sort them).
    return qs.filter(first_span_ns__lte=ns).filter(
        Q(first_span_ns__lt=ns)
        | Q(workflow_id__lt=workflow_id)
        | Q(workflow_id=workflow_id, run_id__lt=run_id)
    )


def _store_page(filters: Filters, cursor: SortKey | None, limit: int) -> list[RunSummary]:
    qs = _below(_store_filtered(filters), cursor)
    if filters.text:
        # Every row older than the window's oldest is older than every row in it,
        # so a window that holds ``limit`` matches holds the first ``limit`` of all.
        unsearched = dataclasses.replace(filters, text="", text_runs=frozenset())
        edge = (
            _below(_store_filtered(unsearched), cursor)
            .order_by(*LIST_ORDER)
            .values_list("first_span_ns", flat=True)[SEARCH_WINDOW - 1 : SEARCH_WINDOW]
        )
        edge_ns = next(iter(edge), None)
        if edge_ns is not None:
            found = list(qs.filter(first_span_ns__gte=edge_ns).order_by(*LIST_ORDER)[:limit])
            if len(found) == limit:
                return found
    return list(qs.order_by(*LIST_ORDER)[:limit])


def _store_for(keys: set[RunKey], filters: Filters | None = None) -> list[RunSummary]:
    if not keys:
        return []
    qs = _store_filtered(filters) if filters else RunSummary.objects.only(*_SUMMARY_COLUMNS)
    found = qs.filter(workflow_id__in={w for w, _ in keys}, run_id__in={r for _, r in keys})
    return [s for s in found if (s.workflow_id, s.run_id) in keys]


def _apply_summary(row: RunRow, summary: RunSummary) -> None:
    row.has_spans = True
    row.workflow_type = row.workflow_type or summary.workflow_type
    if not row.in_temporal:
        row.start_ns = summary.first_span_ns or 0
    row.last_span_ns = summary.last_span_ns
    row.agents = list(summary.agents or [])
    row.model_calls = summary.model_calls
    row.attempts = summary.attempts
    row.failed_attempts = summary.failed_attempts
    row.tokens_in = summary.tokens_in
    row.tokens_out = summary.tokens_out
    row.last_error = summary.last_error
    row.health_problems = summary.health_problems


def _add_costs(rows: list[RunRow]) -> None:
    """Estimated cost per row, from model tokens per model of the rows' spans."""
    with_tokens = {r.key: r for r in rows if r.tokens_in or r.tokens_out}
    if not with_tokens:
        return
    tokens: dict[RunKey, dict[str, tuple[int, int]]] = {}
    sums = (
        Span.objects.filter(
            workflow_id__in={w for w, _ in with_tokens},
            run_id__in={r for _, r in with_tokens},
            kind__in=vocab.MODEL_KINDS,
        )
        .values_list("workflow_id", "run_id", "model")
        .annotate(tin=Sum("tokens_in"), tout=Sum("tokens_out"))
        .order_by()
    )
    for workflow_id, run_id, model, tin, tout in sums:
        if (workflow_id, run_id) in with_tokens:
            tokens.setdefault((workflow_id, run_id), {})[model] = (tin or 0, tout or 0)
    prices = settings.LOOMVIEW_MODEL_PRICES
    for key, row in with_tokens.items():
        row.cost = pricing.estimate(tokens.get(key, {}), prices) if key in tokens else None


def _matches(row: RunRow, filters: Filters) -> bool:
    if filters.status and row.status != filters.status:
        return False
    if filters.failure and not row.has_spans:
        return False
    if filters.workflow_type and row.workflow_type != filters.workflow_type:
        return False
    if filters.agent and filters.agent.lower() not in (a.lower() for a in row.agents):
        return False
    if filters.model and not row.has_spans:
        return False
    if filters.problems and not row.health_problems:
        return False
    if filters.since_ns is not None and row.start_ns < filters.since_ns:
        return False
    if filters.until_ns is not None and row.start_ns > filters.until_ns:
        return False
    if filters.text and row.key not in filters.text_runs:
        needle = filters.text.lower()
        if needle not in row.workflow_id.lower() and needle not in row.last_error.lower():
            return False
    return True


# -- the list --------------------------------------------------------------


async def _merge(
    visible: list[temporal.VisibilityRun],
    stored: list[RunSummary],
    filters: Filters,
    temporal_error: str | None,
) -> dict[RunKey, RunRow]:
    rows: dict[RunKey, RunRow] = {}
    for run in visible:
        rows[(run.workflow_id, run.run_id)] = _from_visibility(run)
    summaries = {(s.workflow_id, s.run_id): s for s in stored}
    # Runs one side returned and the other did not: look them up by key.
    missing_in_store = set(rows) - set(summaries)
    for summary in await sync_to_async(_store_for)(missing_in_store):
        summaries[(summary.workflow_id, summary.run_id)] = summary
    missing_in_temporal = set(summaries) - set(rows)
    if temporal_error is None:
        for run in await _visibility_for(missing_in_temporal, Filters()):
            rows[(run.workflow_id, run.run_id)] = _from_visibility(run)
    for key, summary in summaries.items():
        row = rows.setdefault(key, RunRow(workflow_id=key[0], run_id=key[1]))
        _apply_summary(row, summary)
    return rows


# How many runs' histories the runs list may read before it answers.
LINK_RUNS_PER_PAGE = 20


async def list_page(
    filters: Filters, cursor: SortKey | None = None, page_size: int = PAGE_SIZE
) -> Page:
    filters = await with_text_runs(filters)
    temporal_error: str | None = None
    visible: list[temporal.VisibilityRun] = []
    if not (
        filters.agent
        or filters.model
        or filters.problems
        or filters.failure
        or filters.status == UNKNOWN
    ):
        # Runs without spans have no agents, models, trace health or failed
        # attempts, and unknown runs are the ones visibility does not list:
        # such a filter is the store's alone.
        visible, temporal_error = await _visibility(
            visibility_query(filters, cursor), VISIBILITY_LIMIT
        )
    else:
        try:
            await temporal.check_connection()
        except temporal.TemporalUnavailable as exc:
            temporal_error = exc.reason
    if temporal_error is None:
        # Spans still untied (a stock instrumentation's, no Temporal ids) are tied
        # through their runs' histories first, so the page counts them.
        await linker.link_pending_quietly(LINK_RUNS_PER_PAGE)
    visibility_truncated = len(visible) >= VISIBILITY_LIMIT
    stored = await sync_to_async(_store_page)(filters, cursor, page_size + 1)
    store_truncated = len(stored) > page_size
    # Every store row at or above the last one fetched is known; below it,
    # unfetched store rows may sit between visibility rows, so stop there.
    horizon = (
        (stored[-1].first_span_ns or 0, stored[-1].workflow_id, stored[-1].run_id)
        if (store_truncated)
        else None
    )

    merged = await _merge(visible, stored, filters, temporal_error)
    candidates = sorted(
        (
            r
            for r in merged.values()
            if (cursor is None or r.sort_key < cursor)
            and (horizon is None or r.sort_key >= horizon)
            and _matches(r, filters)
        ),
        key=lambda r: r.sort_key,
        reverse=True,
    )
    rows = candidates[:page_size]
    next_key: SortKey | None = None
    if len(candidates) > page_size or (visibility_truncated and rows):
        next_key = rows[-1].sort_key
    elif horizon is not None:
        next_key = horizon
    await sync_to_async(_add_costs)(rows)
    await _add_family(rows)
    await _add_snippets(rows, filters)
    return Page(rows, encode_cursor(next_key) if next_key else None, temporal_error)


async def _add_snippets(rows: list[RunRow], filters: Filters) -> None:
    """Where a search found each run's words, for the rows it found that way."""
    keys = {r.key for r in rows} & filters.text_runs
    if not keys:
        return
    found = await sync_to_async(search.snippets)(filters.text, keys)
    for row in rows:
        row.match = found.get(row.key)


async def rows_for(keys: set[RunKey], filters: Filters) -> list[RunRow]:
    """These runs as rows, if they pass the filters (for live updates)."""
    filters = await with_text_runs(filters)
    stored = await sync_to_async(_store_for)(keys, filters)
    visible: list[temporal.VisibilityRun] = []
    temporal_error = None
    try:
        visible = (
            await _visibility_for(keys, filters) if not (filters.agent or filters.model) else []
        )
    except temporal.TemporalUnavailable as exc:
        temporal_error = exc.reason
    merged = await _merge(visible, stored, filters, temporal_error)
    rows = [r for k, r in merged.items() if k in keys and _matches(r, filters)]
    rows.sort(key=lambda r: r.sort_key, reverse=True)
    await sync_to_async(_add_costs)(rows)
    await _add_family(rows)
    # A live row keeps the search's snippet the page showed.
    await _add_snippets(rows, filters)
    return rows


async def _add_family(rows: list[RunRow]) -> None:
    """Resets, children and parents (dashboard.run_family) on the rows of a page."""
    spanned = [r for r in rows if r.has_spans]
    if not spanned:
        return
    counts = await sync_to_async(_runs_per_workflow)({r.workflow_id for r in spanned})
    await run_family.resolve_for_list([r.key for r in spanned], counts)
    await sync_to_async(_apply_family)(rows)


def _runs_per_workflow(workflow_ids: set[str]) -> dict[str, int]:
    query = (
        RunSummary.objects.filter(workflow_id__in=workflow_ids)
        .values_list("workflow_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    return dict(query)


def _apply_family(rows: list[RunRow]) -> None:
    by_key = {r.key: r for r in rows}
    known = lineage.for_runs(by_key)
    resets = [key for key, row in known.items() if row.reset_from_run_id]
    for key, figures in run_family.figures(resets).items():
        row = by_key[key]
        row.reset_from = known[key].reset_from_run_id
        row.reset_ns = known[key].reset_ns
        row.model_calls = figures.model_calls
        row.attempts = figures.attempts
        row.failed_attempts = figures.failed_attempts
        row.tokens_in = figures.tokens_in
        row.tokens_out = figures.tokens_out
        row.cost = figures.cost
    for key, found in known.items():
        if found.parent_run_id:
            by_key[key].parent = (found.parent_workflow_id, found.parent_run_id)
    for key, (children, figures) in run_family.rolled_up(by_key).items():
        by_key[key].children = children
        by_key[key].children_figures = figures
