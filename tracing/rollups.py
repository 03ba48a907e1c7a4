"""Rollups for the fleet overview, kept current on ingest.

The overview never reads the span table. It reads:

- ``Rollup``: per hour of run start x workflow type x task queue x Temporal
  status x agent x model: runs, model calls, attempts, failed attempts,
  tokens in/out (all attempts, and failed attempts alone) and a latency
  histogram of attempts, whose bins add up so p50/p95 of any range come
  from merged rows;
- ``FailureRollup``: failed attempts per cell and error message;
- ``RunRollupState``: one row per run with what the rollups need to know about
  it (its attempts, agents, models, start, status), for the slowest and most
  expensive runs, for short ranges at minute resolution, and for moving the
  run's contribution when something about it changes.

Everything is counted by the run's start hour (its first span), as the runs
list filters by start: a chart's bar and the runs list filtered to that bar's
hour count the same runs. A batch changes a run's state; the run's whole
contribution before and after is computed from the state and only the
difference is written. That one rule covers spans delivered twice (ingest
hands over only rows it inserted), spans adopted when an ancestor arrives, a
first span that arrives late and moves the run to another hour, a model that
is known only once the generation span of an attempt arrives, and a status
change from Temporal. Every merge of span values into the state is
order-independent (min/max/sum), so ingest in any order and any batching and
a rebuild from the span table give the same rows.

Child workflows are runs of their own here (their own type, their own row);
the overview does not fold them into their parents.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.models.fields.json import KeyTextTransform, KeyTransform

from telemetry import vocab
from telemetry.vocab import MODEL_KINDS, STATUS_ERROR
from tracing import pg
from tracing.models import LATENCY_BINS, FailureRollup, Rollup, RunRollupState, Span

RunKey = tuple[str, str]
# (bucket_ns, workflow_type, task_queue, status, agent, model)
Cell = tuple[int, str, str, str, str, str]

HOUR_NS = 3600 * 10**9
MINUTE_NS = 60 * 10**9
DAY_NS = 24 * HOUR_NS
# Every cell is kept at these bucket widths; a query reads the widest that fits its bars.
WIDTHS = (HOUR_NS, 6 * HOUR_NS, DAY_NS)
ANY = "*"
MESSAGE_MAX = 300
_SEP = "\x1f"

MEASURES = (
    "runs",
    "calls",
    "attempts",
    "failed_attempts",
    "tokens_in",
    "tokens_out",
    "failed_tokens_in",
    "failed_tokens_out",
)
HIST = tuple(f"h{i:02d}" for i in range(LATENCY_BINS))
VALUES = MEASURES + HIST
# The status of a run whose Temporal status has not been seen yet.
UNKNOWN_STATUS = "UNKNOWN"
KEYS = ("width_ns", "bucket_ns", "workflow_type", "task_queue", "status", "agent", "model")
_RUNS, _CALLS, _ATTEMPTS, _FAILED, _TIN, _TOUT, _FTIN, _FTOUT = range(len(MEASURES))
_HIST0 = len(MEASURES)
# Rows per INSERT: (6 keys + 72 values) parameters each, under SQLite's 32,766.
_CHUNK = 300

# An attempt: [agent, model, failed, tokens in, tokens out, model span ns,
# activity span ns, error message, message is the span's own (1) or a fallback (0)]
_AGENT, _MODEL, _AFAILED, _ATIN, _ATOUT, _MODEL_NS, _ACT_NS, _MSG, _MSG_REAL = range(9)


def latency_bin(duration_ns: int) -> int:
    if duration_ns < 1_000_000:
        return 0
    index = math.floor(3 * math.log2(duration_ns / 1e6)) + 1
    return max(1, min(index, LATENCY_BINS - 1))


def bin_bounds_ms(index: int) -> tuple[float, float]:
    if index == 0:
        return 0.0, 1.0
    return 2 ** ((index - 1) / 3), 2 ** (index / 3)


def quantile_ms(hist: Sequence[int], q: float) -> float | None:
    """The q-quantile (0..1) of a latency histogram, in ms, interpolated within its bin."""
    total = sum(hist)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(hist):
        if not count:
            continue
        if seen + count >= rank:
            low, high = bin_bounds_ms(index)
            share = max(0.0, (rank - seen) / count)
            if index == 0:
                return high * share
            if index == LATENCY_BINS - 1:
                return low
            return float(low * (high / low) ** share)
        seen += count
    return bin_bounds_ms(LATENCY_BINS - 1)[0]


@dataclass
class RunState:
    workflow_id: str
    run_id: str
    workflow_type: str = ""
    task_queue: str = ""
    status: str = ""
    start_ns: int | None = None
    end_ns: int | None = None
    close_ns: int | None = None
    agents: set[str] = field(default_factory=set)
    facts: dict[str, dict[str, Any]] = field(default_factory=lambda: {"a": {}, "t": {}})

    @property
    def key(self) -> RunKey:
        return self.workflow_id, self.run_id

    @property
    def duration_ns(self) -> int:
        if self.start_ns is None:
            return 0
        end = self.close_ns if self.close_ns is not None else self.end_ns
        return max((end or self.start_ns) - self.start_ns, 0)

    def model_names(self) -> set[str]:
        names = {
            entry[_MODEL]
            for attempts in self.facts["a"].values()
            for entry in attempts.values()
            if entry[_MODEL]
        }
        names.update(n.split(_SEP, 1)[1] for n in self.facts["t"])
        names.discard("")
        return names

    def names_and_cost(self) -> tuple[list[str], float | None]:
        """sorted(model_names()) and the estimated cost of the tokens by model, in one
        pass over the attempts (the state row's columns, written for every batch of
        the run)."""
        names: set[str] = set()
        found: dict[str, list[int]] = {}
        for attempts in self.facts["a"].values():
            for entry in attempts.values():
                model = entry[_MODEL]
                names.add(model)
                if entry[_ATIN] or entry[_ATOUT]:
                    pair = found.get(model)
                    if pair is None:
                        pair = found[model] = [0, 0]
                    pair[0] += entry[_ATIN]
                    pair[1] += entry[_ATOUT]
        for name, (tokens_in, tokens_out) in self.facts["t"].items():
            model = name.split(_SEP, 1)[1]
            names.add(model)
            pair = found.setdefault(model, [0, 0])
            pair[0] += tokens_in
            pair[1] += tokens_out
        names.discard("")
        return sorted(names), _cost({m: (p[0], p[1]) for m, p in found.items()})


def _cost(tokens: dict[str, tuple[int, int]]) -> float | None:
    from tracing import pricing

    if not tokens:
        return None
    estimate = pricing.estimate(tokens, settings.LOOMVIEW_MODEL_PRICES)
    return None if estimate is None else float(estimate)


def _attempt_key(row: dict[str, Any]) -> str | None:
    if row["attempt"] is not None:
        return str(row["attempt"])
    if row["kind"] == "temporal" and row["name"].startswith(vocab.RUN_ACTIVITY_PREFIX):
        return f"span:{row['span_id']}"
    return None


def _smaller(current: str, value: str) -> str:
    return value if value and (not current or value < current) else current


_MODEL_ACTIVITY_SUFFIX = ":" + vocab.MODEL_ACTIVITY_TYPE
_START = operator.itemgetter("start_ns")
_END = operator.itemgetter("end_ns")
_AGENT_OF = operator.itemgetter("agent")


def apply_rows(
    state: RunState,
    rows: Iterable[dict[str, Any]],
    saved: dict[str, dict[str, list[Any]] | None] | None = None,
) -> None:
    """Fold spans of one run into its state; any order gives the same state. With
    saved, each call the rows touch is first copied into it as it was (None: new)."""
    # On the ingest path for every span: whole-batch min/max/set in C, and the
    # per-row loop only for model spans.
    rows = rows if isinstance(rows, list) else list(rows)
    if not rows:
        return
    # Inline, not a function mapped over the rows: a Python call per row costs more.
    types = {r.get("workflow_type") for r in rows}
    value = min((t for t in types if t), default="")
    if value and (not state.workflow_type or value < state.workflow_type):
        state.workflow_type = value
    task_queue = vocab.TASK_QUEUE
    queues = {
        str(r["task_queue"] or "")
        if "task_queue" in r
        else (r.get("attributes") or {}).get(task_queue)
        for r in rows
    }
    value = min((q for q in queues if q and isinstance(q, str)), default="")
    if value and (not state.task_queue or value < state.task_queue):
        state.task_queue = value
    agents = state.agents
    agents.update(map(_AGENT_OF, rows))
    agents.discard("")
    start = min(map(_START, rows))
    if state.start_ns is None or start < state.start_ns:
        state.start_ns = start
    end = max(map(_END, rows))
    if state.end_ns is None or end > state.end_ns:
        state.end_ns = end
    calls: dict[str, dict[str, list[Any]]] = state.facts["a"]
    loose: dict[str, list[int]] = state.facts["t"]
    model_kinds = MODEL_KINDS
    suffix = _MODEL_ACTIVITY_SUFFIX
    for row in rows:
        model_kind = row["kind"] in model_kinds
        activity_id = row["activity_id"]
        if activity_id and (model_kind or row["name"].endswith(suffix)):
            attempt = row["attempt"]
            if attempt is not None:
                key: str | None = str(attempt)
            elif row["kind"] == "temporal" and row["name"].startswith(vocab.RUN_ACTIVITY_PREFIX):
                key = f"span:{row['span_id']}"
            else:
                key = None
            per_call = calls.get(activity_id)
            if saved is not None and activity_id not in saved:
                saved[activity_id] = (
                    None if per_call is None else {k: e.copy() for k, e in per_call.items()}
                )
            if per_call is None:
                # A model span of an activity without an attempt still makes its
                # calls entry (a call with no attempts counts as a call).
                per_call = calls[activity_id] = {}
            if key is not None:
                entry = per_call.get(key)
                if entry is None:
                    entry = per_call[key] = ["", "", 0, 0, 0, 0, 0, "", 0]
                agent = row["agent"]
                if agent and agent > entry[_AGENT]:
                    entry[_AGENT] = agent
                model = row.get("model")
                if model and model > entry[_MODEL]:
                    entry[_MODEL] = model
                # A negative duration never beats the entry's (from 0): max(duration, 0).
                duration = row["end_ns"] - row["start_ns"]
                if model_kind:
                    entry[_ATIN] += row["tokens_in"] or 0
                    entry[_ATOUT] += row["tokens_out"] or 0
                    if duration > entry[_MODEL_NS]:
                        entry[_MODEL_NS] = duration
                elif duration > entry[_ACT_NS]:
                    entry[_ACT_NS] = duration
                if row["status_code"] == STATUS_ERROR:
                    entry[_AFAILED] = 1
                    _note_message(entry, row)
                continue
        if model_kind and (row["tokens_in"] or row["tokens_out"]):
            name = f"{row['agent'] or ''}{_SEP}{row.get('model') or ''}"
            pair = loose.get(name)
            if pair is None:
                pair = loose[name] = [0, 0]
            pair[0] += row["tokens_in"] or 0
            pair[1] += row["tokens_out"] or 0


def _note_message(entry: list[Any], row: dict[str, Any]) -> None:
    message = (row["status_message"] or "")[:MESSAGE_MAX]
    if message:
        entry[_MSG] = message if not entry[_MSG_REAL] else min(entry[_MSG], message)
        entry[_MSG_REAL] = 1
    elif not entry[_MSG_REAL]:
        entry[_MSG] = _smaller(entry[_MSG], f"{row['name']} failed"[:MESSAGE_MAX])


@dataclass
class Contribution:
    cells: dict[Cell, list[int]] = field(default_factory=dict)
    failures: dict[tuple[Cell, str], int] = field(default_factory=dict)

    def vector(self, cell: Cell) -> list[int]:
        vector = self.cells.get(cell)
        if vector is None:
            vector = self.cells[cell] = [0] * len(VALUES)
        return vector


def contribution(state: RunState, bucket_size: int = HOUR_NS) -> Contribution:
    """What one run adds to the rollups."""
    result = Contribution()
    _contribute(state, result, 1, bucket_size)
    return result


def _base(state: RunState, bucket_size: int = HOUR_NS) -> tuple[int, str, str, str] | None:
    """What every cell of the run has of the run itself: start bucket, type, task
    queue, status."""
    if state.start_ns is None:
        return None
    return (
        state.start_ns // bucket_size * bucket_size,
        state.workflow_type,
        state.task_queue,
        state.status,
    )


def _contribute(state: RunState, into: Contribution, sign: int, bucket_size: int = HOUR_NS) -> None:
    """into += sign x what the run adds to the rollups."""
    base = _base(state, bucket_size)
    if base is None:
        return
    for per_call in state.facts["a"].values():
        _add_call(into, base, per_call, sign)
    for name, pair in state.facts["t"].items():
        _add_loose(into, base, name, pair, sign)
    models = state.model_names()
    for agent in (ANY, *state.agents):
        for model in (ANY, *models):
            into.vector((*base, agent, model))[_RUNS] += sign


def _add_call(
    into: Contribution, base: tuple[int, str, str, str], per_call: dict[str, list[Any]], sign: int
) -> None:
    """into += sign x what one model call (its attempts) adds."""
    if not per_call:
        into.vector((*base, "", ""))[_CALLS] += sign
        return
    first = True
    failures = into.failures
    for attempt in sorted(per_call):
        entry = per_call[attempt]
        cell: Cell = (*base, entry[_AGENT], entry[_MODEL])
        vector = into.vector(cell)
        if first:
            vector[_CALLS] += sign
            first = False
        vector[_ATTEMPTS] += sign
        vector[_TIN] += sign * entry[_ATIN]
        vector[_TOUT] += sign * entry[_ATOUT]
        if entry[_AFAILED]:
            vector[_FAILED] += sign
            vector[_FTIN] += sign * entry[_ATIN]
            vector[_FTOUT] += sign * entry[_ATOUT]
            failure = (cell, entry[_MSG])
            failures[failure] = failures.get(failure, 0) + sign
        vector[_HIST0 + latency_bin(entry[_MODEL_NS] or entry[_ACT_NS])] += sign


def _changed_attempts(
    before: dict[str, list[Any]], after: dict[str, list[Any]]
) -> list[tuple[list[Any], list[Any]]] | None:
    """The attempts of a call that changed, (before, after), when the call kept its
    attempts' keys and each attempt its cell (agent, model); else None."""
    if before.keys() != after.keys():
        return None
    changed = []
    for key, entry in after.items():
        old = before[key]
        if old != entry:
            if old[_AGENT] != entry[_AGENT] or old[_MODEL] != entry[_MODEL]:
                return None
            changed.append((old, entry))
    return changed


def _diff_attempts(
    into: Contribution,
    base: tuple[int, str, str, str],
    attempts: list[tuple[list[Any], list[Any]]],
) -> None:
    """into += what a call adds now - what it added before, for a call whose attempts
    kept their keys and cells (_changed_attempts): its call and attempt counts stand,
    only the attempts that changed are counted again (_add_call -1 then +1, in short)."""
    failures = into.failures
    cells = into.cells
    for old, entry in attempts:
        cell: Cell = (*base, entry[_AGENT], entry[_MODEL])
        vector = cells.get(cell)
        if vector is None:
            vector = cells[cell] = [0] * len(VALUES)
        vector[_TIN] += entry[_ATIN] - old[_ATIN]
        vector[_TOUT] += entry[_ATOUT] - old[_ATOUT]
        if old[_AFAILED]:
            vector[_FAILED] -= 1
            vector[_FTIN] -= old[_ATIN]
            vector[_FTOUT] -= old[_ATOUT]
            failure = (cell, old[_MSG])
            failures[failure] = failures.get(failure, 0) - 1
        if entry[_AFAILED]:
            vector[_FAILED] += 1
            vector[_FTIN] += entry[_ATIN]
            vector[_FTOUT] += entry[_ATOUT]
            failure = (cell, entry[_MSG])
            failures[failure] = failures.get(failure, 0) + 1
        old_ns = old[_MODEL_NS] or old[_ACT_NS]
        new_ns = entry[_MODEL_NS] or entry[_ACT_NS]
        if old_ns != new_ns:
            old_bin = latency_bin(old_ns)
            new_bin = latency_bin(new_ns)
            if old_bin != new_bin:
                vector[_HIST0 + old_bin] -= 1
                vector[_HIST0 + new_bin] += 1


def _add_loose(
    into: Contribution, base: tuple[int, str, str, str], name: str, pair: list[int], sign: int
) -> None:
    """into += sign x tokens of model spans that belong to no attempt."""
    agent, model = name.split(_SEP, 1)
    vector = into.vector((*base, agent, model))
    vector[_TIN] += sign * pair[0]
    vector[_TOUT] += sign * pair[1]


def _fold(state: RunState, rows: list[dict[str, Any]], into: Contribution) -> None:
    """Fold rows into a stored run's state and add the change of its contribution.

    A batch usually brings a few spans of a run that has many: while the run's cells
    stay where they were (start bucket, type, queue, status, agents and models),
    only the calls the batch touched and the loose tokens can change, so only they
    are counted again (before -1, after +1), not the whole run twice."""
    calls = state.facts["a"]
    # The calls the batch touches, as they were (None: new): apply_rows fills it.
    saved: dict[str, dict[str, list[Any]] | None] = {}
    loose = state.facts["t"]
    loose_before = {name: pair.copy() for name, pair in loose.items()}
    agents_before = set(state.agents)
    type_before, queue_before = state.workflow_type, state.task_queue
    start_before, end_before = state.start_ns, state.end_ns
    base = _base(state)
    apply_rows(state, rows, saved)

    def previous() -> RunState:
        old_calls = dict(calls)
        for aid, before in saved.items():
            if before is None:
                del old_calls[aid]
            else:
                old_calls[aid] = before
        return RunState(
            state.workflow_id, state.run_id, type_before, queue_before, state.status,
            start_before, end_before, state.close_ns, agents_before,
            {"a": old_calls, "t": loose_before},
        )  # fmt: skip

    if base is not None and _base(state) == base and state.agents == agents_before:
        # (before, after, its changed attempts if they kept their keys and cells)
        changed: list[
            tuple[
                dict[str, list[Any]] | None,
                dict[str, list[Any]],
                list[tuple[list[Any], list[Any]]] | None,
            ]
        ] = []
        kept = loose.keys() == loose_before.keys()
        for aid, before in saved.items():
            after = calls[aid]
            attempts = None if before is None else _changed_attempts(before, after)
            if attempts is None:
                kept = False
                changed.append((before, after, None))
            elif attempts:
                changed.append((before, after, attempts))
        # The model names stand when every changed call kept its cells and no loose
        # name is new; else they are compared.
        if kept or previous().model_names() == state.model_names():
            for before, after, attempts in changed:
                if attempts is not None:
                    _diff_attempts(into, base, attempts)
                    continue
                if before is not None:
                    _add_call(into, base, before, -1)
                _add_call(into, base, after, 1)
            for name, pair in loose.items():
                old = loose_before.get(name)
                if old != pair:
                    if old is not None:
                        _add_loose(into, base, name, old, -1)
                    _add_loose(into, base, name, pair, 1)
            return
    # The run's cells moved: its whole contribution before, and after.
    _contribute(previous(), into, -1)
    _contribute(state, into, 1)


# -- storage ------------------------------------------------------------------


def _marker() -> str:
    # Django's cursor takes "%s" on every backend; a "?" breaks its debug
    # cursor (LOOMVIEW_DEBUG, captured queries), which formats the SQL with %.
    return "%s"


def _json(value: Any, vendor: str) -> Any:
    if vendor == "sqlite":
        return orjson.dumps(value).decode()
    return connection.ops.adapt_json_value(value, None)


def _loads(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


_STATE_COLUMNS = (
    "workflow_id", "run_id", "workflow_type", "task_queue", "status", "start_ns", "end_ns",
    "close_ns", "duration_ns", "cost", "agents", "model_names", "facts",
)  # fmt: skip


def load_states(keys: Iterable[RunKey]) -> dict[RunKey, RunState]:
    wanted = set(keys)
    if not wanted:
        return {}
    workflow_ids = sorted({w for w, _ in wanted})
    run_ids = sorted({r for _, r in wanted})
    quote = connection.ops.quote_name
    # Both ids (a workflow id may have many runs), as two IN lists: the unique
    # index serves them on every backend.
    sql = (
        "SELECT workflow_id, run_id, workflow_type, task_queue, status, start_ns, end_ns, "
        f"close_ns, agents, facts FROM {quote(RunRollupState._meta.db_table)} "
        f"WHERE workflow_id IN ({', '.join([_marker()] * len(workflow_ids))}) "
        f"AND run_id IN ({', '.join([_marker()] * len(run_ids))})"
    )
    found: dict[RunKey, RunState] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, workflow_ids + run_ids)
        for wf, run, wtype, queue, status, start, end, close, agents, facts in cursor.fetchall():
            if (wf, run) in wanted:
                found[(wf, run)] = RunState(
                    wf, run, wtype, queue, status, start, end, close,
                    set(_loads(agents)), _loads(facts),
                )  # fmt: skip
    return found


def _state_values(s: RunState) -> list[Any]:
    """The state row's values in _STATE_COLUMNS order; the last three are JSON."""
    names, cost = s.names_and_cost()
    return [
        s.workflow_id, s.run_id, s.workflow_type, s.task_queue, s.status, s.start_ns,
        s.end_ns, s.close_ns, s.duration_ns, cost, sorted(s.agents), names, s.facts,
    ]  # fmt: skip


def _save_states(states: Sequence[RunState]) -> None:
    if not states:
        return
    quote = connection.ops.quote_name
    vendor = connection.vendor
    updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in _STATE_COLUMNS[2:])
    if vendor == "postgresql":
        sql = pg.upsert_sql(RunRollupState, _STATE_COLUMNS, ("workflow_id", "run_id"), updates)
        pg.execute(sql, map(_state_values, states))
        return
    placeholder = "(" + ", ".join([_marker()] * len(_STATE_COLUMNS)) + ")"
    with connection.cursor() as cursor:
        for start in range(0, len(states), 500):
            chunk = states[start : start + 500]
            params: list[Any] = []
            for s in chunk:
                values = _state_values(s)
                values[-3:] = [_json(v, vendor) for v in values[-3:]]
                params += values
            cursor.execute(
                f"INSERT INTO {quote(RunRollupState._meta.db_table)} "
                f"({', '.join(quote(c) for c in _STATE_COLUMNS)}) "
                f"VALUES {', '.join([placeholder] * len(chunk))} "
                f"ON CONFLICT (workflow_id, run_id) DO UPDATE SET {updates}",
                params,
            )


@functools.cache
def _add_sql(
    table: str, keys: tuple[str, ...], values: tuple[str, ...], rows: int, m: str, returning: str
) -> str:
    quote = connection.ops.quote_name
    columns = keys + values
    placeholder = "(" + ", ".join([m] * len(columns)) + ")"
    updates = ", ".join(
        f"{quote(c)} = {quote(table)}.{quote(c)} + excluded.{quote(c)}" for c in values
    )
    return (
        f"INSERT INTO {quote(table)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES {', '.join([placeholder] * rows)} "
        f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET {updates}"
        + (f" RETURNING {returning}" if returning else "")
    )


def widen(
    part: Contribution,
) -> tuple[dict[tuple[Any, ...], list[int]], dict[tuple[Any, ...], int]]:
    """Hourly cells at every width: {(width, bucket, ...): vector}, {(width, ..., message): n}."""
    cells: dict[tuple[Any, ...], list[int]] = {}
    failures: dict[tuple[Any, ...], int] = {}
    for cell, vector in part.cells.items():
        if not any(vector):
            continue
        for width in WIDTHS:
            key = (width, cell[0] // width * width, *cell[1:])
            into = cells.get(key)
            if into is None:
                cells[key] = list(vector)
            else:
                for i, value in enumerate(vector):
                    into[i] += value
    for (cell, message), count in part.failures.items():
        if not count:
            continue
        for width in WIDTHS:
            failure_key = (width, cell[0] // width * width, *cell[1:], message)
            failures[failure_key] = failures.get(failure_key, 0) + count
    return cells, failures


# A cell is empty when these are 0: every other measure is then 0 too (a failed
# attempt or a latency bin is an attempt; failed tokens are tokens).
_EMPTY_WHEN_ZERO = ("runs", "calls", "attempts", "tokens_in", "tokens_out")


def _add(delta: Contribution) -> None:
    """Add a difference to the rollup tables: upserts (a cell's row is created on first
    use), and a row that a subtraction empties is deleted, so the tables hold exactly
    the cells a recount has."""
    marker = _marker()
    wide_cells, wide_failures = widen(delta)
    cells = list(wide_cells.items())
    failures = [(cell, count) for cell, count in wide_failures.items() if count]
    emptied: dict[type[Rollup] | type[FailureRollup], list[int]] = {Rollup: [], FailureRollup: []}
    if connection.vendor == "postgresql":
        _add_pg(cells, failures, emptied)
        cells, failures = [], []
    with connection.cursor() as cursor:
        table = Rollup._meta.db_table
        returning = ", ".join(("id", *_EMPTY_WHEN_ZERO))
        for start in range(0, len(cells), _CHUNK):
            chunk = cells[start : start + _CHUNK]
            params: list[Any] = []
            shrinks = False
            for cell, vector in chunk:
                params += cell
                params += vector
                shrinks = shrinks or min(vector) < 0
            sql = _add_sql(table, KEYS, VALUES, len(chunk), marker, returning if shrinks else "")
            cursor.execute(sql, params)
            if shrinks:
                emptied[Rollup] += [row[0] for row in cursor.fetchall() if not any(row[1:])]
        table = FailureRollup._meta.db_table
        for start in range(0, len(failures), _CHUNK):
            chunk_f = failures[start : start + _CHUNK]
            params = []
            shrinks = False
            for key, count in chunk_f:
                params += [*key, count]
                shrinks = shrinks or count < 0
            keys = (*KEYS, "message")
            sql = _add_sql(
                table, keys, ("count",), len(chunk_f), marker, "id, count" if shrinks else ""
            )
            cursor.execute(sql, params)
            if shrinks:
                emptied[FailureRollup] += [row[0] for row in cursor.fetchall() if not row[1]]
    for model, ids in emptied.items():
        for start in range(0, len(ids), 500):
            model.objects.filter(pk__in=ids[start : start + 500]).delete()


def _add_pg(
    cells: list[tuple[tuple[Any, ...], list[int]]],
    failures: list[tuple[tuple[Any, ...], int]],
    emptied: dict[type[Rollup] | type[FailureRollup], list[int]],
) -> None:
    """_add's upserts on PostgreSQL: one constant statement per table, the rows in
    one JSON parameter (tracing.pg); rows a subtraction may have emptied read back."""
    if cells:
        shrinks = any(min(vector) < 0 for _, vector in cells)
        rows = pg.execute(
            _add_pg_sql(
                Rollup, KEYS, VALUES, ", ".join(("id", *_EMPTY_WHEN_ZERO)) if shrinks else ""
            ),
            ([*cell, *vector] for cell, vector in cells),
            fetch=shrinks,
        )
        emptied[Rollup] += [row[0] for row in rows if not any(row[1:])]
    if failures:
        shrinks = any(count < 0 for _, count in failures)
        rows = pg.execute(
            _add_pg_sql(
                FailureRollup, (*KEYS, "message"), ("count",), "id, count" if shrinks else ""
            ),
            ([*key, count] for key, count in failures),
            fetch=shrinks,
        )
        emptied[FailureRollup] += [row[0] for row in rows if not row[1]]


@functools.cache
def _add_pg_sql(
    model: type[Rollup] | type[FailureRollup], keys: tuple[str, ...], values: tuple[str, ...],
    returning: str,
) -> str:  # fmt: skip
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    updates = ", ".join(f"{quote(c)} = {table}.{quote(c)} + excluded.{quote(c)}" for c in values)
    return pg.upsert_sql(model, keys + values, keys, updates, returning)


def failed_with_sql(outer_table: str, message: str) -> tuple[str, list[Any]]:
    """SQL true for rows of outer_table (with workflow_id and run_id) whose run had a
    failed model-call attempt with this message, as the overview's failure list counts
    it (the message as stored: cut to MESSAGE_MAX, or "<span name> failed")."""
    quote = connection.ops.quote_name
    state = quote(RunRollupState._meta.db_table)
    outer = quote(outer_table)
    same_run = f"s.workflow_id = {outer}.workflow_id AND s.run_id = {outer}.run_id"
    if connection.vendor == "postgresql":
        return (
            # strict: lax mode would unwrap each attempt's list before the filter.
            f"EXISTS (SELECT 1 FROM {state} s WHERE {same_run} AND jsonb_path_exists("
            f"s.facts, 'strict $.a.*.* ? (@[{_AFAILED}] == 1 && @[{_MSG}] == $m)', "
            "jsonb_build_object('m', %s::text), true))",
            [message[:MESSAGE_MAX]],
        )
    return (
        f"EXISTS (SELECT 1 FROM {state} s, json_each(s.facts, '$.a') c, json_each(c.value) a "
        f"WHERE {same_run} AND json_extract(a.value, '$[{_AFAILED}]') = 1 "
        f"AND json_extract(a.value, '$[{_MSG}]') = %s)",
        [message[:MESSAGE_MAX]],
    )


def enabled() -> bool:
    return bool(getattr(settings, "LOOMVIEW_ROLLUPS", True))


def apply(rows: Iterable[dict[str, Any]]) -> None:
    """Count newly stored (or newly adopted) span rows; called by store.ingest in its
    transaction, with the rows it inserted or gave a run to, each exactly once."""
    if not enabled():
        return
    groups: dict[RunKey, list[dict[str, Any]]] = {}
    group_of = groups.get
    for row in rows:
        workflow_id = row["workflow_id"]
        run_id = row["run_id"]
        if workflow_id and run_id:
            group = group_of((workflow_id, run_id))
            if group is None:
                groups[(workflow_id, run_id)] = [row]
            else:
                group.append(row)
    if not groups:
        return
    states = load_states(groups)
    delta = Contribution()
    changed: list[RunState] = []
    for key, group in groups.items():
        state = states.get(key)
        if state is None:
            state = RunState(*key)
            apply_rows(state, group)
            _contribute(state, delta, 1)
        else:
            _fold(state, group, delta)
        changed.append(state)
    _save_states(changed)
    _add(delta)


def set_status(updates: dict[RunKey, tuple[str, int | None]]) -> int:
    """Record Temporal's status (and close time) of runs; moves their counts. Returns
    how many runs changed. Runs without spans are not counted, so they are skipped."""
    if not updates or not enabled():
        return 0
    from tracing.store import _writer as writer

    with writer():
        states = load_states(updates)
        delta = Contribution()
        changed: list[RunState] = []
        for key, state in states.items():
            status, close_ns = updates[key]
            if (state.status, state.close_ns) == (status, close_ns):
                continue
            _contribute(state, delta, -1)
            state.status, state.close_ns = status, close_ns
            _contribute(state, delta, 1)
            changed.append(state)
        _save_states(changed)
        _add(delta)
    return len(changed)


def forget(keys: Iterable[RunKey]) -> int:
    """Take runs out of the rollups and delete their state, as retention deletes the
    runs: call it in the transaction that deletes their summaries. Returns the states
    deleted."""
    states = load_states(keys)
    if not states:
        return 0
    delta = Contribution()
    for state in states.values():
        _contribute(state, delta, -1)
    _add(delta)
    gone = RunRollupState.objects.filter(
        workflow_id__in={w for w, _ in states}, run_id__in={r for _, r in states}
    ).values_list("pk", "workflow_id", "run_id")
    ids = [pk for pk, w, r in gone if (w, r) in states]
    return RunRollupState.objects.filter(pk__in=ids).delete()[0]


def prune(cutoff_ns: int) -> int:
    """Forget every run whose last span is older than cutoff_ns (what retention deletes)."""
    doomed = list(
        RunRollupState.objects.filter(end_ns__lt=cutoff_ns).values_list("workflow_id", "run_id")
    )
    return sum(forget(doomed[at : at + 500]) for at in range(0, len(doomed), 500))


# -- rebuild from the span table -----------------------------------------------

_REBUILD_COLUMNS = (
    "trace_id", "span_id", "name", "kind", "workflow_id", "run_id", "activity_id", "attempt",
    "model", "agent", "tokens_in", "tokens_out", "status_code", "status_message", "start_ns",
    "end_ns",
)  # fmt: skip


def recount() -> tuple[dict[RunKey, RunState], Contribution]:
    """Every run's state and the rollups, computed from the span table alone (plus the
    statuses already recorded, which come from Temporal, not from spans)."""
    known = {
        (w, r): (status, close)
        for w, r, status, close in RunRollupState.objects.values_list(
            "workflow_id", "run_id", "status", "close_ns"
        )
    }
    states: dict[RunKey, RunState] = {}
    queue = KeyTextTransform(vocab.TASK_QUEUE, KeyTransform("attributes", "data"))
    workflow_type = KeyTextTransform(vocab.WORKFLOW_TYPE, KeyTransform("attributes", "data"))
    query = (
        Span.objects.exclude(workflow_id="")
        .exclude(run_id="")
        .annotate(task_queue=queue, type_attr=workflow_type)
        .values(*_REBUILD_COLUMNS, "task_queue", "type_attr")
    )
    from tracing.otlp import workflow_type as type_of

    for row in query.iterator(chunk_size=5000):
        key = (row["workflow_id"], row["run_id"])
        state = states.get(key)
        if state is None:
            state = states[key] = RunState(*key)
            state.status, state.close_ns = known.get(key, ("", None))
        row["workflow_type"] = row["type_attr"] or type_of({}, row["name"])
        apply_rows(state, (row,))
    total = Contribution()
    for state in states.values():
        part = contribution(state)
        for cell, vector in part.cells.items():
            into = total.vector(cell)
            for i, value in enumerate(vector):
                into[i] += value
        for failure, count in part.failures.items():
            total.failures[failure] = total.failures.get(failure, 0) + count
    return states, total


def rebuild() -> int:
    """Replace every rollup by a recount from the span table; returns the runs counted."""
    from tracing.store import _writer as writer

    with writer():
        states, total = recount()
        FailureRollup.objects.all().delete()
        Rollup.objects.all().delete()
        RunRollupState.objects.all().delete()
        _save_states(list(states.values()))
        _add(total)
    return len(states)


def stored_rollups() -> tuple[dict[tuple[Any, ...], list[int]], dict[tuple[Any, ...], int]]:
    """The rollup tables as they are, in widen()'s shape (for tests and checks)."""
    cells: dict[tuple[Any, ...], list[int]] = {}
    failures: dict[tuple[Any, ...], int] = {}
    for row in Rollup.objects.values_list(*KEYS, *VALUES):
        if any(row[len(KEYS) :]):
            cells[tuple(row[: len(KEYS)])] = list(row[len(KEYS) :])
    for *key, count in FailureRollup.objects.values_list(*KEYS, "message", "count"):
        if count:
            failures[tuple(key)] = count
    return cells, failures


def atomic_rebuild() -> int:
    with transaction.atomic():
        return rebuild()
