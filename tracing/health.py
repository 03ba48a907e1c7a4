"""Trace health: what is wrong with a run's spans, and how to fix the instrumentation.

Two halves:

- **At ingest** (``track``, called by tracing.store.ingest inside its
  transaction), the problems a batch can reveal are counted into the run's
  summary, so the runs list can flag and filter runs without reading spans:
  spans whose parent is not stored (kept in ``MissingParent`` until the parent
  arrives), spans in a parent cycle, span ids that arrived again with different
  content, and spans that arrived after the run had closed.
- **On the run page and in the run API** (``report``), the whole picture from
  the run's spans and its history: the counts above, exact, plus model attempts
  the history records but no span covers, spans no history event explains and
  spans still waiting for an ancestor that ties them to a run. What only the
  history shows is written back to the summary (``record_from_page``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.db.models import Q

from telemetry import vocab
from telemetry.vocab import MODEL_KINDS
from tracing.correlation import RunStory
from tracing.models import MissingParent, RunSummary, Span

RunKey = tuple[str, str]
SpanKey = tuple[str, str]
Row = dict[str, Any]

# A span stored this long after its run closed arrived late (exporters batch,
# so a few hundred milliseconds after the close are normal).
LATE_AFTER_CLOSE_NS = 10 * 10**9
# How far up the tree a walk that looks for a cycle through stored spans goes.
MAX_CYCLE_WALK = 256
# What decides that a stored span and a new one with the same ids differ.
_CONTENT = ("name", "parent_span_id", "start_ns", "end_ns")


# -- at ingest ----------------------------------------------------------------


@dataclass
class Delta:
    """What one batch changed about a run's health."""

    # Change in the run's spans whose parent is not stored.
    orphans: int = 0
    cycles: int = 0
    duplicates: int = 0
    closed_ns: int | None = None


def track(
    received: Sequence[Row], batch: Sequence[Row], inserted: Sequence[Row], adopted: Sequence[Row]
) -> dict[RunKey, Delta]:
    """Count the problems this batch reveals, per run; keeps MissingParent current.

    ``received`` is every row of the request (duplicates included), ``batch``
    the unique ones, ``inserted`` those stored now, ``adopted`` stored spans
    that this batch tied to a run.
    """
    deltas: dict[RunKey, Delta] = {}

    def delta(row: Row) -> Delta:
        return deltas.setdefault((row["workflow_id"], row["run_id"]), Delta())

    _count_duplicates(received, batch, inserted, delta)
    for row in inserted:
        if row["workflow_id"] and row["run_id"] and row["name"].startswith("RunWorkflow:"):
            found = delta(row)
            found.closed_ns = max(found.closed_ns or 0, row["end_ns"])
    _track_missing_parents(inserted, adopted, delta)
    return {key: d for key, d in deltas.items() if key[0] and key[1]}


def _content(row: Row) -> tuple[Any, ...]:
    return tuple(row[name] for name in _CONTENT)


def _count_duplicates(
    received: Sequence[Row], batch: Sequence[Row], inserted: Sequence[Row], delta: Any
) -> None:
    """Span ids that arrived again with other content; a plain re-delivery is not one."""
    first: dict[SpanKey, Row] = {}
    for row in received:
        key = (row["trace_id"], row["span_id"])
        seen = first.setdefault(key, row)
        if seen is not row and _content(seen) != _content(row):
            delta(row if row["run_id"] else seen).duplicates += 1
    if len(inserted) == len(batch):
        return
    stored_keys = {(r["trace_id"], r["span_id"]) for r in inserted}
    skipped = {
        (r["trace_id"], r["span_id"]): r
        for r in batch
        if (r["trace_id"], r["span_id"]) not in stored_keys
    }
    query = Span.objects.filter(
        trace_id__in={t for t, _ in skipped}, span_id__in={s for _, s in skipped}
    ).values("trace_id", "span_id", "workflow_id", "run_id", *_CONTENT)
    for stored in query:
        incoming = skipped.get((stored["trace_id"], stored["span_id"]))
        if incoming is not None and _content(incoming) != _content(stored):
            delta(incoming if incoming["run_id"] else stored).duplicates += 1


def _track_missing_parents(inserted: Sequence[Row], adopted: Sequence[Row], delta: Any) -> None:
    """Record new spans whose parent is not stored, forget those whose parent arrived,
    and count the spans that close a parent cycle.

    Plain SQL throughout: this runs on every batch, most batches are small, and
    the ORM's query building cost more than these queries.
    """
    if not inserted and not adopted:
        return
    new: dict[SpanKey, Row] = {(r["trace_id"], r["span_id"]): r for r in inserted}
    for members in _cycles_in(new):
        for key in members:
            delta(new[key]).cycles += 1
    outside = {
        (r["trace_id"], r["parent_span_id"])
        for r in inserted
        if r["parent_span_id"] and (r["trace_id"], r["parent_span_id"]) not in new
    }
    present = _stored_keys(outside)
    missing = [
        r
        for r in inserted
        if r["parent_span_id"]
        and (r["trace_id"], r["parent_span_id"]) in outside
        and (r["trace_id"], r["parent_span_id"]) not in present
    ]
    if missing:
        _insert_missing(missing)
        for row in missing:
            delta(row).orphans += 1
    waiting = [m for m in _missing_in({t for t, _ in new}) if (m.trace_id, m.parent_span_id) in new]
    if waiting:
        for cycle in _cycles_through_stored(new, waiting):
            # Counted on the run of the span that closed it (stored members are
            # spans of that run too, or of none).
            delta(new[cycle[0]]).cycles += len(cycle)
        _sql(f"DELETE FROM {_table(MissingParent)} WHERE id IN ({_marks(len(waiting))})",
             [m.id for m in waiting])  # fmt: skip
        for m in waiting:
            delta({"workflow_id": m.workflow_id, "run_id": m.run_id}).orphans -= 1
    if adopted:
        _retie_missing(adopted, delta)


def _retie_missing(adopted: Sequence[Row], delta: Any) -> None:
    """Stored spans that this batch tied to a run take their missing parent with them."""
    tied = {(r["trace_id"], r["span_id"]): r for r in adopted}
    moves: dict[RunKey, list[int]] = {}
    for m in _missing_in({t for t, _ in tied}):
        row = tied.get((m.trace_id, m.span_id))
        if row is None or (row["workflow_id"], row["run_id"]) == (m.workflow_id, m.run_id):
            continue
        delta({"workflow_id": m.workflow_id, "run_id": m.run_id}).orphans -= 1
        delta(row).orphans += 1
        moves.setdefault((row["workflow_id"], row["run_id"]), []).append(m.id)
    for (workflow_id, run_id), ids in moves.items():
        _sql(f"UPDATE {_table(MissingParent)} SET workflow_id = {_marks(1)}, "
             f"run_id = {_marks(1)} WHERE id IN ({_marks(len(ids))})",
             [workflow_id, run_id, *ids])  # fmt: skip


def _table(model: Any) -> str:
    return str(connection.ops.quote_name(model._meta.db_table))


def _marks(count: int) -> str:
    return ", ".join(["?" if connection.vendor == "sqlite" else "%s"] * count)


def _sql(query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    # wrap_database_errors: sqlite3's errors become Django's (a locked database
    # is a DatabaseError, which the receiver answers with 503).
    with connection.cursor() as wrapper, connection.wrap_database_errors:
        # On SQLite the plain DB-API cursor: Django's wrapper rewrites every %s.
        cursor = connection.connection.cursor() if connection.vendor == "sqlite" else wrapper
        cursor.execute(query, list(params))
        return list(cursor.fetchall()) if cursor.description else []


def _insert_missing(rows: Sequence[Row]) -> None:
    columns = ("trace_id", "parent_span_id", "span_id", "workflow_id", "run_id", "received_ns")
    received_ns = time.time_ns()
    params: list[Any] = []
    for row in rows:
        params += [row["trace_id"], row["parent_span_id"], row["span_id"], row["workflow_id"],
                   row["run_id"], received_ns]  # fmt: skip
    values = ", ".join([f"({_marks(len(columns))})"] * len(rows))
    _sql(f"INSERT INTO {_table(MissingParent)} ({', '.join(columns)}) VALUES {values} "
         "ON CONFLICT (trace_id, span_id) DO NOTHING", params)  # fmt: skip


def _missing_in(traces: set[str]) -> list[MissingParent]:
    """MissingParent rows of these traces (the table holds few rows)."""
    if not traces:
        return []
    found = _sql(
        "SELECT id, trace_id, parent_span_id, span_id, workflow_id, run_id, received_ns "
        f"FROM {_table(MissingParent)} WHERE trace_id IN ({_marks(len(traces))})",
        list(traces),
    )
    return [
        MissingParent(id=i, trace_id=t, parent_span_id=p, span_id=s, workflow_id=w, run_id=r,
                      received_ns=n)
        for i, t, p, s, w, r, n in found
    ]  # fmt: skip


def _stored_keys(keys: set[SpanKey]) -> set[SpanKey]:
    if not keys:
        return set()
    traces = sorted({t for t, _ in keys})
    spans = sorted({s for _, s in keys})
    found = _sql(
        f"SELECT trace_id, span_id FROM {_table(Span)} WHERE trace_id IN ({_marks(len(traces))}) "
        f"AND span_id IN ({_marks(len(spans))})",
        [*traces, *spans],
    )
    return {key for key in found if key in keys}


def _cycles_in(nodes: dict[SpanKey, Row]) -> list[list[SpanKey]]:
    """Parent cycles among these spans (a span that is its own parent is one)."""
    parents = {
        key: (key[0], row["parent_span_id"]) for key, row in nodes.items() if row["parent_span_id"]
    }
    # Only spans whose parent is among them can be in a cycle; trim the others
    # away leaf-up until nothing changes (most batches end up empty here).
    inside = {key: parent for key, parent in parents.items() if parent in parents}
    while True:
        kept = {key: parent for key, parent in inside.items() if parent in inside}
        if len(kept) == len(inside):
            break
        inside = kept
    cycles: list[list[SpanKey]] = []
    done: set[SpanKey] = set()
    for start in inside:
        if start in done:
            continue
        path: list[SpanKey] = []
        on_path: set[SpanKey] = set()
        key = start
        while key in inside and key not in done and key not in on_path:
            on_path.add(key)
            path.append(key)
            key = inside[key]
        if key in on_path:
            cycles.append(path[path.index(key) :])
        done.update(path)
    return cycles


def _cycles_through_stored(
    new: dict[SpanKey, Row], waiting: Sequence[MissingParent]
) -> list[list[SpanKey]]:
    """Cycles closed by this batch through spans stored earlier.

    A cycle needs every member stored; its last member to arrive has a stored
    child that was waiting for it. So walk up from each new span that a stored
    span waited for: reaching that child again is a cycle. All walks advance
    together, one step and at most one query per round, MAX_CYCLE_WALK rounds:
    a sender's deep chains cost a bounded number of queries per batch.
    """
    parents: dict[SpanKey, str] = {key: row["parent_span_id"] for key, row in new.items()}
    walks: dict[SpanKey, list[SpanKey]] = {
        (m.trace_id, m.span_id): [(m.trace_id, m.parent_span_id)] for m in waiting
    }
    cycles: list[list[SpanKey]] = []
    for _ in range(MAX_CYCLE_WALK):
        if not walks:
            break
        unknown = {path[-1] for path in walks.values() if path[-1] not in parents}
        if unknown:
            found = _stored_parents(unknown)
            for key in unknown:
                parents[key] = found.get(key, "")
        advanced: dict[SpanKey, list[SpanKey]] = {}
        for child, path in walks.items():
            parent = parents.get(path[-1], "")
            if not parent:
                continue
            step = (path[-1][0], parent)
            if step == child:
                cycles.append([*path, child])
            elif step not in path:  # a cycle that does not pass through this child
                advanced[child] = [*path, step]
        walks = advanced
    return cycles


def _stored_parents(keys: set[SpanKey]) -> dict[SpanKey, str]:
    query = Span.objects.filter(
        trace_id__in={t for t, _ in keys}, span_id__in={s for _, s in keys}
    ).values_list("trace_id", "span_id", "parent_span_id")
    return {(t, s): p for t, s, p in query if (t, s) in keys}


def apply(summary: RunSummary, delta: Delta | None, stored_now: int, now_ns: int) -> None:
    """Fold a batch's health into the run's summary (before its closed_ns moves)."""
    if summary.closed_ns is not None and now_ns > summary.closed_ns + LATE_AFTER_CLOSE_NS:
        summary.late_spans += stored_now
    if delta is not None:
        summary.duplicate_spans += delta.duplicates
        summary.cycle_spans += delta.cycles
        summary.orphan_spans = max(summary.orphan_spans + delta.orphans, 0)
        if delta.closed_ns is not None:
            summary.closed_ns = max(summary.closed_ns or 0, delta.closed_ns)
    summary.health_problems = problems_of(summary)


def problems_of(summary: RunSummary) -> int:
    # Orphans of an open run are in flight (exporters send children first).
    orphans = summary.orphan_spans if summary.closed_ns is not None else 0
    return (
        orphans
        + summary.cycle_spans
        + summary.duplicate_spans
        + summary.late_spans
        + summary.history_problems
    )


# -- on the run page ------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    key: str
    title: str
    meaning: str
    fix: str


PROBLEMS = [
    Problem(
        "orphans",
        "Spans whose parent is not stored",
        "These spans name a parent span that never reached Loomview, so the trace "
        "tree shows them at the top level and cannot say which agent or activity "
        "they belong to.",
        "Export every span of the trace to the same endpoint, and flush on shutdown "
        "(a worker killed before its batch processor exported loses the parents it "
        "held). Sampling must keep whole traces: use a parent-based sampler.",
    ),
    Problem(
        "cycles",
        "Spans in a parent cycle",
        "Following these spans' parents leads back to themselves: no tool can place "
        "them in a tree. Loomview shows them at the top level.",
        "A span's parent must be a span that started before it. Look for "
        "instrumentation that sets the parent by hand, or reuses a span context "
        "after its span ended.",
    ),
    Problem(
        "duplicates",
        "Span ids that arrived twice with different content",
        "A second span arrived with the id of a stored one but another name, parent "
        "or time. Collectors keep the first copy and drop the second, so the later "
        "span is lost everywhere.",
        "Span ids must be unique. Deterministic ids (Temporal's replay-safe tracing) "
        "must also differ between runs: a reset run replays its original's ids. "
        "Mix the run id into generated ids, as the bundled worker does "
        "(telemetry/run_ids.py).",
    ),
    Problem(
        "late",
        "Spans that arrived after the run closed",
        "These spans were received more than 10 s after the run's end: the live page "
        "and any collector that exported the run earlier did not have them.",
        "Lower the batch span processor's delay (OTEL_BSP_SCHEDULE_DELAY), force a "
        "flush when a worker stops, and keep workflow spans from being held until "
        "the workflow completes.",
    ),
    Problem(
        "attempts_without_span",
        "Model attempts in the history that no span covers",
        "Temporal ran these model call attempts, but no span reports them: their "
        "tokens, input and output are unknown, and the timeline draws them from "
        "the history alone (hatched).",
        "Trace inside the model activity (the Agents SDK bridge, or OpenInference's "
        "instrumentor on the activity worker too), and export from every worker "
        "that runs model activities, including a separate model task queue.",
    ),
    Problem(
        "spans_without_event",
        "Spans that no history event explains",
        "These spans name an activity this run's history does not have: spans of "
        "another run with the same ids, or an activity id the instrumentation made up.",
        "Put the workflow's run id and the activity id on activity spans "
        "(temporal.run.id, temporal.activity.id, or Temporal's own interceptor).",
    ),
    Problem(
        "waiting",
        "Spans still waiting for an ancestor",
        "These spans are in this run's traces but carry no workflow or run id, and "
        "their ancestor that would tie them to a run has not arrived. They are "
        "held back from forwarding for a moment, then sent without Temporal ids.",
        "Make sure the workflow and activity spans that carry the Temporal ids are "
        "exported too, and not much later than their children.",
    ),
]
PROBLEM_KEYS = [p.key for p in PROBLEMS]
# Written back to the summary: what the runs list cannot learn at ingest.
HISTORY_KEYS = ("attempts_without_span", "spans_without_event", "waiting")


@dataclass
class Health:
    spans_stored: int = 0  # every span in the run's traces, tied to a run or not
    spans_tied: int = 0  # the run's own spans
    # The run's spans whose parent lives in another run (a reset's base, a
    # parent workflow, a client): not a problem, but worth knowing.
    cross_run_parents: int = 0
    # A run stopped from outside (terminated, timed out; the base of a reset made
    # while it was open): its spans whose parent is not stored sit under spans the
    # workflow had open and never ended, so never sent. Not an instrumentation fault.
    unended_parents: int = 0
    stopped: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    # A few span ids per problem, for the panel's links.
    examples: dict[str, list[str]] = field(default_factory=dict)
    history_checked: bool = False

    @property
    def problems(self) -> list[tuple[Problem, int]]:
        return [(p, self.counts[p.key]) for p in PROBLEMS if self.counts.get(p.key)]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "spans_stored": self.spans_stored,
            "spans_tied": self.spans_tied,
            "cross_run_parents": self.cross_run_parents,
            "under_unended_parents": self.unended_parents,
            "history_checked": self.history_checked,
            "ok": self.ok,
            "problems": {key: self.counts.get(key, 0) for key in PROBLEM_KEYS},
            "examples": {key: ids for key, ids in self.examples.items() if ids},
        }


def _example(health: Health, key: str, span_id: str) -> None:
    found = health.examples.setdefault(key, [])
    if len(found) < 5:
        found.append(span_id)


@dataclass
class StoreFacts:
    """What the run's health needs from the store beyond its spans (read once, on load)."""

    spans_stored: int = 0
    waiting: int = 0
    # Parents of the run's spans that are stored, but under another run.
    parents_elsewhere: set[SpanKey] = field(default_factory=set)
    duplicates: int = 0
    late: int = 0
    has_summary: bool = False


def store_facts(spans: Sequence[Row], workflow_id: str, run_id: str) -> StoreFacts:
    facts = StoreFacts()
    nodes = {(r["trace_id"], r["span_id"]) for r in spans}
    traces = {t for t, _ in nodes}
    if traces:
        facts.spans_stored = Span.objects.filter(trace_id__in=traces).count()
        facts.waiting = Span.objects.filter(workflow_id="", trace_id__in=traces).count()
    outside = {
        (r["trace_id"], r["parent_span_id"])
        for r in spans
        if r["parent_span_id"] and (r["trace_id"], r["parent_span_id"]) not in nodes
    }
    facts.parents_elsewhere = _stored_keys(outside)
    summary = RunSummary.objects.filter(workflow_id=workflow_id, run_id=run_id).first()
    if summary is not None:
        facts.has_summary = True
        facts.duplicates = summary.duplicate_spans
        facts.late = summary.late_spans
    return facts


def report(
    spans: Sequence[Row],
    story: RunStory | None,
    facts: StoreFacts,
    activity_ids: set[str] | None,
    stopped: bool = False,
) -> Health:
    """The run's health from its spans (tied to it), what the store adds, and, if known,
    its history's story. ``activity_ids`` are the activities the history knows (None
    without a history); ``stopped``: the history says the run was terminated or timed
    out. Pure: the store was read into ``facts``."""
    health = Health(
        spans_tied=len(spans),
        spans_stored=facts.spans_stored,
        history_checked=activity_ids is not None,
        stopped=stopped,
    )
    counts = dict.fromkeys(PROBLEM_KEYS, 0)
    counts["waiting"] = facts.waiting
    counts["duplicates"] = facts.duplicates
    counts["late"] = facts.late
    nodes: dict[SpanKey, Row] = {(r["trace_id"], r["span_id"]): r for r in spans}
    for row in spans:
        parent = (row["trace_id"], row["parent_span_id"])
        if not row["parent_span_id"] or parent in nodes:
            continue
        if parent in facts.parents_elsewhere:
            health.cross_run_parents += 1
        elif stopped:
            health.unended_parents += 1
        else:
            counts["orphans"] += 1
            _example(health, "orphans", row["span_id"])
    for cycle in _cycles_in(nodes):
        counts["cycles"] += len(cycle)
        for key in cycle:
            _example(health, "cycles", key[1])
    if story is not None and activity_ids is not None:
        for call in story.model_calls:
            if not call.event_known:
                continue
            for attempt in call.attempts:
                if not attempt.matched and attempt.outcome not in ("running", "scheduled"):
                    counts["attempts_without_span"] += 1
        for row in spans:
            activity_id = row.get("activity_id")
            if activity_id and activity_id not in activity_ids and _is_activity_span(row):
                counts["spans_without_event"] += 1
                _example(health, "spans_without_event", row["span_id"])
    health.counts = counts
    return health


def _is_activity_span(row: Row) -> bool:
    # Spans that *are* an activity's work, not descendants that inherited its id.
    return (
        row["kind"] in MODEL_KINDS
        or row["name"].startswith((vocab.RUN_ACTIVITY_PREFIX, "StartActivity:"))
        or (row.get("attempt") is not None and not row.get("inherited"))
    )


def record_from_page(workflow_id: str, run_id: str, report: Health, close_ns: int | None) -> None:
    """Keep what the run page learned that ingest could not: the history's close time
    (for spans that do not say when the run closed) and what only the history
    shows, so the runs list flags the run as its page does."""
    summary = RunSummary.objects.filter(workflow_id=workflow_id, run_id=run_id).first()
    if summary is None:
        return
    changed: list[str] = []
    if close_ns is not None and summary.closed_ns is None:
        summary.closed_ns = close_ns
        changed.append("closed_ns")
    # The exact count from the run's spans corrects what ingest kept incrementally.
    if summary.orphan_spans != report.counts.get("orphans", 0):
        summary.orphan_spans = report.counts.get("orphans", 0)
        changed.append("orphan_spans")
    if report.history_checked:
        found = {key: report.counts.get(key, 0) for key in HISTORY_KEYS}
        if summary.history_health != found:
            summary.history_health = found
            summary.history_problems = sum(found.values())
            changed += ["history_health", "history_problems"]
    problems = problems_of(summary)
    if problems != summary.health_problems:
        summary.health_problems = problems
        changed.append("health_problems")
    if changed:
        summary.save(update_fields=changed)


def unhealthy(qs: Any) -> Any:
    """A RunSummary queryset narrowed to runs with problems."""
    return qs.filter(health_problems__gt=0)


def flagged(keys: Iterable[RunKey]) -> dict[RunKey, int]:
    """Problem counts of these runs, for the runs list (from summaries only)."""
    wanted = set(keys)
    if not wanted:
        return {}
    query = RunSummary.objects.filter(
        Q(workflow_id__in={w for w, _ in wanted}) & Q(run_id__in={r for _, r in wanted})
    ).values_list("workflow_id", "run_id", "health_problems")
    return {(w, r): n for w, r, n in query if (w, r) in wanted and n}
