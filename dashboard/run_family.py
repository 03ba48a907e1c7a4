"""A run among the runs that Temporal's operations make of one story.

- **Reset:** a reset run's history starts with a copy of its base run's history;
  the model calls before the reset point were made (and traced) by the base
  run. The run page inherits their spans, marked and linked, so the run shows
  whole and its totals match its own result.
- **Continue-as-new, retries, cron:** runs of one workflow id linked
  previous → next (a chain); the chain's totals.
- **Child workflows:** a parent's children, each rolled up with its own chain
  (a child retried is two runs) and its descendants.

What a history says is kept in ``tracing.models.RunLineage`` (tracing.lineage),
so the runs list shows the same figures without reading histories: a reset
run's row includes the calls it inherited, and a parent's row says what its
children add. Figures here come from the run summaries, as the list's do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Sum
from temporalio.api.history.v1 import History, HistoryEvent

from dashboard import temporal
from telemetry import vocab
from tracing import lineage, pricing, store
from tracing.lineage import Lineage
from tracing.models import RunLineage, RunSummary, Span

logger = logging.getLogger(__name__)

RunKey = tuple[str, str]
Row = dict[str, Any]

# How far a chain (continue-as-new, retries) is followed either way.
MAX_CHAIN = 50
# How deep children of children are rolled up.
MAX_GENERATIONS = 6
# Histories the runs list may read per request to learn which runs are resets.
LIST_RESOLVE_LIMIT = 8


@dataclass
class Figures:
    runs: int = 0
    model_calls: int = 0
    attempts: int = 0
    failed_attempts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    # Tokens per model, for the cost.
    by_model: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add(self, other: Figures) -> None:
        self.runs += other.runs
        self.model_calls += other.model_calls
        self.attempts += other.attempts
        self.failed_attempts += other.failed_attempts
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        for model, (tin, tout) in other.by_model.items():
            was = self.by_model.get(model, (0, 0))
            self.by_model[model] = (was[0] + tin, was[1] + tout)

    @property
    def cost(self) -> Decimal | None:
        if not self.by_model:
            return None
        cost = pricing.estimate(self.by_model, settings.LOOMVIEW_MODEL_PRICES)
        return cost.quantize(Decimal("0.0001")) if cost is not None else None

    def as_json(self) -> dict[str, Any]:
        cost = self.cost
        return {
            "runs": self.runs,
            "model_calls": self.model_calls,
            "attempts": self.attempts,
            "failed_attempts": self.failed_attempts,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": None if cost is None else str(cost),
        }


@dataclass
class RunRef:
    workflow_id: str
    run_id: str
    workflow_type: str = ""
    status: str = ""
    figures: Figures | None = None
    # For children: how many runs the figures cover (the child's retries too).
    note: str = ""

    @property
    def key(self) -> RunKey:
        return self.workflow_id, self.run_id

    def as_json(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "run_id": self.run_id,
            "workflow_type": self.workflow_type or None,
            "status": self.status or None,
            "figures": self.figures.as_json() if self.figures is not None else None,
        }


@dataclass
class Family:
    lineage: Lineage = field(default_factory=Lineage)
    # A reset run's inherited spans (each row marked with "inherited_from").
    inherited: list[Row] = field(default_factory=list)
    # Runs reset from this one.
    reset_to: list[str] = field(default_factory=list)
    # The continue-as-new / retry chain in order, this run included.
    chain: list[RunKey] = field(default_factory=list)
    # continued_as_new, retry or cron_schedule.
    chain_kind: str = ""
    chain_totals: Figures | None = None
    parent: RunKey | None = None
    children: list[RunRef] = field(default_factory=list)
    children_totals: Figures | None = None
    # "Run again" (dashboard.actions): a new workflow id started with the same input.
    again_of: RunKey | None = None
    again_as: list[RunKey] = field(default_factory=list)

    @property
    def position(self) -> int:
        return next((i for i, key in enumerate(self.chain) if key == self._me), 0)

    _me: RunKey = ("", "")

    @property
    def previous(self) -> RunKey | None:
        index = self.position
        return self.chain[index - 1] if index > 0 else None

    @property
    def next(self) -> RunKey | None:
        index = self.position
        return self.chain[index + 1] if index + 1 < len(self.chain) else None

    @property
    def has_any(self) -> bool:
        return bool(
            self.lineage.is_reset
            or self.reset_to
            or len(self.chain) > 1
            or self.parent
            or self.children
            or self.again_of
            or self.again_as
        )

    def as_json(self) -> dict[str, Any]:
        def ref(key: RunKey | None) -> dict[str, str] | None:
            return None if key is None else {"workflow_id": key[0], "run_id": key[1]}

        return {
            "reset_from": (
                {
                    "run_id": self.lineage.reset_from_run_id,
                    "reset_event_id": self.lineage.reset_event_id,
                    "inherited_activities": self.lineage.inherited_activities,
                }
                if self.lineage.is_reset
                else None
            ),
            "reset_to": self.reset_to,
            "chain": {
                "runs": [ref(key) for key in self.chain],
                "previous": ref(self.previous),
                "next": ref(self.next),
                "previous_kind": self.lineage.previous_kind or None,
                "kind": self.chain_kind or None,
                "totals": self.chain_totals.as_json() if self.chain_totals else None,
            },
            "parent": ref(self.parent),
            "children": [child.as_json() for child in self.children],
            "children_totals": (
                self.children_totals.as_json() if self.children_totals is not None else None
            ),
            "run_again_of": ref(self.again_of),
            "run_again_as": [ref(key) for key in self.again_as],
        }


# -- figures from the store ------------------------------------------------------


def figures(keys: Iterable[RunKey]) -> dict[RunKey, Figures]:
    """Each run's own figures from its summary, plus what a reset run inherited."""
    wanted = set(keys)
    if not wanted:
        return {}
    found = {key: Figures(runs=1) for key in wanted}
    summaries = RunSummary.objects.filter(
        workflow_id__in={w for w, _ in wanted}, run_id__in={r for _, r in wanted}
    ).only("workflow_id", "run_id", "model_calls", "attempts", "failed_attempts")
    for summary in summaries:
        key = (summary.workflow_id, summary.run_id)
        if key in found:
            own = found[key]
            own.model_calls = summary.model_calls
            own.attempts = summary.attempts
            own.failed_attempts = summary.failed_attempts
    for (workflow_id, run_id, model), (tin, tout) in _tokens(wanted).items():
        own = found[(workflow_id, run_id)]
        own.tokens_in += tin
        own.tokens_out += tout
        own.by_model[model] = (tin, tout)
    for key, inherited in inherited_figures(wanted).items():
        found[key].add(inherited)
        found[key].runs -= inherited.runs
    return found


def _tokens(keys: set[RunKey], activities: set[str] | None = None) -> dict[tuple[str, ...], Any]:
    query = Span.objects.filter(
        workflow_id__in={w for w, _ in keys},
        run_id__in={r for _, r in keys},
        kind__in=vocab.MODEL_KINDS,
    )
    if activities is not None:
        query = query.filter(activity_id__in=activities)
    sums = (
        query.values_list("workflow_id", "run_id", "activity_id", "model")
        .annotate(tin=Sum("tokens_in"), tout=Sum("tokens_out"))
        .order_by()
    )
    out: dict[tuple[str, ...], Any] = {}
    for workflow_id, run_id, activity_id, model, tin, tout in sums:
        if (workflow_id, run_id) not in keys:
            continue
        key = (
            (workflow_id, run_id, model)
            if activities is None
            else (workflow_id, run_id, activity_id, model)
        )
        was = out.get(key, (0, 0))
        out[key] = (was[0] + (tin or 0), was[1] + (tout or 0))
    return out


def inherited_figures(keys: Iterable[RunKey]) -> dict[RunKey, Figures]:
    """What each reset run among these inherited from the runs before its reset point,
    as far as their histories have been read (RunLineage)."""
    resets = {
        key: row
        for key, row in lineage.for_runs(keys).items()
        if row.reset_from_run_id and row.inherited_activities
    }
    if not resets:
        return {}
    found: dict[RunKey, Figures] = {}
    for key, row in resets.items():
        sources = _inherited_sources(key[0], key[1], row)
        total = Figures(runs=len(sources))
        for source_run, activity_ids in sources:
            total.add(_activity_figures(key[0], source_run, set(activity_ids)))
        found[key] = total
    return found


def _inherited_sources(
    workflow_id: str, run_id: str, row: RunLineage
) -> list[tuple[str, list[str]]]:
    """(run id, activity ids): where a reset run's inherited activities were made."""
    bases: dict[str, Lineage] = {}
    base = row.reset_from_run_id
    for _ in range(lineage.MAX_RESET_DEPTH):
        if not base or base in bases:
            break
        known = RunLineage.objects.filter(workflow_id=workflow_id, run_id=base).first()
        bases[base] = _as_lineage(known) if known is not None else Lineage()
        base = known.reset_from_run_id if known is not None else ""
    return lineage.reset_chain(workflow_id, run_id, _as_lineage(row), bases)


def _as_lineage(row: RunLineage) -> Lineage:
    return Lineage(
        parent_workflow_id=row.parent_workflow_id,
        parent_run_id=row.parent_run_id,
        previous_run_id=row.previous_run_id,
        previous_kind=row.previous_kind,
        next_run_id=row.next_run_id,
        reset_from_run_id=row.reset_from_run_id,
        reset_event_id=row.reset_event_id,
        reset_ns=row.reset_ns,
        inherited_activities=list(row.inherited_activities or []),
    )


def _activity_figures(workflow_id: str, run_id: str, activity_ids: set[str]) -> Figures:
    figures = Figures(runs=1)
    summary = RunSummary.objects.filter(workflow_id=workflow_id, run_id=run_id).first()
    if summary is not None:
        for activity_id, attempts in (summary.model_attempts or {}).items():
            if activity_id not in activity_ids:
                continue
            figures.model_calls += 1
            figures.attempts += len(attempts)
            figures.failed_attempts += sum(1 for failed in attempts.values() if failed)
    for key, (tin, tout) in _tokens({(workflow_id, run_id)}, activity_ids).items():
        model = key[3]
        figures.tokens_in += tin
        figures.tokens_out += tout
        was = figures.by_model.get(model, (0, 0))
        figures.by_model[model] = (was[0] + tin, was[1] + tout)
    return figures


def _successor_map(keys: set[RunKey]) -> dict[RunKey, RunKey]:
    """Runs that continue these (a retry, continue-as-new, cron): successor → run."""
    if not keys:
        return {}
    rows = RunLineage.objects.filter(
        workflow_id__in={w for w, _ in keys}, previous_run_id__in={r for _, r in keys}
    ).values_list("workflow_id", "run_id", "previous_run_id")
    return {(w, r): (w, previous) for w, r, previous in rows if (w, previous) in keys}


def stories(roots: Iterable[RunKey]) -> dict[RunKey, list[RunKey]]:
    """Each root's runs after and below it: the runs that continue it (a child
    retried is two runs), its children, and theirs in turn, bounded."""
    owner: dict[RunKey, RunKey] = {}
    found: dict[RunKey, list[RunKey]] = {}
    for root in roots:
        owner[root] = root
        found[root] = []
    frontier = set(found)
    for _ in range(MAX_CHAIN + MAX_GENERATIONS):
        if not frontier:
            break
        links = list(_successor_map(frontier).items())
        for parent, kids in lineage.children_of(frontier).items():
            links.extend((kid, parent) for kid in kids)
        frontier = set()
        for run, source in links:
            if run in owner:
                continue
            owner[run] = owner[source]
            found[owner[source]].append(run)
            frontier.add(run)
    return found


def first_runs(runs: Iterable[RunKey]) -> list[RunKey]:
    """These runs without those that continue another of them: a child that was
    retried is one child (two runs), whose retry also names the parent."""
    runs = list(dict.fromkeys(runs))
    known = lineage.for_runs(runs)
    present = set(runs)
    return [
        run
        for run in runs
        if not (run in known and (run[0], known[run].previous_run_id) in present)
    ]


def rolled_up(parents: Iterable[RunKey]) -> dict[RunKey, tuple[int, Figures]]:
    """What each parent's children add, each child with its whole story (retries,
    continuations, children of its own): (children, figures). The parent's own
    figures are not included."""
    kids = {parent: first_runs(found) for parent, found in lineage.children_of(parents).items()}
    if not kids:
        return {}
    every_kid = {kid for found in kids.values() for kid in found}
    below = stories(every_kid)
    each = figures(every_kid | {run for runs in below.values() for run in runs})
    totals: dict[RunKey, tuple[int, Figures]] = {}
    for parent, found in kids.items():
        total = Figures()
        for kid in found:
            for run in [kid, *below.get(kid, [])]:
                total.add(each.get(run, Figures(runs=1)))
        totals[parent] = (len(found), total)
    return totals


# -- the run page ----------------------------------------------------------------


async def load(
    workflow_id: str, run_id: str, history: History | None, own_spans: Sequence[Row]
) -> Family:
    """The run's family, from its history when there is one, else from what is stored."""
    events: Sequence[HistoryEvent] = history.events if history is not None else ()
    if events:
        found = lineage.from_history(events)
        await sync_to_async(lineage.record)(workflow_id, run_id, found)
    else:
        row = await sync_to_async(_stored_lineage)(workflow_id, run_id)
        found = _as_lineage(row) if row is not None else Lineage()
    family = Family(lineage=found)
    family._me = (workflow_id, run_id)
    if found.is_reset:
        family.inherited = await _inherited_spans(workflow_id, run_id, found)
    family.chain, family.chain_kind = await _chain(workflow_id, run_id, found)
    await sync_to_async(_fill_from_store)(family, workflow_id, run_id)
    return family


def _stored_lineage(workflow_id: str, run_id: str) -> RunLineage | None:
    return RunLineage.objects.filter(workflow_id=workflow_id, run_id=run_id).first()


async def _history_lineage(workflow_id: str, run_id: str) -> Lineage | None:
    from dashboard import run_page

    try:
        history = await run_page.load_history(workflow_id, run_id)
    except temporal.TemporalUnavailable:
        return None
    if history is None:
        return None
    found = lineage.from_history(history.events)
    await sync_to_async(lineage.record)(workflow_id, run_id, found)
    return found


async def _inherited_spans(workflow_id: str, run_id: str, found: Lineage) -> list[Row]:
    bases: dict[str, Lineage] = {}
    base = found.reset_from_run_id
    for _ in range(lineage.MAX_RESET_DEPTH):
        if not base or base in bases or base == run_id:
            break
        known = await _history_lineage(workflow_id, base)
        if known is None:
            row = await sync_to_async(_stored_lineage)(workflow_id, base)
            known = _as_lineage(row) if row is not None else Lineage()
        bases[base] = known
        if not (set(found.inherited_activities) & set(known.inherited_activities)):
            break
        base = known.reset_from_run_id
    rows: list[Row] = []
    for source, activity_ids in lineage.reset_chain(workflow_id, run_id, found, bases):
        spans = await sync_to_async(store.spans_of_activities)(workflow_id, source, activity_ids)
        if any(s["kind"] in vocab.MODEL_KINDS and not s["agent"] for s in spans):
            # The agent a model call ran under is an ancestor span in the base run.
            base_spans = await sync_to_async(store.spans_for_run)(workflow_id, source)
            _name_agents(spans, {r["span_id"]: r for r in base_spans})
        for span in spans:
            span["inherited_from"] = source
        rows.extend(spans)
    return rows


def _name_agents(spans: list[Row], by_id: dict[str, Row]) -> None:
    for span in spans:
        if span["kind"] not in vocab.MODEL_KINDS or span["agent"]:
            continue
        node = by_id.get(span["parent_span_id"])
        for _ in range(64):  # bounded: parents come from senders
            if node is None:
                break
            if node["agent"]:
                span["agent"] = node["agent"]
                break
            node = by_id.get(node["parent_span_id"])


async def _chain(workflow_id: str, run_id: str, found: Lineage) -> tuple[list[RunKey], str]:
    """The runs before and after this one through continue-as-new, retries or cron, and
    how they follow each other (Temporal's initiator: continued_as_new, retry, ...)."""
    kinds = [found.previous_kind]
    before: list[RunKey] = []
    previous = found.previous_run_id
    seen = {run_id}
    while previous and previous not in seen and len(before) < MAX_CHAIN:
        seen.add(previous)
        before.append((workflow_id, previous))
        step = await _edges(workflow_id, previous)
        previous = step.previous_run_id if step is not None else ""
    after: list[RunKey] = []
    following = found.next_run_id
    while following and following not in seen and len(after) < MAX_CHAIN:
        seen.add(following)
        after.append((workflow_id, following))
        step = await _edges(workflow_id, following)
        following = step.next_run_id if step is not None else ""
        kinds.append(step.previous_kind if step is not None else "")
    chain = [*reversed(before), (workflow_id, run_id), *after]
    return chain, next((kind for kind in kinds if kind), "")


async def _edges(workflow_id: str, run_id: str) -> Lineage | None:
    """A run's previous and next run: stored, or from its first and last events."""
    row = await sync_to_async(_stored_lineage)(workflow_id, run_id)
    if row is not None and (row.next_run_id or row.history_read):
        return _as_lineage(row)
    try:
        first, close = await temporal.fetch_edges(workflow_id, run_id)
    except (temporal.TemporalUnavailable, temporal.RunNotFound):
        return _as_lineage(row) if row is not None else None
    found = lineage.from_history([first, close] if close is not None else [first])
    await sync_to_async(_record_edges)(workflow_id, run_id, found)
    return found


def _record_edges(workflow_id: str, run_id: str, found: Lineage) -> None:
    values = {
        "previous_run_id": found.previous_run_id,
        "previous_kind": found.previous_kind,
        "next_run_id": found.next_run_id,
        "parent_workflow_id": found.parent_workflow_id,
        "parent_run_id": found.parent_run_id,
    }
    row, created = RunLineage.objects.get_or_create(
        workflow_id=workflow_id, run_id=run_id, defaults=values
    )
    if created:
        return
    changed = [k for k, v in values.items() if v and getattr(row, k) != v]
    if changed:
        for name in changed:
            setattr(row, name, values[name])
        row.save(update_fields=[*changed, "updated_at"])


def _fill_from_store(family: Family, workflow_id: str, run_id: str) -> None:
    from dashboard import actions

    me = (workflow_id, run_id)
    family.reset_to = lineage.reset_to(workflow_id, run_id)
    for link in actions.run_links(workflow_id, run_id, None):
        if link.label == "Run again of":
            family.again_of = (link.workflow_id, link.run_id)
        elif link.label == "Run again as":
            family.again_as.append((link.workflow_id, link.run_id))
    if family.lineage.parent_run_id:
        family.parent = (family.lineage.parent_workflow_id, family.lineage.parent_run_id)
    if len(family.chain) > 1:
        each = figures(family.chain)
        total = Figures()
        for key in family.chain:
            total.add(each.get(key, Figures(runs=1)))
        family.chain_totals = total
    kids = first_runs([*family.lineage.children, *lineage.children_of([me]).get(me, [])])
    if not kids:
        return
    below = stories(kids)
    everyone = set(kids) | {run for runs in below.values() for run in runs}
    each = figures(everyone)
    types = {
        (s.workflow_id, s.run_id): s.workflow_type
        for s in RunSummary.objects.filter(
            workflow_id__in={w for w, _ in everyone}, run_id__in={r for _, r in everyone}
        ).only("workflow_id", "run_id", "workflow_type")
    }
    totals = Figures()
    for kid in kids:
        figure = Figures()
        for run in [kid, *below.get(kid, [])]:
            figure.add(each.get(run, Figures(runs=1)))
        note = f"{figure.runs} runs" if figure.runs > 1 else ""
        family.children.append(
            RunRef(kid[0], kid[1], types.get(kid, ""), figures=figure, note=note)
        )
        totals.add(figure)
    family.children_totals = totals


# -- the runs list -------------------------------------------------------------------


async def resolve_for_list(keys: Iterable[RunKey], workflow_runs: dict[str, int]) -> None:
    """Read the histories of runs that may be resets (their workflow id has other
    runs) and whose lineage is not known yet, a few per request; the rest follow on
    later requests. Each history is read once: the result is stored."""
    candidates = [key for key in keys if workflow_runs.get(key[0], 0) > 1]
    if not candidates:
        return
    known = await sync_to_async(lineage.for_runs)(candidates)
    unknown = [key for key in candidates if not (key in known and known[key].history_read)]
    if not unknown:
        return
    results = await asyncio.gather(
        *(_history_lineage(w, r) for w, r in unknown[:LIST_RESOLVE_LIMIT]),
        return_exceptions=True,
    )
    for key, result in zip(unknown, results, strict=False):
        if isinstance(result, BaseException):
            logger.info("no lineage for %s / %s: %s", key[0], key[1], result)
