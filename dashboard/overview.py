"""The fleet overview: charts over a time range, read from the rollups alone.

Ranges of a few hours are drawn at minute resolution from the per-run rollup
state (RunRollupState: few rows for a short window); longer ones from the
hourly rollup cells (Rollup, FailureRollup), with SQL sums over at most a few
thousand rows. Neither reads the span table. The window is aligned to the
step of the bars, so every bar, and the whole chart, covers exactly the runs
that started in it; each bar links to the runs list filtered the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django import forms
from django.conf import settings
from django.db import connection, transaction
from django.urls import reverse

from dashboard import temporal
from dashboard.runs import DATETIME_FORMATS, STATUSES, run_url
from tracing import rollups
from tracing.models import FailureRollup, Rollup, RunRollupState, datetime_to_ns

logger = logging.getLogger(__name__)

MINUTE = 60 * 10**9
HOUR = 60 * MINUTE
DAY = 24 * HOUR
RANGES = {"1h": HOUR, "24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
RANGE_CHOICES = [
    ("1h", "Last hour"),
    ("24h", "Last 24 h"),
    ("7d", "Last 7 days"),
    ("30d", "Last 30 days"),
    ("custom", "Custom…"),
]
DEFAULT_RANGE = "24h"
UNKNOWN = rollups.UNKNOWN_STATUS
TOP = 10
N_MEASURES = len(rollups.MEASURES)


def step_for(span_ns: int) -> int:
    """Bar width for a window: a few dozen bars, aligned to whole minutes or hours."""
    # Up to 6 h the bars are minutes, counted from the per-run state of the
    # window's runs; beyond, whole hours of the rollup cells.
    for limit, step in (
        (2 * HOUR, 2 * MINUTE),
        (6 * HOUR, 10 * MINUTE),
        (2 * DAY, HOUR),
        (8 * DAY, 6 * HOUR),
    ):
        if span_ns <= limit:
            return step
    return DAY


class OverviewForm(forms.Form):
    range = forms.ChoiceField(required=False, choices=RANGE_CHOICES, label="Range")
    since = forms.DateTimeField(required=False, input_formats=DATETIME_FORMATS, label="From")
    until = forms.DateTimeField(required=False, input_formats=DATETIME_FORMATS, label="To")
    type = forms.CharField(required=False, max_length=255, label="Workflow type")
    agent = forms.CharField(required=False, max_length=255)
    model = forms.CharField(required=False, max_length=255)
    queue = forms.CharField(required=False, max_length=255, label="Task queue")
    status = forms.ChoiceField(
        required=False,
        choices=[("", "Any status")]
        + [(s, s.replace("_", " ").capitalize()) for s in STATUSES]
        + [(UNKNOWN, "Unknown")],
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("range") == "custom":
            if not data.get("since"):
                self.add_error("since", "A custom range needs “From”.")
            since, until = data.get("since"), data.get("until")
            if since and until and since >= until:
                self.add_error("until", "“To” must be after “From”.")
        return data


@dataclass(frozen=True)
class Query:
    since_ns: int
    until_ns: int
    step_ns: int
    workflow_type: str = ""
    agent: str = ""
    model: str = ""
    task_queue: str = ""
    status: str | None = None  # None: any; "" the unknown status

    @property
    def buckets(self) -> list[int]:
        return list(range(self.since_ns, self.until_ns, self.step_ns))


def query_from(form: OverviewForm, now_ns: int) -> Query:
    data = form.cleaned_data if form.is_bound and hasattr(form, "cleaned_data") else {}
    choice = data.get("range") or DEFAULT_RANGE
    if choice == "custom" and data.get("since"):
        since = datetime_to_ns(data["since"])
        until = datetime_to_ns(data["until"]) if data.get("until") else now_ns
    else:
        span = RANGES.get(choice, RANGES[DEFAULT_RANGE])
        since, until = now_ns - span, now_ns
    step = step_for(max(until - since, MINUTE))
    since = since // step * step
    until = -(-until // step) * step
    status = data.get("status") or None
    return Query(
        since_ns=since,
        until_ns=until,
        step_ns=step,
        workflow_type=(data.get("type") or "").strip(),
        agent=(data.get("agent") or "").strip(),
        model=(data.get("model") or "").strip(),
        task_queue=(data.get("queue") or "").strip(),
        status="" if status == UNKNOWN else status,
    )


# -- reading the rollups ---------------------------------------------------------


@dataclass
class Grouped:
    """The rollups summed the ways the charts need them."""

    runs: dict[tuple[int, str], int] = field(default_factory=dict)  # (bucket, status)
    calls: dict[tuple[int, str], list[int]] = field(default_factory=dict)  # (bucket, model)
    by_agent: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (agent, model)
    by_type: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (type, model)
    failures: dict[str, int] = field(default_factory=dict)


def _add_into(target: dict[Any, list[int]], key: Any, values: Sequence[int]) -> None:
    vector = target.get(key)
    if vector is None:
        target[key] = list(values)
        return
    target[key] = [a + b for a, b in zip(vector, values, strict=True)]


def _width(step: int) -> int:
    return max(w for w in rollups.WIDTHS if step % w == 0)


def _where(q: Query, table: str) -> tuple[str, list[Any]]:
    clauses = ["width_ns = %s", "bucket_ns >= %s", "bucket_ns < %s"]
    params: list[Any] = [_width(q.step_ns), q.since_ns, q.until_ns]
    for column, value in (
        ("workflow_type", q.workflow_type),
        ("task_queue", q.task_queue),
    ):
        if value:
            clauses.append(f"{column} = %s")
            params.append(value)
    if q.status is not None:
        clauses.append("status = %s")
        params.append(q.status)
    return " AND ".join(clauses), params


def _call_where(q: Query) -> tuple[str, list[Any]]:
    where, params = _where(q, "")
    for column, value in (("agent", q.agent), ("model", q.model)):
        if value:
            where += f" AND {column} = %s"
            params.append(value)
        else:
            where += f" AND {column} <> %s"
            params.append(rollups.ANY)
    return where, params


def _hourly(q: Query) -> Grouped:
    grouped = Grouped()
    table = connection.ops.quote_name(Rollup._meta.db_table)
    sums = ", ".join(f"SUM({c})" for c in rollups.VALUES[1:])
    step = q.step_ns
    # Bars are whole cells of the width read (the step is a multiple of it):
    # a bar sums the cells of its buckets.
    same = step == _width(step)
    with connection.cursor() as cursor:
        where, params = _where(q, table)
        cursor.execute(
            f"SELECT bucket_ns, status, SUM(runs) FROM {table} WHERE {where} "
            "AND agent = %s AND model = %s GROUP BY bucket_ns, status",
            [*params, q.agent or rollups.ANY, q.model or rollups.ANY],
        )
        for bucket, status, runs in cursor.fetchall():
            key = (bucket // step * step, status)
            grouped.runs[key] = grouped.runs.get(key, 0) + int(runs)
        where, params = _call_where(q)
        cursor.execute(
            f"SELECT bucket_ns, model, {sums} FROM {table} WHERE {where} GROUP BY bucket_ns, model",
            params,
        )
        calls = grouped.calls
        for bucket, model, *values in cursor.fetchall():
            if same:
                calls[(bucket, model)] = list(map(int, values))
            else:
                _add_into(calls, (bucket // step * step, model), list(map(int, values)))
        # The agent and the workflow-type breakdowns from one scan.
        few = ", ".join(f"SUM({c})" for c in rollups.MEASURES[1:])
        cursor.execute(
            f"SELECT agent, workflow_type, model, {few} FROM {table} WHERE {where} "
            "GROUP BY agent, workflow_type, model",
            params,
        )
        for agent, workflow_type, model, *values in cursor.fetchall():
            measures = list(map(int, values))
            _add_into(grouped.by_agent, (agent, model), measures)
            _add_into(grouped.by_type, (workflow_type, model), measures)
        failures = connection.ops.quote_name(FailureRollup._meta.db_table)
        cursor.execute(
            f"SELECT message, SUM(count) FROM {failures} WHERE {where} GROUP BY message",
            params,
        )
        for message, count in cursor.fetchall():
            grouped.failures[message] = int(count)
    return grouped


def _states(q: Query) -> list[rollups.RunState]:
    qs = RunRollupState.objects.filter(start_ns__gte=q.since_ns, start_ns__lt=q.until_ns)
    if q.workflow_type:
        qs = qs.filter(workflow_type=q.workflow_type)
    if q.task_queue:
        qs = qs.filter(task_queue=q.task_queue)
    if q.status is not None:
        qs = qs.filter(status=q.status)
    return [
        rollups.RunState(
            s.workflow_id,
            s.run_id,
            s.workflow_type,
            s.task_queue,
            s.status,
            s.start_ns,
            s.end_ns,
            s.close_ns,
            set(s.agents),
            s.facts,
        )
        for s in qs.only(
            "workflow_id",
            "run_id",
            "workflow_type",
            "task_queue",
            "status",
            "start_ns",
            "end_ns",
            "close_ns",
            "agents",
            "facts",
        )
    ]


def _by_minute(q: Query) -> Grouped:
    """The same sums as _hourly, from the runs of a short window, per minute."""
    grouped = Grouped()
    want_agent, want_model = q.agent or rollups.ANY, q.model or rollups.ANY
    for state in _states(q):
        part = rollups.contribution(state, q.step_ns)
        for (bucket, wtype, _queue, status, agent, model), vector in part.cells.items():
            if agent == want_agent and model == want_model and vector[0]:
                grouped.runs[(bucket, status)] = grouped.runs.get((bucket, status), 0) + vector[0]
            if agent == rollups.ANY or model == rollups.ANY:
                continue
            if (q.agent and agent != q.agent) or (q.model and model != q.model):
                continue
            _add_into(grouped.calls, (bucket, model), vector[1:])
            _add_into(grouped.by_agent, (agent, model), vector[1:N_MEASURES])
            _add_into(grouped.by_type, (wtype, model), vector[1:N_MEASURES])
        for (cell, message), count in part.failures.items():
            agent, model = cell[4], cell[5]
            if (q.agent and agent != q.agent) or (q.model and model != q.model):
                continue
            grouped.failures[message] = grouped.failures.get(message, 0) + count
    return grouped


# -- turning sums into chart data -------------------------------------------------

# Indexes into the call vectors (MEASURES without "runs", then the histogram).
_CALLS, _ATTEMPTS, _FAILED, _TIN, _TOUT, _FTIN, _FTOUT = range(7)
_HIST = 7


def _price(model: str) -> tuple[Decimal, Decimal] | None:
    prices = settings.LOOMVIEW_MODEL_PRICES
    price = prices.get(model, prices.get("*"))
    if price is None:
        return None
    return Decimal(str(price[0])), Decimal(str(price[1]))


def _cost(model: str, tokens_in: int, tokens_out: int) -> float | None:
    price = _price(model)
    if price is None:
        return None if (tokens_in or tokens_out) else 0.0
    return float((price[0] * tokens_in + price[1] * tokens_out) / 1_000_000)


def _time_label(ns: int, step: int) -> str:
    moment = datetime.fromtimestamp(ns / 1e9, tz=UTC)
    return moment.strftime("%b %d" if step >= DAY else "%b %d %H:%M")


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _window(since_ns: int, until_ns: int) -> str:
    """The runs list's query string for runs that started in [since_ns, until_ns)."""
    # The runs list's "To" is inclusive: stop just before the next bar.
    until = datetime.fromtimestamp((until_ns - 1000) / 1e9, tz=UTC)
    return urlencode(
        {
            "range": "custom",
            "since": _iso(since_ns),
            "until": until.strftime("%Y-%m-%dT%H:%M:%S.%f"),
        }
    )


def _filters(q: Query, extra: dict[str, str]) -> str:
    filters = {
        "status": "" if q.status is None else (q.status or UNKNOWN),
        "type": q.workflow_type,
        "agent": q.agent,
        "model": q.model,
        "queue": q.task_queue,
    }
    filters.update(extra)
    text = urlencode({k: v for k, v in filters.items() if v})
    return "&" + text if text else ""


def runs_link(
    query: Query, since_ns: int | None = None, until_ns: int | None = None, **extra: str
) -> str:
    """The runs list filtered to what a chart element counts."""
    since = query.since_ns if since_ns is None else since_ns
    until = query.until_ns if until_ns is None else until_ns
    return reverse("dash-runs") + "?" + _window(since, until) + _filters(query, extra)


def _breakdown(
    q: Query, sums: dict[tuple[str, str], list[int]], dimension: str
) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for (name, model), v in sums.items():
        row = rows.setdefault(
            name,
            {
                "name": name,
                "calls": 0,
                "attempts": 0,
                "failed_attempts": 0,
                "tokens_in": 0,
                "tokens_out": 0,
                "failed_tokens_in": 0,
                "failed_tokens_out": 0,
                "cost": 0.0,
                "failed_cost": 0.0,
                "unpriced": False,
            },
        )
        row["calls"] += v[_CALLS]
        row["attempts"] += v[_ATTEMPTS]
        row["failed_attempts"] += v[_FAILED]
        row["tokens_in"] += v[_TIN]
        row["tokens_out"] += v[_TOUT]
        row["failed_tokens_in"] += v[_FTIN]
        row["failed_tokens_out"] += v[_FTOUT]
        cost = _cost(model, v[_TIN], v[_TOUT])
        failed_cost = _cost(model, v[_FTIN], v[_FTOUT])
        if cost is None:
            row["unpriced"] = True
        else:
            row["cost"] += cost
            row["failed_cost"] += failed_cost or 0.0
    result = [r for r in rows.values() if r["attempts"] or r["tokens_in"] or r["tokens_out"]]
    for row in result:
        row["link"] = runs_link(q, **{dimension: row["name"]}) if row["name"] else ""
    result.sort(key=lambda r: (-r["cost"], -(r["tokens_in"] + r["tokens_out"]), r["name"]))
    return result


def _json_list_holds(column: str) -> str:
    """SQL: the JSON list in column holds the string parameter, exactly."""
    if connection.vendor == "postgresql":
        return f"{column} @> jsonb_build_array(%s::text)"
    return f"EXISTS (SELECT 1 FROM json_each({column}) WHERE json_each.value = %s)"


def _top_runs(q: Query, order: str) -> list[dict[str, Any]]:
    table = connection.ops.quote_name(RunRollupState._meta.db_table)
    postgres = connection.vendor == "postgresql"
    # SQLite, "+start_ns": walk the (order, start_ns, ...) index from the top and
    # test the window on it, instead of reading every run of the window (wide rows).
    # PostgreSQL chooses between that walk and the window's runs by itself (below).
    start = "start_ns" if postgres else "+start_ns"
    clauses = [f"{start} >= %s", f"{start} < %s", f"{order} IS NOT NULL"]
    params: list[Any] = [q.since_ns, q.until_ns]
    for column, value in (("workflow_type", q.workflow_type), ("task_queue", q.task_queue)):
        if value:
            clauses.append(f"{column} = %s")
            params.append(value)
    if q.status is not None:
        clauses.append("status = %s")
        params.append(q.status)
    for column, value in (("agents", q.agent), ("model_names", q.model)):
        if value:
            clauses.append(_json_list_holds(column))
            params.append(value)
    sql = (
        "SELECT workflow_id, run_id, workflow_type, status, start_ns, duration_ns, cost "
        f"FROM {table} WHERE {' AND '.join(clauses)} ORDER BY {order} DESC LIMIT {TOP}"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        if postgres:
            # It cannot estimate how many runs a JSON list filter keeps and
            # guesses very few: then it reads the whole table (in parallel) to
            # sort it, ~100 ms at 100k runs, where walking the order index
            # finds the top ten in ~1 ms. Index plans only, for this query.
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [
        {
            "workflow_id": workflow_id,
            "run_id": run_id,
            "workflow_type": workflow_type,
            "status": status or UNKNOWN,
            "start": _iso(start_ns),
            "duration_ms": duration_ns // 1_000_000,
            "cost": cost,
            "url": run_url(workflow_id, run_id),
        }
        for workflow_id, run_id, workflow_type, status, start_ns, duration_ns, cost in rows
    ]


def build(q: Query) -> dict[str, Any]:
    """Everything the overview draws, as JSON-able data."""
    # Bars shorter than an hour come from the runs themselves; hourly cells
    # cannot be cut finer.
    grouped = _by_minute(q) if q.step_ns < HOUR else _hourly(q)
    buckets = q.buckets
    index = {b: i for i, b in enumerate(buckets)}
    n = len(buckets)

    statuses = sorted({s for _, s in grouped.runs}, key=lambda s: (s == "", s))
    runs_by_status = {s or UNKNOWN: [0] * n for s in statuses}
    for (bucket, status), count in grouped.runs.items():
        if bucket in index:
            runs_by_status[status or UNKNOWN][index[bucket]] += count

    series = {
        name: [0] * n
        for name in (
            "calls", "attempts", "failed_attempts", "tokens_in", "tokens_out",
            "failed_tokens_in", "failed_tokens_out",
        )
    }  # fmt: skip
    cost = [0.0] * n
    failed_cost = [0.0] * n
    hist_total = [[0] * len(rollups.HIST) for _ in range(n)]
    latency: dict[str, dict[str, list[float | None]]] = {}
    model_hists: dict[str, list[list[int]]] = {}
    whole_by_model: dict[str, list[int]] = {}
    unpriced: set[str] = set()
    for (bucket, model), v in grouped.calls.items():
        i = index.get(bucket)
        if i is None:
            continue
        for j, name in enumerate(series):
            series[name][i] += v[j]
        c = _cost(model, v[_TIN], v[_TOUT])
        if c is None:
            unpriced.add(model or "(unknown)")
        else:
            cost[i] += c
            failed_cost[i] += _cost(model, v[_FTIN], v[_FTOUT]) or 0.0
        hist = v[_HIST:]
        per_model = model_hists.setdefault(model, [[0] * len(rollups.HIST) for _ in range(n)])
        for k, count in enumerate(hist):
            if count:
                per_model[i][k] += count
                hist_total[i][k] += count
        _add_into(whole_by_model, model, hist)
    for model, per_bucket in model_hists.items():
        label = model or "(unknown)"
        latency[label] = {
            "p50": [_round(rollups.quantile_ms(h, 0.5)) for h in per_bucket],
            "p95": [_round(rollups.quantile_ms(h, 0.95)) for h in per_bucket],
        }
    retry_rate = [
        round(f / a, 4) if a else None
        for f, a in zip(series["failed_attempts"], series["attempts"], strict=True)
    ]
    by_model = _breakdown(
        q, {(m, m): v[: _FTOUT + 1] for (_, m), v in _merge_buckets(grouped.calls).items()}, "model"
    )
    for row in by_model:
        hist = whole_by_model.get(row["name"], [])
        row["p50_ms"] = _round(rollups.quantile_ms(hist, 0.5)) if hist else None
        row["p95_ms"] = _round(rollups.quantile_ms(hist, 0.95)) if hist else None
    totals: dict[str, Any] = {
        "runs": sum(grouped.runs.values()),
        **{name: sum(values) for name, values in series.items()},
        "cost": round(sum(cost), 6),
        "failed_cost": round(sum(failed_cost), 6),
        "unpriced_models": sorted(unpriced),
    }
    totals["retry_rate"] = (
        round(totals["failed_attempts"] / totals["attempts"], 4) if totals["attempts"] else None
    )
    all_hist = [sum(col) for col in zip(*hist_total, strict=True)] if n else []
    totals["p50_ms"] = _round(rollups.quantile_ms(all_hist, 0.5)) if all_hist else None
    totals["p95_ms"] = _round(rollups.quantile_ms(all_hist, 0.95)) if all_hist else None
    failures = sorted(grouped.failures.items(), key=lambda item: (-item[1], item[0]))[:TOP]
    # Every bar's link: the runs list for its window (runs_link, built once per bar).
    path = reverse("dash-runs") + "?"
    windows = [path + _window(b, b + q.step_ns) for b in buckets]
    plain = _filters(q, {})
    return {
        "since": _iso(q.since_ns),
        "until": _iso(q.until_ns),
        "step_seconds": q.step_ns // 10**9,
        "buckets": [_iso(b) for b in buckets],
        "labels": [_time_label(b, q.step_ns) for b in buckets],
        "links": [windows[i] + plain for i in range(n)],
        "status_links": {
            status: [windows[i] + tail for i in range(n)]
            for status, tail in ((s, _filters(q, {"status": s})) for s in runs_by_status)
        },
        "runs_by_status": runs_by_status,
        "series": series,
        "cost": [round(c, 6) for c in cost],
        "failed_cost": [round(c, 6) for c in failed_cost],
        "retry_rate": retry_rate,
        "latency": latency,
        "by_model": by_model,
        "by_agent": _breakdown(q, grouped.by_agent, "agent"),
        "by_type": _breakdown(q, grouped.by_type, "type"),
        "failures": [
            {"message": m, "count": c, "link": runs_link(q, failure=m)} for m, c in failures
        ],
        "slowest": _top_runs(q, "duration_ns"),
        "expensive": _top_runs(q, "cost"),
        "totals": totals,
        "runs_link": runs_link(q),
    }


def _merge_buckets(calls: dict[tuple[int, str], list[int]]) -> dict[tuple[int, str], list[int]]:
    merged: dict[tuple[int, str], list[int]] = {}
    for (_, model), v in calls.items():
        _add_into(merged, (0, model), v)
    return merged


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# -- statuses from Temporal ---------------------------------------------------------

SYNC_LIMIT = 1000
SYNC_TIMEOUT_SECONDS = 2.0
SYNC_OVERLAP_NS = 60 * 10**9
# When this process last asked Temporal; each dashboard process keeps its own
# (recording a status twice changes nothing).
_synced_ns: int | None = None


def _stamp(ns: int) -> str:
    return temporal.quote(
        datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    )


def _updates(
    runs: Iterable[temporal.VisibilityRun],
) -> dict[tuple[str, str], tuple[str, int | None]]:
    return {
        (r.workflow_id, r.run_id): (
            r.status,
            datetime_to_ns(r.close_time) if r.close_time else None,
        )
        for r in runs
    }


async def sync_statuses(now_ns: int) -> str | None:
    """Record the Temporal status of runs started or closed since the last sync (the
    last day on a process's first sync); returns why Temporal could not be asked."""
    global _synced_ns
    since = (_synced_ns if _synced_ns is not None else now_ns - DAY) - SYNC_OVERLAP_NS
    stamp = _stamp(since)
    try:
        found = await asyncio.wait_for(
            temporal.list_runs(f"StartTime >= {stamp} OR CloseTime >= {stamp}", SYNC_LIMIT),
            SYNC_TIMEOUT_SECONDS,
        )
    except temporal.TemporalUnavailable as exc:
        return exc.reason
    except (ValueError, TimeoutError) as exc:
        logger.warning("overview status sync: %s", exc)
        return str(exc) or "timed out"
    await sync_to_async(rollups.set_status)(_updates(found))
    _synced_ns = now_ns
    return None


async def sync_all_statuses() -> int:
    """Every run's status from visibility (rebuild_rollups --statuses)."""
    found = await temporal.all_runs("")
    return await sync_to_async(rollups.set_status)(_updates(found))
