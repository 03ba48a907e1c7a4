"""The run page: everything it shows, from loading a run to its live signature.

``load`` fetches the run's history (dashboard.temporal, cached once closed)
and its spans (tracing.store); ``build`` has tracing.correlation.correlate()
weave them into a RunStory (model calls, attempts, tools, handoffs, signals,
updates, totals) and shapes what the templates and the timeline draw: decoded
payloads, header facts, the history listing, the span tree and chart data.
``story_json`` is the same run for the API, and ``live_signature`` tells the
live consumer cheaply whether anything changed. Either input may be missing:
without a history (Temporal unreachable) the page is built from spans alone,
without spans (tracing off) from the history alone.

The views (dashboard.run_views, dashboard.action_views) and the live consumer
(dashboard.run_consumers) only call into this module.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import gc
import json
import logging
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property
from html import escape
from typing import Any, cast
from urllib.parse import quote, urlencode

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.urls import NoReverseMatch, reverse
from django.utils.safestring import SafeString
from google.protobuf import json_format
from google.protobuf.message import Message
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import History, HistoryEvent

from dashboard import history_lines, linker, run_family, temporal, transcript, waiting
from dashboard import run_health as run_health_panel
from dashboard.templatetags.runs_format import duration_ns
from telemetry import vocab
from telemetry.vocab import FAILED_OUTCOMES, STATUS_ERROR, run_digest
from tracing import archive, pricing, search, store
from tracing.correlation import (
    Attempt,
    ModelCall,
    RunStory,
    StoryItem,
    correlate,
    event_ns,
    reads_span,
)
from tracing.models import ns_to_datetime

logger = logging.getLogger(__name__)

HISTORY_CACHE_SECONDS = 24 * 3600
_PREFIX = "EVENT_TYPE_"
# A closing event type → the run's status: "COMPLETED", "CONTINUED_AS_NEW", ...
CLOSE_STATUS = {
    event_type: EventType.Name(event_type).removeprefix("EVENT_TYPE_WORKFLOW_EXECUTION_")
    for event_type in vocab.WORKFLOW_CLOSE_EVENT_TYPES
}
# Events that say nothing an engineer debugging a run needs; the full view keeps them.
_NOISE = ("WORKFLOW_TASK_",)
# A run's trace in OpenAI's Traces dashboard, when the worker sent it there.
OPENAI_TRACE_URL = "https://platform.openai.com/traces/trace?trace_id={trace_id}"
_AGENTS_TRACE_ID = re.compile(r"trace_[A-Za-z0-9_-]{1,64}")


# -- payloads ---------------------------------------------------------------


def decode_payload(payload: dict[str, Any]) -> Any:
    """One Temporal payload (proto JSON: base64 metadata and data) as a Python value."""
    metadata = payload.get("metadata") or {}
    try:
        encoding = base64.b64decode(metadata.get("encoding", "")).decode()
    except (ValueError, UnicodeDecodeError):
        encoding = ""
    try:
        raw = base64.b64decode(payload.get("data", ""))
    except ValueError:
        return {"undecodable payload": encoding or "unknown encoding"}
    if encoding == "binary/null":
        return None
    if encoding.startswith("json/"):
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            pass
    return {"payload": encoding or "unknown encoding", "bytes": len(raw)}


def _is_payload(value: dict[str, Any]) -> bool:
    return (
        "metadata" in value
        and isinstance(value["metadata"], dict)
        and ("encoding" in value["metadata"])
    )


def decode_payloads(value: Any) -> Any:
    """A copy of an event (or part of one) with every payload decoded in place."""
    if isinstance(value, dict):
        if _is_payload(value):
            return decode_payload(value)
        if set(value) == {"payloads"} and isinstance(value["payloads"], list):
            decoded = [decode_payload(p) for p in value["payloads"]]
            return decoded[0] if len(decoded) == 1 else decoded
        return {k: decode_payloads(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_payloads(v) for v in value]
    return value


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def maybe_json(text: Any) -> Any:
    """Attribute strings that hold JSON (messages, tool arguments) as values."""
    if isinstance(text, str) and text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


# -- history ----------------------------------------------------------------


def event_type_name(event: HistoryEvent) -> str:
    try:
        return EventType.Name(event.event_type)
    except ValueError:  # an event type newer than our protos
        return f"{_PREFIX}{event.event_type}"


def event_label(event_type: str) -> str:
    return event_type.removeprefix(_PREFIX).replace("_", " ").title().replace(" ", "")


def _attributes(event: HistoryEvent) -> Message | None:
    name = event.WhichOneof("attributes")
    return getattr(event, name) if name else None


def _present(message: Message | None, name: str) -> Any:
    """A message field if the message has it and it is set, else None."""
    if message is None or name not in message.DESCRIPTOR.fields_by_name:
        return None
    return getattr(message, name) if message.HasField(name) else None


def to_json(message: Message) -> dict[str, Any]:
    """Temporal's proto JSON of a message (what `temporal workflow show -o json` prints)."""
    return json_format.MessageToDict(message)


def failure_message(failure: Failure | None) -> str:
    """A failure and its causes as one line each, outermost first."""
    lines: list[str] = []
    while failure is not None and len(lines) < 8:
        kind = _present(failure, "application_failure_info")
        lines.append(f"{kind.type}: {failure.message}" if kind and kind.type else failure.message)
        failure = _present(failure, "cause")
    return "\n".join(line for line in lines if line)


@dataclass
class Header:
    status: str = "UNKNOWN"
    workflow_type: str = ""
    task_queue: str = ""
    start_ns: int | None = None
    close_ns: int | None = None
    input: Any = None
    result: Any = None
    failure: str = ""
    has_input: bool = False
    has_result: bool = False
    # A reset run: when the run it was reset from started (its history starts there).
    original_start_ns: int | None = None

    @property
    def status_label(self) -> str:
        return self.status.replace("_", " ").capitalize()

    @property
    def is_open(self) -> bool:
        return self.status == "RUNNING"


def run_duration_ns(header: Header, t1: int) -> int | None:
    """How long the run took, or has been running so far. Without a close event and
    not known to be running (no history: Temporal unreachable or the run forgotten),
    as far as its spans and events reach (t1), not until now."""
    if header.start_ns is None:
        return None
    if header.close_ns is not None:
        end = header.close_ns
    else:
        end = time.time_ns() if header.is_open else t1
    return max(end - header.start_ns, 0)


def header_from_history(events: Sequence[HistoryEvent]) -> Header:
    header = Header()
    if not events:
        return header
    first = events[0]
    header.status = "RUNNING"
    header.start_ns = event_ns(first)
    if first.HasField("workflow_execution_started_event_attributes"):
        attrs = first.workflow_execution_started_event_attributes
        header.workflow_type = attrs.workflow_type.name
        header.task_queue = attrs.task_queue.name
        if attrs.HasField("input"):
            header.input = decode_payloads(to_json(attrs.input))
            header.has_input = True
    last = events[-1]
    status = CLOSE_STATUS.get(last.event_type)
    if status:
        header.status = status
        header.close_ns = event_ns(last)
        close = _attributes(last)
        result = _present(close, "result")
        if result is not None:
            header.result = decode_payloads(to_json(result))
            header.has_result = True
        header.failure = failure_message(_present(close, "failure"))
    return header


class HistoryRow:
    """One event in the history listing; its JSON attributes are made only when shown."""

    def __init__(self, event: HistoryEvent) -> None:
        self.event = event
        self.event_id = event.event_id
        self.ns = event_ns(event)
        self.event_type = event_type_name(event)
        self.label = event_label(self.event_type)
        # (type, id) of the activity an activity event belongs to.
        self.activity: tuple[str, str] | None = None

    @property
    def time(self) -> datetime | None:
        return ns_to_datetime(self.ns)

    @property
    def clock(self) -> str:
        """The event's time of day in UTC, to the microsecond (``H:i:s.u``)."""
        return clock(self.ns)

    @cached_property
    def attributes(self) -> Any:
        attrs = _attributes(self.event)
        return decode_payloads(to_json(attrs)) if attrs is not None else {}

    @property
    def details(self) -> str:
        return pretty(self.attributes)

    @cached_property
    def summary(self) -> str:
        """The event in one line, as Temporal's UI shows it."""
        attrs = self.attributes
        return history_lines.summary(
            self.event_type, attrs if isinstance(attrs, dict) else {}, self.activity
        )


def clock(ns: int | None) -> str:
    """``HH:MM:SS.ffffff`` in UTC: what the history table shows, without Django's
    date filter (thousands of rows)."""
    if ns is None:
        return ""
    seconds, micros = divmod(ns // 1000, 1_000_000)
    minutes, second = divmod(seconds % 86400, 60)
    hour, minute = divmod(minutes, 60)
    return f"{hour:02d}:{minute:02d}:{second:02d}.{micros:06d}"


@dataclass
class ActivityGroup:
    """One scheduled activity and what became of it: compact history."""

    activity_id: str
    activity_type: str
    scheduled: HistoryRow
    started: HistoryRow | None = None
    closed: HistoryRow | None = None
    attempt: int = 1
    last_failure: str = ""
    failure: str = ""
    outcome: str = "scheduled"
    # Model call N for invoke_model_activity, else 0.
    number: int = 0

    @property
    def first_id(self) -> int:
        return self.scheduled.event_id


def full_history(events: Sequence[HistoryEvent]) -> list[HistoryRow]:
    rows = [HistoryRow(e) for e in events]
    activities: dict[int, tuple[str, str]] = {}
    for row in rows:
        if row.event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled = row.event.activity_task_scheduled_event_attributes
            activities[row.event_id] = (scheduled.activity_type.name, scheduled.activity_id)
        elif row.event_type.startswith(f"{_PREFIX}ACTIVITY_TASK_"):
            scheduled_id = getattr(_attributes(row.event), "scheduled_event_id", 0)
            row.activity = activities.get(scheduled_id)
    return rows


def compact_history(history: list[HistoryRow]) -> list[ActivityGroup | HistoryRow]:
    """Activities folded into one row each; workflow-task bookkeeping left out."""
    rows: list[ActivityGroup | HistoryRow] = []
    by_scheduled: dict[int, ActivityGroup] = {}
    model_calls = 0
    for row in history:
        kind = row.event_type.removeprefix(_PREFIX)
        if kind == "ACTIVITY_TASK_SCHEDULED":
            scheduled = row.event.activity_task_scheduled_event_attributes
            group = ActivityGroup(scheduled.activity_id, scheduled.activity_type.name, row)
            if group.activity_type == vocab.MODEL_ACTIVITY_TYPE:
                model_calls += 1
                group.number = model_calls
            by_scheduled[row.event_id] = group
            rows.append(group)
        elif kind.startswith("ACTIVITY_TASK_"):
            attrs = _attributes(row.event)
            group_or_none = by_scheduled.get(getattr(attrs, "scheduled_event_id", 0))
            if group_or_none is None:
                rows.append(row)
                continue
            group = group_or_none
            if kind == "ACTIVITY_TASK_STARTED":
                started = row.event.activity_task_started_event_attributes
                group.started = row
                group.attempt = started.attempt or 1
                group.last_failure = failure_message(_present(started, "last_failure"))
                group.outcome = "started"
            else:
                group.closed = row
                group.outcome = vocab.ACTIVITY_CLOSE_OUTCOMES.get(
                    row.event.event_type, kind.removeprefix("ACTIVITY_TASK_").lower()
                )
                group.failure = failure_message(_present(attrs, "failure"))
        elif not kind.startswith(_NOISE):
            rows.append(row)
    return rows


# -- spans ------------------------------------------------------------------


@dataclass
class TreeRow:
    """One span in the pre-ordered tree; ``closes`` = levels to close after it."""

    span: dict[str, Any]
    depth: int
    has_children: bool
    closes: range
    offset_pct: float
    width_pct: float
    duration: str


def span_tree(spans: list[dict[str, Any]], t0: int, t1: int) -> list[TreeRow]:
    """Spans in depth-first order with enough structure to nest <details> in a flat loop."""
    ids = {r["span_id"] for r in spans}
    children: dict[str, list[dict[str, Any]]] = {}
    roots: list[dict[str, Any]] = []
    for row in spans:
        parent = row["parent_span_id"]
        if parent and parent in ids and parent != row["span_id"]:
            children.setdefault(parent, []).append(row)
        else:
            roots.append(row)
    total = max(t1 - t0, 1)
    ordered: list[tuple[dict[str, Any], int]] = []
    seen: set[str] = set()
    # Spans whose parents form a cycle are reachable from no root: each one
    # not shown yet starts a tree of its own, so nothing stored goes missing.
    for start in (*roots, *spans):
        if start["span_id"] in seen:
            continue
        stack: list[tuple[dict[str, Any], int]] = [(start, 0)]
        while stack:
            row, depth = stack.pop()
            if row["span_id"] in seen:
                continue
            seen.add(row["span_id"])
            ordered.append((row, depth))
            for child in reversed(children.get(row["span_id"], [])):
                stack.append((child, depth + 1))
    rows: list[TreeRow] = []
    for index, (row, depth) in enumerate(ordered):
        next_depth = ordered[index + 1][1] if index + 1 < len(ordered) else 0
        has_children = next_depth > depth
        offset = max(0.0, (row["start_ns"] - t0) / total * 100)
        width = max(0.3, (row["end_ns"] - row["start_ns"]) / total * 100)
        rows.append(
            TreeRow(
                span=row,
                depth=depth,
                has_children=has_children,
                closes=range(0 if has_children else depth - next_depth),
                offset_pct=round(min(offset, 99.7), 2),
                width_pct=round(min(width, 100 - min(offset, 99.7)), 2),
                duration=duration_ns(row["end_ns"] - row["start_ns"]),
            )
        )
    return rows


# -- the story: totals and chart data ------------------------------------------


@dataclass
class Totals:
    model_calls: int = 0
    attempts: int = 0
    failed_attempts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: Decimal | None = None
    spans: int = 0


def story_totals(story: RunStory, span_count: int) -> Totals:
    return Totals(
        model_calls=story.total_model_calls,
        attempts=story.total_attempts,
        failed_attempts=story.failed_attempts,
        tokens_in=story.tokens_in,
        tokens_out=story.tokens_out,
        spans=span_count,
    )


def _ms(ns: int, t0: int) -> float:
    return round((ns - t0) / 1e6, 3)


def cost_of(model: str, tokens_in: int | None, tokens_out: int | None) -> Decimal | None:
    """Estimated USD for one model call or attempt; None without tokens or a price."""
    if tokens_in is None and tokens_out is None:
        return None
    prices = settings.LOOMVIEW_MODEL_PRICES
    if _COSTS.get("prices") is not prices:
        # Settings overrides replace the table: start again.
        _COSTS.clear()
        _COSTS["prices"] = prices
    key = (model, tokens_in or 0, tokens_out or 0)
    if key not in _COSTS:
        if len(_COSTS) > 4096:
            _COSTS.clear()
            _COSTS["prices"] = prices
        cost = pricing.estimate({model: key[1:]}, prices)
        _COSTS[key] = cost.quantize(Decimal("0.000001")) if cost is not None else None
    cached: Decimal | None = _COSTS[key]
    return cached


# Costs of (model, tokens in, tokens out), for the price table under "prices".
_COSTS: dict[Any, Any] = {}


def call_label(call: ModelCall, attempt: int | None = None) -> str:
    """``<agent> · <model> · call N · attempt k/n``: one model call, or one attempt of it."""
    parts = [
        call.agent or "(no agent)",
        call.model or "model",
        f"call {call.number}" if call.number else f"activity {call.activity_id}",
    ]
    if attempt is not None:
        parts.append(f"attempt {attempt}/{len(call.attempts)}")
    elif len(call.attempts) > 1:
        parts.append(f"{len(call.attempts)} attempts")
    return " · ".join(parts)


def _wait_label(wait: StoryItem) -> str:
    if wait.kind == "timer":
        label = f"timer {duration_ns(wait.detail.get('timeout_ns'))}"
        state = wait.detail.get("state")
        return label if state == "pending" else f"{label} ({state})"
    return wait.title


def _attempt_windows(call: ModelCall, t1: int) -> list[tuple[Attempt, int, int, bool]]:
    """(attempt, start, end, estimated) for each attempt the timeline can place.

    Temporal records only the last attempt's start; an earlier attempt that no
    span covers still ran, between the call's scheduling (or the attempt before)
    and the attempt after. It is drawn in an equal share of that gap, marked
    as estimated, rather than left out.
    """
    placed: list[tuple[Attempt, int, int, bool]] = []
    attempts = sorted(call.attempts, key=lambda a: a.number)
    index = 0
    previous_end = call.scheduled_ns
    while index < len(attempts):
        attempt = attempts[index]
        if attempt.start_ns is not None:
            end = attempt.end_ns
            if end is None:
                end = t1 if attempt.outcome == "running" else attempt.start_ns
            placed.append((attempt, attempt.start_ns, end, False))
            previous_end = end
            index += 1
            continue
        unknown = []
        while index < len(attempts) and attempts[index].start_ns is None:
            unknown.append(attempts[index])
            index += 1
        following = attempts[index].start_ns if index < len(attempts) else call.closed_ns
        if previous_end is None or following is None or following <= previous_end:
            continue  # Temporal says they ran; nothing says when.
        slot = (following - previous_end) / len(unknown)
        for number, missing in enumerate(unknown):
            start = int(previous_end + slot * number)
            # Leave the rest of the slot as the retry's backoff.
            placed.append((missing, start, int(start + slot * 0.6), True))
    return placed


def timeline(story: RunStory, t0: int, t1: int) -> dict[str, Any]:
    """Compact data for static/js/timeline.js: times in ms from the run's start."""
    lanes: list[str] = []

    def lane(agent: str) -> int:
        name = agent or "(no agent)"
        if name not in lanes:
            lanes.append(name)
        return lanes.index(name)

    attempts = []
    call_rows = []
    for index, call in enumerate(story.model_calls):
        lane_no = lane(call.agent)
        cost = cost_of(call.model, call.tokens_in, call.tokens_out)
        first = next((a.start_ns for a in call.attempts if a.start_ns is not None), None)
        call_rows.append(
            {
                "id": call.activity_id,
                "n": call.number,
                "agent": call.agent,
                "model": call.model,
                "in": call.tokens_in or 0,
                "out": call.tokens_out or 0,
                "cost": str(cost) if cost is not None else "",
                "label": call_label(call),
                "t": _ms(first if first is not None else call.scheduled_ns or t0, t0),
                "span": call.model_span_id or next(iter(call.span_ids), ""),
            }
        )
        if call.inherited_from:
            call_rows[-1]["inh"] = call.inherited_from
        for attempt, start, end, estimated in _attempt_windows(call, t1):
            attempt_cost = cost_of(call.model, attempt.tokens_in, attempt.tokens_out)
            bar = {
                "c": index,
                "l": lane_no,
                "n": attempt.number,
                "of": len(call.attempts),
                "s": _ms(start, t0),
                "e": _ms(max(end, start), t0),
                "f": attempt.outcome in FAILED_OUTCOMES,
                "o": attempt.outcome,
                "err": attempt.failure[:500],
                "in": attempt.tokens_in,
                "out": attempt.tokens_out,
                "cost": str(attempt_cost) if attempt_cost is not None else "",
                "label": call_label(call, attempt.number),
                "span": attempt.model_span_id or next(iter(attempt.span_ids), ""),
            }
            if not attempt.matched:
                # The history records this attempt; no span covers it.
                bar["u"] = 1
            if estimated:
                bar["est"] = 1
            attempts.append(bar)
    points = []
    marks = []
    for item in story.items:
        if item.time_ns is None:
            continue
        if item.kind in ("tool", "handoff"):
            points.append(
                {
                    "k": item.kind,
                    "l": lane(item.detail.get("agent", "")),
                    "s": _ms(item.time_ns, t0),
                    "e": _ms(max(item.end_ns or item.time_ns, item.time_ns), t0),
                    "f": item.detail.get("status_code") == STATUS_ERROR,
                    "label": item.title,
                    "err": str(item.detail.get("status_message") or "")[:500],
                    "detail": str(item.detail.get("arguments", ""))[:300],
                    "span": next(iter(item.span_ids), ""),
                }
            )
        elif item.kind in ("signal", "update") and item.detail.get("state") != "completed":
            marks.append(
                {
                    "k": item.kind,
                    "t": _ms(item.time_ns, t0),
                    "label": f"{item.kind} {item.title}",
                    "span": next(iter(item.span_ids), ""),
                }
            )
    waits = []
    for wait in story.waits:
        if wait.time_ns is None:
            continue
        end = wait.end_ns if wait.end_ns is not None else t1
        row: dict[str, Any] = {
            "k": wait.kind,
            "s": _ms(wait.time_ns, t0),
            "e": _ms(max(end, wait.time_ns), t0),
            "open": wait.end_ns is None,
            "label": _wait_label(wait),
        }
        if wait.kind == "timer":
            row["fire"] = _ms(wait.detail["fire_ns"], t0)
            row["fire_at"] = _iso(wait.detail["fire_ns"])
        waits.append(row)
    return {
        "duration": _ms(t1, t0),
        "lanes": lanes,
        "calls": call_rows,
        "attempts": attempts,
        "points": points,
        "marks": marks,
        "waits": waits,
        "no_span": sum(1 for a in attempts if a.get("u")),
    }


# -- loading and building ----------------------------------------------------


@dataclass
class Loaded:
    history: History | None
    temporal_error: str | None
    spans: list[dict[str, Any]]
    # store.stored_state() from before the spans were read.
    stored: str = "0"
    # The history came from Loomview's archive: Temporal no longer has the run.
    archived: bool = False
    # The runs around this one (reset base and inherited spans, chain, children).
    family: run_family.Family = field(default_factory=run_family.Family)
    # What the trace-health panel needs from the store.
    health: run_health_panel.Facts = field(default_factory=run_health_panel.Facts)
    # Every span of the run as a stub; None when ``spans`` holds every span whole
    # (the API). With a skeleton, ``spans`` holds what the story reads.
    skeleton: store.Skeleton | None = None
    # Spans the story left out: a run with more than MAX_STORY_SPANS of them.
    truncated: int = 0
    # What the page read for the run and correlated, shared with the other requests
    # made of the same stored spans and history (see _READS).
    read: Read | None = None

    @property
    def events(self) -> Sequence[HistoryEvent]:
        return self.history.events if self.history is not None else ()

    @property
    def signature(self) -> str:
        """What the page was built from, in live_signature()'s terms."""
        if self.temporal_error is not None:
            events = "?"
        elif self.archived:
            # What live_signature() sees once Temporal has forgotten the run.
            events = "-1"
        else:
            events = str(-1 if self.history is None else len(self.history.events))
        return f"{events}-{self.stored}"


@dataclass
class Read:
    """The spans a page read for a run and, once correlated, its story: kept for the
    next request made of the same inputs (a reload, a trace node opened, a model
    call's detail), which would read and correlate the same again."""

    skeleton: store.Skeleton
    spans: list[dict[str, Any]]
    truncated: int
    # (the inherited spans' ids it was correlated with, the story); set once.
    story: tuple[tuple[str, ...], RunStory] | None = None


# Reads by (workflow id, run id, stored state, history length): the stored state
# changes whenever a span of the run is stored, adopted or pruned, and a run's
# history only grows. Nothing read from a Read is changed by its readers.
_READS: OrderedDict[tuple[str, str, str, int], Read] = OrderedDict()
_READS_LOCK = threading.Lock()
# Reads are kept for the runs last used, up to this many spans together (a kept
# span with its story costs ~3 KB), and not for a run larger than half of that.
READS_KEPT_SPANS = 20_000


def _read_spans(workflow_id: str, run_id: str, stored: str, history: History | None) -> Read:
    key = (workflow_id, run_id, stored, -1 if history is None else len(history.events))
    with _READS_LOCK:
        kept = _READS.get(key)
        if kept is not None:
            _READS.move_to_end(key)
            return kept
    skeleton = store.run_skeleton(workflow_id, run_id)
    spans, truncated = story_spans(skeleton)
    read = Read(skeleton, spans, truncated)
    if stored != "0" and len(skeleton.stubs) <= READS_KEPT_SPANS // 2:
        with _READS_LOCK:
            _READS[key] = read
            for old in [k for k in _READS if k[:2] == key[:2] and k != key]:
                del _READS[old]  # an older state of the same run
            while sum(len(r.skeleton.stubs) for r in _READS.values()) > READS_KEPT_SPANS:
                _READS.popitem(last=False)
    return read


def forget_reads() -> None:
    with _READS_LOCK:
        _READS.clear()


def _cache_key(workflow_id: str, run_id: str) -> str:
    # Serialized History protobuf: parsing it back is far faster than JSON.
    return f"loomview:history-pb:{run_digest(workflow_id, run_id)}"


async def load_history_from(workflow_id: str, run_id: str) -> tuple[History | None, bool]:
    """A run's history and whether it came from Loomview's archive.

    From the cache once closed, else from Temporal; a closed history fetched
    here is archived on the spot (dashboard/archive.py sweeps the rest). When
    Temporal has forgotten the run, or cannot be reached, an archived history
    stands in: a closed run's history never changes. (None, False) if neither
    has the run.

    Raises temporal.TemporalUnavailable when Temporal cannot be reached and
    nothing is archived.
    """
    key = _cache_key(workflow_id, run_id)
    cached = await cache.aget(key)
    if isinstance(cached, bytes):
        return History.FromString(cached), False
    try:
        fetched = await temporal.fetch_history(workflow_id, run_id)
    except temporal.RunNotFound:
        archived = await sync_to_async(archive.load)(workflow_id, run_id)
        return archived, archived is not None
    except temporal.TemporalUnavailable:
        archived = await sync_to_async(archive.load)(workflow_id, run_id)
        if archived is None:
            raise
        return archived, True
    if fetched.closed:
        # A closed run's history never changes again.
        await cache.aset(key, fetched.history.SerializeToString(), HISTORY_CACHE_SECONDS)
        if settings.LOOMVIEW_ARCHIVE_HISTORIES:
            try:
                await sync_to_async(archive.save)(workflow_id, run_id, fetched.history)
            except DatabaseError:
                logger.warning("could not archive %s / %s", workflow_id, run_id, exc_info=True)
    return fetched.history, False


async def load_history(workflow_id: str, run_id: str) -> History | None:
    """A run's history (see load_history_from); None if neither Temporal nor the archive has it.

    Raises temporal.TemporalUnavailable.
    """
    history, _ = await load_history_from(workflow_id, run_id)
    return history


async def load(workflow_id: str, run_id: str, *, complete: bool = False) -> Loaded:
    """A run's history and spans: every span whole when ``complete`` (the API), else
    the stubs of all and whole rows of those the story reads (the page)."""
    # Read first: a span stored while the page loads then shows as a change.
    stored = await sync_to_async(store.stored_state)(workflow_id, run_id)
    history: History | None = None
    error: str | None = None
    archived = False
    try:
        history, archived = await load_history_from(workflow_id, run_id)
    except temporal.TemporalUnavailable as exc:
        logger.warning("%s", exc)
        error = exc.reason
    if history is not None:
        # Spans without Temporal ids of their own are tied through the history.
        await linker.link_history(workflow_id, run_id, list(history.events))
    skeleton: store.Skeleton | None = None
    truncated = 0
    read: Read | None = None
    if complete:
        spans = await sync_to_async(store.spans_for_run)(workflow_id, run_id)
    else:
        read = await sync_to_async(_read_spans)(workflow_id, run_id, stored, history)
        skeleton, spans, truncated = read.skeleton, read.spans, read.truncated
    family = await run_family.load(workflow_id, run_id, history, spans)
    # Trace health counts every span (orphans, cycles): the stubs have what it reads.
    every: Sequence[dict[str, Any]] = (
        cast(Sequence[dict[str, Any]], skeleton.stubs) if skeleton is not None else spans
    )
    facts = await sync_to_async(run_health_panel.load)(workflow_id, run_id, every)
    return Loaded(
        history, error, spans, stored, archived, family=family, health=facts,
        skeleton=skeleton, truncated=truncated, read=read,
    )  # fmt: skip


# Past this many spans a page's transient memory is worth handing back to the OS.
BIG_RUN_SPANS = 20_000


def is_big(loaded: Loaded) -> bool:
    count = len(loaded.skeleton.stubs) if loaded.skeleton is not None else len(loaded.spans)
    return count > BIG_RUN_SPANS


def release_memory() -> None:
    """Give the memory a big page freed back to the OS.

    A run with 100,000 spans allocates a few hundred MB while its page is built;
    CPython frees it, but glibc keeps freed heap memory (in every thread's arena)
    for reuse, so the server would stay that large. malloc_trim(0) returns the
    free pages (elsewhere, musl or macOS, this does nothing). SQLite's page cache
    for this thread's connection filled up reading those spans: it is shrunk too,
    and refills as pages are read again.
    """
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA shrink_memory")
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


# The story of one page reads at most this many spans (and their ancestors); a
# run with more is shown from its first ones, and says so.
MAX_STORY_SPANS = 20_000
# How far up a span's ancestors the story's walks look (correlation's bound).
_ANCESTOR_STEPS = 64
_DATA_KINDS = frozenset({"function", "handoff", "agent", "trace", *vocab.MODEL_KINDS})


def _needs_data(row: dict[str, Any]) -> bool:
    # Messages, tool arguments, handoff ends; root spans name the workflow type.
    return row["kind"] in _DATA_KINDS or not row["parent_span_id"]


def story_spans(skeleton: store.Skeleton) -> tuple[list[dict[str, Any]], int]:
    """Whole rows of the spans correlate() reads, of their ancestors and of the roots;
    attributes only where the page uses them. Returns (rows, spans left out)."""
    by_key = {(s.trace_id, s.span_id): s for s in skeleton.stubs}
    picked = [
        s
        for s in skeleton.stubs
        if reads_span(s.kind, s.activity_id, s.name)
        or not s.parent_span_id
        or (s.trace_id, s.parent_span_id) not in by_key
    ]
    picked.sort(key=lambda s: (s.start_ns, s.end_ns))
    truncated = max(0, len(picked) - MAX_STORY_SPANS)
    pks = {s.pk for s in picked[:MAX_STORY_SPANS]}
    for stub in picked[:MAX_STORY_SPANS]:
        node = stub
        for _ in range(_ANCESTOR_STEPS):
            parent = by_key.get((node.trace_id, node.parent_span_id))
            if not node.parent_span_id or parent is None or parent.pk in pks:
                break
            pks.add(parent.pk)
            node = parent
    pks.update(c for pk, c in skeleton.carriers.items() if pk in pks)
    rows = store.span_rows(pks, _needs_data)
    store.inherit_ids(rows, skeleton.carriers)
    ordered = sorted(rows.values(), key=lambda r: (r["start_ns"], r["end_ns"]))
    return ordered, truncated


async def search_of(text: str, workflow_id: str, run_id: str) -> tuple[str, frozenset[str]]:
    """A search from the runs list (``?q=``) on this run: its text ("" when it has no
    words) and the ids of the run's spans that hold its words."""
    text = text[:200]
    if not search.words(text):
        return "", frozenset()
    return text, frozenset(await sync_to_async(search.matching_spans)(text, workflow_id, run_id))


async def live_signature(workflow_id: str, run_id: str) -> tuple[str, bool]:
    """The run's signature (as Loaded.signature) and whether it is open, from cheap
    inputs: the history's length (one describe call, no events) and the run's
    summary row (no spans). The live consumer rebuilds the page only when it changes."""
    try:
        state = await temporal.run_state(workflow_id, run_id)
        events, is_open = str(state.history_length), state.is_open
    except temporal.RunNotFound:
        events, is_open = "-1", False
    except temporal.TemporalUnavailable:
        # Keep polling: the page recovers when Temporal does.
        events, is_open = "?", True
    stored = await sync_to_async(store.stored_state)(workflow_id, run_id)
    return f"{events}-{stored}", is_open


async def build_kept(
    workflow_id: str,
    run_id: str,
    loaded: Loaded,
    *,
    trace_view: str = "agent",
    marked: frozenset[str] = frozenset(),
    lazy_history: bool = False,
    search: str = "",
) -> dict[str, Any]:
    """``build``, then keep what the page learned about the run's trace health, so the
    runs list flags the run as its page does (dashboard.run_health)."""
    ctx = await sync_to_async(build)(
        workflow_id,
        run_id,
        loaded,
        trace_view=trace_view,
        marked=marked,
        lazy_history=lazy_history,
        search=search,
    )
    await sync_to_async(run_health_panel.keep)(workflow_id, run_id, ctx["health"])
    return ctx


async def refresh_health(workflow_id: str, run_id: str) -> None:
    """Check a closed run's trace health against its history, as its page would, and
    keep it for the runs list: what only the history shows (model attempts no span
    covers, a run stopped under spans it never ended) flags the run without anyone
    opening it. The archive sweep calls this for each run it archives."""
    loaded = await load(workflow_id, run_id)
    if loaded.history is None:
        return
    events = list(loaded.history.events)
    run_health = run_health_panel.build(
        every_span(loaded),
        story_of(loaded),
        events,
        loaded.health,
        header_from_history(events).close_ns,
    )
    await sync_to_async(run_health_panel.keep)(workflow_id, run_id, run_health)


def story_of(loaded: Loaded) -> RunStory:
    inherited = loaded.family.inherited
    key = tuple(str(s.get("span_id", "")) for s in inherited)
    read = loaded.read
    if read is not None and read.story is not None and read.story[0] == key:
        return read.story[1]
    # A reset run's calls before its reset point were made (and traced) by its base run.
    story = correlate(loaded.events, [*loaded.spans, *inherited])
    if read is not None:
        read.story = (key, story)
    return story


def every_span(loaded: Loaded) -> Sequence[dict[str, Any]]:
    """Every span of the run: whole rows, or the stubs (which read like rows for the
    fields a stub has) when only the story's spans were read whole."""
    if loaded.skeleton is None:
        return loaded.spans
    return cast(Sequence[dict[str, Any]], loaded.skeleton.stubs)


def frame(loaded: Loaded) -> tuple[Header, int, int]:
    """The run's header and its time frame [t0, t1] in ns: from the first to the last
    of its events and spans, and until now while it is open."""
    events = loaded.events
    spans = loaded.spans
    header = header_from_history(events)
    if loaded.family.lineage.reset_ns is not None:
        # The history starts with the base run's events; this run began at the reset.
        header.original_start_ns = header.start_ns
        header.start_ns = loaded.family.lineage.reset_ns
    if not events:
        attrs: dict[str, Any] = next(
            (s["attributes"] for s in spans if not s["parent_span_id"]), {}
        )
        header.workflow_type = str(attrs.get(vocab.WORKFLOW_TYPE, ""))
        header.task_queue = str(attrs.get(vocab.TASK_QUEUE, ""))
    every = loaded.skeleton.stubs if loaded.skeleton is not None else None
    starts = [s.start_ns for s in every] if every is not None else [s["start_ns"] for s in spans]
    ends = [s.end_ns for s in every] if every is not None else [s["end_ns"] for s in spans]
    if events:
        # Events are in time order: the first and last bound the whole history.
        starts.append(event_ns(events[0]))
        ends.append(event_ns(events[-1]))
    t0 = min(starts) if starts else 0
    t1 = max([*ends, t0 + 1])
    if header.is_open and events:
        # An open run lasts until now: its waits end here, and the live view
        # refits to it as it grows.
        t1 = max(t1, time.time_ns())
    if header.start_ns is None and starts:
        header.start_ns = t0
    return header, t0, t1


def trace_source(
    workflow_id: str,
    run_id: str,
    loaded: Loaded,
    view: str,
    marked: frozenset[str] = frozenset(),
    search: str = "",
) -> tuple[TraceSource, int, int, frozenset[str]]:
    """One trace view of a run, its time frame and the rows a search marks (``marked``:
    the span ids it matched; ``search``: its text, which the rows' links carry on):
    what a lazy node's rows come from."""
    header, t0, t1 = frame(loaded)
    urls = TraceUrls.for_run(workflow_id, run_id, view, search)
    if view == "agent":
        story = story_of(loaded)
        workflow_span = _workflow_span(loaded.spans)
        source = agent_trace(story, header.workflow_type, t0, t1, urls, workflow_span)
        return source, t0, t1, search_marks(marked, story.model_calls, view)
    return raw_trace(loaded, loaded.spans, header.workflow_type, urls), t0, t1, marked


def search_marks(marked: frozenset[str], calls: Sequence[ModelCall], view: str) -> frozenset[str]:
    """The rows a search marks: its spans, and in the agent view each model call any of
    whose spans it matched (the call's row stands for all of them)."""
    if not marked or view != "agent":
        return marked
    return marked | {
        call.model_span_id or next(iter(call.span_ids), "")
        for call in calls
        if marked.intersection(call.span_ids)
    }


def call_detail_ctx(
    workflow_id: str, run_id: str, loaded: Loaded, activity_id: str, attempt: int | None
) -> dict[str, Any] | None:
    """One model call, merged: its attempts with their errors, tokens and cost, the
    spans it is made of, and what the model was asked and answered (in the chosen
    attempt, else the one that answered)."""
    story = story_of(loaded)
    call = next((c for c in story.model_calls if c.activity_id == activity_id), None)
    if call is None:
        return None
    by_id = {s["span_id"]: s for s in [*loaded.spans, *loaded.family.inherited]}
    urls = TraceUrls.for_run(workflow_id, run_id, "agent")
    chosen = next((a for a in call.attempts if a.number == attempt), None)
    span_id = (chosen.model_span_id or next(iter(chosen.span_ids), "")) if chosen else ""
    model_span = by_id.get(span_id or call.model_span_id)
    attempts = [
        {
            "number": a.number,
            "outcome": a.outcome,
            "failed": a.outcome in FAILED_OUTCOMES,
            "start": ns_to_datetime(a.start_ns),
            "duration": duration_ns(a.end_ns - a.start_ns) if a.start_ns and a.end_ns else "",
            "tokens_in": a.tokens_in,
            "tokens_out": a.tokens_out,
            "cost": cost_of(call.model, a.tokens_in, a.tokens_out),
            "error": a.failure,
            "url": urls.call(activity_id, a.number),
            "chosen": chosen is not None and a.number == chosen.number,
        }
        for a in call.attempts
    ]
    spans = [
        {"name": by_id[i]["name"], "kind": by_id[i]["kind"], "url": urls.span(i), "id": i}
        for i in call.span_ids
        if i in by_id
    ]
    return {
        "workflow_id": workflow_id,
        "run_id": run_id,
        "call": call,
        "label": call_label(call),
        "cost": cost_of(call.model, call.tokens_in, call.tokens_out),
        "attempts": attempts,
        "chosen": chosen,
        "merged_spans": spans,
        "model": span_detail_ctx(model_span) if model_span is not None else None,
    }


def build(
    workflow_id: str,
    run_id: str,
    loaded: Loaded,
    page: bool = True,
    *,
    trace_view: str = "agent",
    marked: frozenset[str] = frozenset(),
    lazy_history: bool = False,
    search: str = "",
) -> dict[str, Any]:
    """Everything the run template renders, from history and spans.

    ``page=False`` leaves out the span tree, the timeline and the history rows
    (most of the time after correlate) for callers that want the run's story
    but not its page: the compare page builds two runs. ``trace_view`` is the
    trace shown ("agent" or "raw"), ``marked`` the span ids a search matched
    (highlighted in the trace) and ``search`` its text (which the rows that load
    later carry, to be marked too). ``lazy_history``: a history longer than
    HISTORY_INLINE_EVENTS is left for the page to load when it scrolls into
    view (``history_part``), not built and rendered with the page.
    """
    events = loaded.events
    spans = loaded.spans
    family = loaded.family
    story = story_of(loaded)
    lazy = page and lazy_history and len(events) > HISTORY_INLINE_EVENTS
    history = full_history(events) if page and not lazy else []
    header, t0, t1 = frame(loaded)
    every = every_span(loaded)
    totals = story_totals(story, len(every))
    by_model: dict[str, tuple[int, int]] = {}
    for call in story.model_calls:
        tokens = by_model.get(call.model, (0, 0))
        by_model[call.model] = (
            tokens[0] + (call.tokens_in or 0),
            tokens[1] + (call.tokens_out or 0),
        )
    calls = story.model_calls
    cost = pricing.estimate(by_model, settings.LOOMVIEW_MODEL_PRICES) if calls else None
    run_health = run_health_panel.build(every, story, events, loaded.health, header.close_ns)
    totals.cost = cost.quantize(Decimal("0.0001")) if cost is not None else None
    namespace = temporal.target()[1]
    tree = span_tree(spans, t0, t1) if page and loaded.skeleton is None else []
    view = trace_view if trace_view in TRACE_VIEWS else "agent"
    marked = search_marks(marked, calls, view)
    source: TraceSource | None = None
    if page:
        urls = TraceUrls.for_run(workflow_id, run_id, view, search if marked else "")
        source = (
            agent_trace(story, header.workflow_type, t0, t1, urls, _workflow_span(spans))
            if view == "agent"
            else raw_trace(loaded, spans, header.workflow_type, urls)
        )
    waits = waiting.waiting_for(story) if header.is_open and page else None
    # Only a run that received signals or updates can be a conversation: the
    # others skip reading every model call's messages.
    exchanges = any(item.kind in ("signal", "update") for item in story.items)
    turns = transcript.turns(story, events, header.is_open) if page and exchanges else []
    output_url = ""
    call_urls = TraceUrls.for_run(workflow_id, run_id, "agent")
    link_turns(turns, workflow_id, run_id, call_urls)
    if waits is not None and waits.output is not None and call_urls.call_base:
        output_url = call_urls.call(waits.output.activity_id)
    return {
        "workflow_id": workflow_id,
        "run_id": run_id,
        "namespace": namespace,
        "header": header,
        "waiting": waits,
        "waiting_output_url": output_url,
        # The run's last turns (its transcript page has them all, a page at a time).
        "conversation": turns[-RUN_PAGE_TURNS:] if transcript.is_conversation(turns) else [],
        "conversation_turns": len(turns),
        "call_urls": call_urls,
        "start": ns_to_datetime(header.start_ns),
        "close": ns_to_datetime(header.close_ns),
        "duration_ns": run_duration_ns(header, t1),
        "input_json": pretty(header.input) if header.has_input else "",
        "result_json": pretty(header.result) if header.has_result else "",
        "totals": totals,
        "calls": calls,
        "story": story,
        "timeline": timeline(story, t0, t1) if page else {},
        "tree": tree,
        "trace_view": view,
        "trace_html": (
            render_trace(source, source.roots, 0, 0, t0, t1, marked) if source else SafeString("")
        ),
        "trace_rows": source.size if source else 0,
        "truncated": loaded.truncated,
        "history": history,
        "compact": compact_history(history),
        "history_events": len(events),
        "history_lazy": lazy,
        "family": family,
        "health": run_health,
        "inherited_calls": [c for c in calls if c.inherited_from],
        "has_history": loaded.history is not None,
        "archived": loaded.archived,
        "live_sig": loaded.signature,
        "temporal_error": loaded.temporal_error,
        "temporal_address": temporal.target()[0],
        "is_open": header.is_open or (loaded.history is None and not header.close_ns),
        "temporal_link": (
            f"{settings.LOOMVIEW_TEMPORAL_UI_URL}/namespaces/{_q(namespace)}"
            f"/workflows/{_q(workflow_id)}/{_q(run_id)}/history"
        ),
        "openai_trace_links": openai_trace_links(spans),
    }


# The turns of a conversation the run page shows: its last ones.
RUN_PAGE_TURNS = 20
# A history longer than this is not part of the run page's first response: its
# section (far below the fold) loads when it scrolls into view (history_part).
HISTORY_INLINE_EVENTS = 400


async def history_part(workflow_id: str, run_id: str, mode: str) -> dict[str, Any]:
    """What the run page's history section renders, from the history alone: no spans
    are read and nothing is correlated (the section a long history loads lazily)."""
    history: History | None = None
    error: str | None = None
    try:
        history, _ = await load_history_from(workflow_id, run_id)
    except temporal.TemporalUnavailable as exc:
        error = exc.reason
    events = history.events if history is not None else ()
    rows = await sync_to_async(full_history)(events)
    return {
        "workflow_id": workflow_id,
        "run_id": run_id,
        "has_history": history is not None,
        "temporal_error": error,
        "history": rows,
        "compact": compact_history(rows) if mode != "full" else [],
        "history_events": len(events),
        "history_lazy": False,
        "history_mode": mode,
    }


def link_turns(
    turns: Sequence[transcript.Turn], workflow_id: str, run_id: str, urls: TraceUrls
) -> None:
    """Tie each turn to its run and its model calls' detail pages."""
    for turn in turns:
        turn.workflow_id, turn.run_id = workflow_id, run_id
        if urls.call_base:
            turn.links = [(c.number, urls.call(c.activity_id)) for c in turn.calls]


async def conversation(workflow_id: str, run_id: str) -> tuple[list[transcript.Turn], int] | None:
    """The whole conversation a run belongs to: every run of its continue-as-new chain
    in order, turn by turn. Returns (turns, runs in the chain); None for an unknown run."""
    first = await load(workflow_id, run_id)
    if first.history is None and not first.spans:
        return None
    chain = first.family.chain or [(workflow_id, run_id)]
    turns: list[transcript.Turn] = []
    for key in chain:
        loaded = first if key == (workflow_id, run_id) else await load(*key)
        if loaded.history is None and not loaded.spans:
            continue

        def one(loaded: Loaded = loaded, key: tuple[str, str] = key) -> list[transcript.Turn]:
            header = header_from_history(loaded.events)
            found = transcript.turns(story_of(loaded), loaded.events, header.is_open)
            link_turns(found, *key, TraceUrls.for_run(*key, "agent"))
            return found

        turns.extend(await sync_to_async(one)())
    for number, turn in enumerate(turns, 1):
        turn.number = number
    return turns, len(chain)


def span_base_url(workflow_id: str, run_id: str) -> str:
    """The URL a span id is appended to; "" for ids the run page's route cannot carry."""
    try:
        return reverse("dash-run-span", args=[workflow_id, run_id, "x"]).removesuffix("x/")
    except NoReverseMatch:  # e.g. a workflow id with a slash
        return ""


def openai_trace_links(spans: list[dict[str, Any]]) -> list[str]:
    """Links to the run's Agents SDK traces in OpenAI's dashboard, if the worker sent them.

    Only spans that say OpenAI traces were on count; the id is sender-controlled
    text, so only a well-formed Agents SDK trace id makes a link.
    """
    links: dict[str, None] = {}
    for span in spans:
        attrs = span.get("attributes") or {}
        trace_id = attrs.get(vocab.AGENTS_TRACE_ID)
        if (
            attrs.get(vocab.AGENTS_OPENAI_TRACES) is True
            and isinstance(trace_id, str)
            and _AGENTS_TRACE_ID.fullmatch(trace_id)
        ):
            links[OPENAI_TRACE_URL.format(trace_id=trace_id)] = None
    return list(links)


# -- the trace: an agent view and a raw view, a bounded number of rows at a time -----

TRACE_VIEWS = ("agent", "raw")
# Rows one response renders at most: a run may have 100,000 spans; the rest
# load when their node is opened, or with "Show more".
TREE_BUDGET = 400
# Children of one node shown before a "Show more" row.
TREE_PAGE = 200
# Levels one response opens; deeper ones load when opened.
TREE_DEPTH = 40
# Indentation classes d0..d40 in run.css.
_MAX_INDENT = 40


_PLAIN = re.compile(r"[A-Za-z0-9_.\-]*")


def _path_part(text: str) -> str:
    # Span and activity ids are nearly always plain; quote() is slow for thousands.
    return text if _PLAIN.fullmatch(text) else quote(text, safe="")


@dataclass
class TraceUrls:
    span_base: str
    call_base: str
    trace: str
    view: str
    # A search whose matches the rows mark: rows loaded later ("Show more", a lazy
    # node) are marked too.
    search: str = ""

    @classmethod
    def for_run(cls, workflow_id: str, run_id: str, view: str, search: str = "") -> TraceUrls:
        args = [workflow_id, run_id]
        try:
            return cls(
                reverse("dash-run-span", args=[*args, "x"]).removesuffix("x/"),
                reverse("dash-run-call", args=[*args, "x"]).removesuffix("x/"),
                reverse("dash-run-trace", args=args),
                view,
                search,
            )
        except NoReverseMatch:  # e.g. a workflow id with a slash: no run page to link
            return cls("", "", "", view, search)

    def span(self, span_id: str) -> str:
        return f"{self.span_base}{_path_part(span_id)}/"

    def call(self, activity_id: str, attempt: int | None = None) -> str:
        url = f"{self.call_base}{_path_part(activity_id)}/"
        return f"{url}?attempt={attempt}" if attempt is not None else url

    def children(self, key: str, offset: int, depth: int) -> str:
        params: dict[str, str | int] = {
            "view": self.view, "node": key, "offset": offset, "depth": depth,
        }  # fmt: skip
        if self.search:
            params["q"] = self.search
        return f"{self.trace}?{urlencode(params)}"


@dataclass
class Node:
    """One row of a trace view."""

    key: str
    kind: str
    name: str
    start_ns: int | None = None
    end_ns: int | None = None
    error: bool = False
    # The small column: "#activity·attempt" in the raw view, tokens and cost in the agent view.
    extra: str = ""
    href: str = ""
    # The span the side panel shows for this row (keeps the selection across views).
    span_id: str = ""
    classes: str = ""
    title: str = ""
    badge: str = ""


class RawTrace:
    """Every span as the instrumentation sent it, from the run's skeleton; rows are
    read from the store only for the nodes shown."""

    def __init__(
        self,
        stubs: Sequence[store.SpanStub],
        rows: dict[int, dict[str, Any]],
        workflow_type: str,
        urls: TraceUrls,
        load: Callable[[list[int]], dict[int, dict[str, Any]]] | None,
    ) -> None:
        self.urls = urls
        self.rows = rows
        self.load = load
        self.stubs = {str(s.pk): s for s in stubs}
        self.size = len(stubs)
        keys = {(s.trace_id, s.span_id): str(s.pk) for s in stubs}
        self.kids: dict[str, list[str]] = {}
        roots: list[str] = []
        for stub in sorted(stubs, key=lambda s: (s.start_ns, s.end_ns)):
            parent = keys.get((stub.trace_id, stub.parent_span_id))
            if stub.parent_span_id and parent is not None and stub.parent_span_id != stub.span_id:
                self.kids.setdefault(parent, []).append(str(stub.pk))
            else:
                roots.append(str(stub.pk))
        roots.extend(self._cycles(roots))
        self.synthetic: dict[str, Node] = {}
        if len(roots) > 1:
            # An open run's spans wait for parents that end (and are sent) last: one
            # tree under the run, not separate roots.
            first = min(self.stubs[k].start_ns for k in roots)
            last = max(self.stubs[k].end_ns for k in roots)
            self.synthetic["run"] = Node(
                "run", "run", f"{workflow_type or 'workflow'} run", first, last,
                title="Spans whose parent is not stored (yet) hang here",
            )  # fmt: skip
            self.kids["run"] = roots
            roots = ["run"]
        self.roots = roots

    def _cycles(self, roots: list[str]) -> list[str]:
        """Spans no root reaches (their parents form a cycle): each cycle shows from
        its earliest span, cut from its parent there."""
        reached: set[str] = set()
        stack = list(roots)
        while stack:
            key = stack.pop()
            if key in reached:
                continue
            reached.add(key)
            stack.extend(self.kids.get(key, ()))
        extra: list[str] = []
        rest = sorted(
            (s for k, s in self.stubs.items() if k not in reached), key=lambda s: s.start_ns
        )
        for stub in rest:
            key = str(stub.pk)
            if key in reached:
                continue
            extra.append(key)
            for kids in self.kids.values():
                if key in kids:
                    kids.remove(key)
            stack = [key]
            while stack:
                node = stack.pop()
                if node not in reached:
                    reached.add(node)
                    stack.extend(self.kids.get(node, ()))
        return extra

    def children(self, key: str) -> list[str]:
        return self.kids.get(key, [])

    def nodes(self, keys: set[str]) -> dict[str, Node]:
        missing = [int(k) for k in keys if k not in self.synthetic and int(k) not in self.rows]
        if missing and self.load is not None:
            self.rows.update(self.load(missing))
        out = {k: self.synthetic[k] for k in keys if k in self.synthetic}
        for key in keys - out.keys():
            row = self.rows.get(int(key))
            stub = self.stubs[key]
            if row is None:  # deleted meanwhile
                out[key] = Node(key, stub.kind, stub.name, stub.start_ns, stub.end_ns)
                continue
            attempt = f"#{row['activity_id']}·{row['attempt']}" if row["attempt"] else ""
            out[key] = Node(
                key, row["kind"], row["name"], row["start_ns"], row["end_ns"],
                error=row["status_code"] == STATUS_ERROR,
                extra=attempt if row["activity_id"] else "",
                href=self.urls.span(row["span_id"]), span_id=row["span_id"],
            )  # fmt: skip
        return out


def raw_trace(
    loaded: Loaded, spans: list[dict[str, Any]], workflow_type: str, urls: TraceUrls
) -> RawTrace:
    if loaded.skeleton is not None:
        rows = {r["pk"]: r for r in spans if "pk" in r}
        return RawTrace(
            loaded.skeleton.stubs, rows, workflow_type, urls,
            lambda pks: store.span_rows(pks, lambda _: False),
        )  # fmt: skip
    # Every span is here already: number them.
    stubs = [
        store.SpanStub(
            i, r["trace_id"], r["span_id"], r["parent_span_id"], r["start_ns"], r["end_ns"],
            r["kind"], r["activity_id"], r["name"], r.get("attempt"), bool(r.get("inherited")),
        )
        for i, r in enumerate(spans)
    ]  # fmt: skip
    return RawTrace(stubs, dict(enumerate(spans)), workflow_type, urls, None)


class AgentTrace:
    """The run as its agents lived it, from the RunStory: one row per model call
    (its activity spans, attempts and generation merged; attempts below it), and
    tools, handoffs and guardrails under their agent; wrapper spans folded away;
    signals, updates and waits beside the agents, in time order."""

    def __init__(self, nodes: dict[str, Node], kids: dict[str, list[str]], urls: TraceUrls) -> None:
        self.urls = urls
        self.all = nodes
        self.kids = kids
        self.roots = ["run"]
        self.size = len(nodes)

    def children(self, key: str) -> list[str]:
        return self.kids.get(key, [])

    def nodes(self, keys: set[str]) -> dict[str, Node]:
        return {k: self.all[k] for k in keys}


def short_usd(cost: Decimal | None) -> str:
    """A model call's cost in a narrow column: two significant digits below a cent."""
    if cost is None:
        return ""
    if cost == 0 or cost >= Decimal("0.01"):
        return f"${cost.quantize(Decimal('0.01'), ROUND_HALF_UP)}"
    step = Decimal(1).scaleb(cost.adjusted() - 1)
    return f"${cost.quantize(step, ROUND_HALF_UP)}"


def _tokens_extra(tokens_in: int | None, tokens_out: int | None, cost: Decimal | None) -> str:
    if tokens_in is None and tokens_out is None:
        return ""
    text = f"{tokens_in or 0:,}→{tokens_out or 0:,}"
    return f"{text} · {short_usd(cost)}" if cost is not None else text


def _workflow_span(spans: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The span of the workflow run itself (Temporal's RunWorkflow), if stored."""
    prefix = vocab.WORKFLOW_SPAN_PREFIXES[0] + ":"
    return next((s for s in spans if s["name"].startswith(prefix)), None)


def agent_trace(
    story: RunStory,
    workflow_type: str,
    t0: int,
    t1: int,
    urls: TraceUrls,
    workflow_span: dict[str, Any] | None = None,
) -> AgentTrace:
    run = Node("run", "run", f"{workflow_type or 'workflow'} run", t0, t1, badge="run")
    if workflow_span is not None:
        run.name = workflow_span["name"]
        run.href = urls.span(workflow_span["span_id"])
        run.span_id = workflow_span["span_id"]
        run.error = workflow_span["status_code"] == STATUS_ERROR
    nodes: dict[str, Node] = {"run": run}
    kids: dict[str, list[str]] = {}
    agent_keys: dict[str, str] = {}
    by_name: dict[str, str] = {}

    def add(parent: str, node: Node) -> None:
        nodes[node.key] = node
        kids.setdefault(parent, []).append(node.key)

    for agent in story.agents:
        key = f"agent:{agent.span_id}"
        agent_keys[agent.span_id] = key
        by_name.setdefault(agent.agent, key)
        add("run", Node(
            key, "agent", agent.agent, agent.start_ns, agent.end_ns,
            error=agent.status_code == STATUS_ERROR, href=urls.span(agent.span_id),
            span_id=agent.span_id, classes=" agent-row",
        ))  # fmt: skip

    def parent_for(agent_span_id: str, agent: str, start: int | None) -> str:
        if agent_span_id in agent_keys:
            return agent_keys[agent_span_id]
        if not agent:
            return "run"
        if agent not in by_name:
            key = f"agent-name:{agent}"
            by_name[agent] = key
            add("run", Node(key, "agent", agent, start, start, classes=" agent-row"))
        return by_name[agent]

    for call in story.model_calls:
        timed = [a for a in call.attempts if a.start_ns is not None]
        start = timed[0].start_ns if timed else call.scheduled_ns
        end = max((a.end_ns or a.start_ns or 0 for a in timed), default=call.closed_ns)
        final = call.attempts[-1].number if call.attempts else None
        cost = cost_of(call.model, call.tokens_in, call.tokens_out)
        key = f"call:{call.activity_id}"
        span_id = call.model_span_id or next(iter(call.span_ids), "")
        parent = parent_for(call.agent_span_id, call.agent, start)
        label, title, classes = call_label(call, final), f"{len(call.span_ids)} spans merged", ""
        if call.inherited_from:
            # Made by the run this one was reset from, before the reset point.
            label += " · inherited"
            title = f"Made before the reset point by run {call.inherited_from}; {title}"
            classes = " inherited"
        add(parent, Node(
            key, "generation", label, start, end,
            error=call.outcome in FAILED_OUTCOMES,
            extra=_tokens_extra(call.tokens_in, call.tokens_out, cost),
            href=urls.call(call.activity_id), span_id=span_id, classes=" call-row" + classes,
            badge="model call", title=title,
        ))  # fmt: skip
        if len(call.attempts) > 1:
            for attempt in call.attempts:
                failed = attempt.outcome in FAILED_OUTCOMES
                name = f"attempt {attempt.number}/{len(call.attempts)} · {attempt.outcome}"
                if failed and attempt.failure:
                    name += f": {attempt.failure.splitlines()[0][:200]}"
                attempt_cost = cost_of(call.model, attempt.tokens_in, attempt.tokens_out)
                add(key, Node(
                    f"attempt:{call.activity_id}:{attempt.number}", "attempt", name,
                    attempt.start_ns, attempt.end_ns, error=failed,
                    extra=_tokens_extra(attempt.tokens_in, attempt.tokens_out, attempt_cost),
                    href=urls.call(call.activity_id, attempt.number),
                    span_id=attempt.model_span_id or next(iter(attempt.span_ids), ""),
                    classes=" attempt-row",
                ))  # fmt: skip

    tools = [(i.title, i.time_ns or 0, i.end_ns or 0) for i in story.items if i.kind == "tool"]
    for item in story.items:
        if item.kind in ("tool", "handoff", "guardrail"):
            span_id = next(iter(item.span_ids), "")
            kind = {"tool": "function"}.get(item.kind, item.kind)
            agent = item.detail.get("agent", "")
            add(
                parent_for(item.detail.get("agent_span_id", ""), agent, item.time_ns),
                Node(
                    f"span:{span_id}", kind, item.title, item.time_ns, item.end_ns,
                    error=item.detail.get("status_code") == STATUS_ERROR,
                    href=urls.span(span_id) if span_id else "", span_id=span_id,
                ),
            )  # fmt: skip
        elif item.kind in ("signal", "update") and item.detail.get("state") != "completed":
            span_id = next(iter(item.span_ids), "")
            add("run", Node(
                f"event:{item.event_ids[0] if item.event_ids else len(nodes)}", item.kind,
                item.title, item.time_ns, item.time_ns,
                href=urls.span(span_id) if span_id else "", span_id=span_id,
            ))  # fmt: skip
        elif item.kind == "activity":
            start, end = item.time_ns or 0, item.end_ns or item.time_ns or 0
            # An activity offered as a tool shows as that tool already.
            if any(t == item.title and ts <= end and start <= te for t, ts, te in tools):
                continue
            add("run", Node(
                f"activity:{item.event_ids[0] if item.event_ids else len(nodes)}", "activity",
                f"{item.title} · {item.detail.get('outcome', '')}", item.time_ns, item.end_ns,
                error=item.detail.get("outcome") in FAILED_OUTCOMES,
                title=str(item.detail.get("failure") or ""),
            ))  # fmt: skip
    for index, wait in enumerate(story.waits):
        if wait.kind == "pending":
            continue
        add("run", Node(
            f"wait:{index}", "wait", _wait_label(wait), wait.time_ns,
            wait.end_ns if wait.end_ns is not None else t1,
            badge=wait.kind, classes=" wait-row",
        ))  # fmt: skip
    for children in kids.values():
        children.sort(key=lambda k: (nodes[k].start_ns is None, nodes[k].start_ns or 0))
    return AgentTrace(nodes, kids, urls)


TraceSource = RawTrace | AgentTrace

_TRACE_ROW = (
    '<{tag} class="span-row{error}{match}{classes}"{link} data-span="{span}"{title}>'
    '<span class="kind kind-{kind}">{badge}</span><span class="span-name">{name}</span>'
    '<span class="att">{extra}</span><span class="dur">{duration}</span>{bar}</{tag}>'
)
_LINK = ' href="{url}" hx-get="{url}" hx-target="#span-panel"'
_BAR = (
    '<svg class="dbar" viewBox="0 0 1000 6" preserveAspectRatio="none" aria-hidden="true">'
    '<rect x="{x}" width="{w}" height="6"/></svg>'
)


def _trace_row(node: Node, t0: int, t1: int, marked: frozenset[str]) -> str:
    """One row; every value from a span goes through ``escape``.

    Built with str.format and html.escape, not templates: a page renders
    hundreds of these, and format_html would cost most of the page's time.
    """
    total = max(t1 - t0, 1)
    bar = ""
    duration = ""
    if node.start_ns is not None:
        end = node.end_ns if node.end_ns is not None else node.start_ns
        x = min(max((node.start_ns - t0) / total * 1000, 0.0), 997.0)
        w = min(max((end - node.start_ns) / total * 1000, 3.0), 1000.0 - x)
        bar = _BAR.format(x=round(x, 1), w=round(w, 1))
        duration = duration_ns(max(end - node.start_ns, 0))
    return _TRACE_ROW.format(
        tag="a" if node.href else "span",
        error=" is-error" if node.error else "",
        match=" is-match" if node.span_id and node.span_id in marked else "",
        classes=escape(node.classes),
        link=_LINK.format(url=escape(node.href)) if node.href else "",
        span=escape(node.span_id),
        title=f' title="{escape(node.title)}"' if node.title else "",
        kind=escape(node.kind),
        badge=escape(node.badge or node.kind),
        name=escape(node.name),
        extra=escape(node.extra),
        duration=escape(duration),
        bar=bar,
    )


def _plan(source: TraceSource, keys: list[str], depth: int) -> dict[str, list[str]]:
    """Which nodes open, breadth first, within TREE_BUDGET rows and TREE_DEPTH levels:
    the top of a huge tree shows, its depths load when opened."""
    expanded: dict[str, list[str]] = {}
    count = len(keys)
    queue = deque((key, 0) for key in keys)
    while queue:
        key, level = queue.popleft()
        children = source.children(key)
        if not children or level >= TREE_DEPTH:
            continue
        take = children[:TREE_PAGE]
        if count + len(take) > TREE_BUDGET:
            continue
        expanded[key] = take
        count += len(take)
        queue.extend((child, level + 1) for child in take)
    return expanded


def _more_row(url: str, shown: int, total: int, depth: int) -> str:
    left = total - shown
    url = escape(url)
    return (
        f'<div class="node leaf d{min(depth, _MAX_INDENT)}"><a class="more-row" href="{url}"'
        f' hx-get="{url}" hx-swap="outerHTML" hx-target="closest .node">'
        f"Show {min(TREE_PAGE, left):,} more of {left:,}</a></div>"
    )


def render_trace(
    source: TraceSource,
    siblings: list[str],
    offset: int,
    depth: int,
    t0: int,
    t1: int,
    marked: frozenset[str] = frozenset(),
    parent: str | None = None,
) -> SafeString:
    """Rows for ``siblings[offset:offset + TREE_PAGE]`` and what opens below them, as
    nested <details>; nodes not opened load their children when the user opens them.
    Iterative: a chain of parents a thousand deep does not recurse."""
    keys = siblings[offset : offset + TREE_PAGE]
    expanded = _plan(source, keys, depth)
    shown = set(keys).union(*expanded.values()) if expanded else set(keys)
    nodes = source.nodes(shown)
    parts: list[str] = []
    stack: list[tuple[bool, str, int]] = [(False, key, depth) for key in reversed(keys)]
    while stack:
        closing, key, level = stack.pop()
        if closing:
            children = source.children(key)
            opened = len(expanded[key])
            if len(children) > opened:
                parts.append(
                    _more_row(
                        _children_url(source, key, opened, level), opened, len(children), level
                    )
                )
            parts.append("</details>")
            continue
        node = nodes[key]
        count = len(source.children(key))
        row = _trace_row(node, t0, t1, marked)
        indent = f"d{min(level, _MAX_INDENT)}"
        if not count:
            parts.append(f'<div class="node leaf {indent}">{row}</div>')
        elif key in expanded:
            parts.append(
                f'<details class="node {indent}" open><summary>'
                f'<i class="tw" aria-hidden="true"></i>{row}</summary>'
            )
            stack.append((True, key, level + 1))
            stack.extend((False, child, level + 1) for child in reversed(expanded[key]))
        else:
            url = escape(_children_url(source, key, 0, level + 1))
            parts.append(
                f'<details class="node lazy {indent}" hx-get="{url}" hx-trigger="toggle once"'
                f' hx-swap="beforeend"><summary><i class="tw" aria-hidden="true"></i>{row}'
                f'<span class="count" title="{count:,} children load when opened">{count:,}</span>'
                "</summary></details>"
            )
    if len(siblings) > offset + len(keys):
        url = _children_url(source, parent or "", offset + len(keys), depth)
        parts.append(_more_row(url, offset + len(keys), len(siblings), depth))
    return SafeString("".join(parts))


def _children_url(source: TraceSource, key: str, offset: int, depth: int) -> str:
    return source.urls.children(key, offset, depth)


def trace_children(
    source: TraceSource, key: str, offset: int, depth: int, t0: int, t1: int,
    marked: frozenset[str] = frozenset(),
) -> SafeString:  # fmt: skip
    """The rows a lazy node or a "Show more" row loads: ``key``'s children from ``offset``
    (the roots for an empty key)."""
    siblings = source.roots if not key else source.children(key)
    return render_trace(source, siblings, offset, depth, t0, t1, marked, key or None)


def render_tree(rows: list[TreeRow], span_base: str) -> SafeString:
    """Every row of span_tree() as the raw view draws it (no budget: rows are given)."""
    urls = TraceUrls(span_base, "", "", "raw")
    spans = [r.span for r in rows]
    stubs = [
        store.SpanStub(
            i, r["trace_id"], r["span_id"], r["parent_span_id"], r["start_ns"], r["end_ns"],
            r["kind"], r["activity_id"], r["name"], r.get("attempt"), bool(r.get("inherited")),
        )
        for i, r in enumerate(spans)
    ]  # fmt: skip
    source = RawTrace(stubs, dict(enumerate(spans)), "", urls, None)
    t0 = min((r["start_ns"] for r in spans), default=0)
    t1 = max((r["end_ns"] for r in spans), default=t0 + 1)
    return render_trace(source, source.roots, 0, 0, t0, t1)


def _q(part: str) -> str:
    return quote(part, safe="")


def span_detail_ctx(span: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = span.get("attributes") or {}

    def first(*names: str) -> Any:
        for name in names:
            if name in attrs:
                return maybe_json(attrs[name])
        return None

    sections = [
        ("Input messages", first(*vocab.INPUT_MESSAGE_KEYS)),
        ("Output", first(*vocab.OUTPUT_MESSAGE_KEYS)),
        ("Tool arguments", first(vocab.GEN_AI_TOOL_ARGUMENTS)),
        ("Tool result", first(vocab.GEN_AI_TOOL_RESULT)),
    ]
    if span["kind"] == "function":
        # For tools input.value/output.value repeat arguments and result.
        sections = sections[2:]
    return {
        "span": span,
        "duration_ms": round((span["end_ns"] - span["start_ns"]) / 1e6, 2),
        "duration": duration_ns(span["end_ns"] - span["start_ns"]),
        "start": ns_to_datetime(span["start_ns"]),
        "sections": [
            (title, value if isinstance(value, str) else pretty(value))
            for title, value in sections
            if value not in (None, "", [])
        ],
        "attributes": sorted((k, str(v)) for k, v in attrs.items()),
        "events": pretty(span.get("events")) if span.get("events") else "",
        "resource": sorted((k, str(v)) for k, v in (span.get("resource") or {}).items()),
    }


# -- the run as JSON ----------------------------------------------------------------


def story_json(ctx: dict[str, Any]) -> dict[str, Any]:
    header: Header = ctx["header"]
    totals: Totals = ctx["totals"]
    calls: list[ModelCall] = ctx["calls"]
    return {
        "workflow_id": ctx["workflow_id"],
        "run_id": ctx["run_id"],
        "status": header.status,
        "workflow_type": header.workflow_type,
        "task_queue": header.task_queue,
        "start_time": ctx["start"].isoformat() if ctx["start"] else None,
        "close_time": ctx["close"].isoformat() if ctx["close"] else None,
        "input": header.input,
        "result": header.result,
        "failure": header.failure or None,
        "temporal_error": ctx["temporal_error"],
        "archived": ctx["archived"],
        "original_start_time": _iso(header.original_start_ns),
        "family": ctx["family"].as_json(),
        "health": ctx["health"].as_json(),
        "totals": {
            "model_calls": totals.model_calls,
            "attempts": totals.attempts,
            "failed_attempts": totals.failed_attempts,
            "tokens_in": totals.tokens_in,
            "tokens_out": totals.tokens_out,
            "cost_usd": str(totals.cost) if totals.cost is not None else None,
            "spans": totals.spans,
        },
        "model_calls": [
            {
                "activity_id": c.activity_id,
                "number": c.number or None,
                "label": call_label(c),
                "agent": c.agent,
                "model": c.model,
                "tokens_in": c.tokens_in,
                "tokens_out": c.tokens_out,
                "cost_usd": _usd(cost_of(c.model, c.tokens_in, c.tokens_out)),
                "outcome": c.outcome,
                "matched": c.matched,
                "inherited_from": c.inherited_from or None,
                "scheduled_time": _iso(c.scheduled_ns),
                "closed_time": _iso(c.closed_ns),
                "attempts": [
                    {
                        "attempt": a.number,
                        "outcome": a.outcome,
                        "start_time": _iso(a.start_ns),
                        "end_time": _iso(a.end_ns),
                        "failed": a.outcome in FAILED_OUTCOMES,
                        "error": a.failure or None,
                        "tokens_in": a.tokens_in,
                        "tokens_out": a.tokens_out,
                        "cost_usd": _usd(cost_of(c.model, a.tokens_in, a.tokens_out)),
                        "span_id": a.model_span_id or next(iter(a.span_ids), None),
                        "matched": a.matched,
                    }
                    for a in c.attempts
                ],
            }
            for c in calls
        ],
        "waits": [
            {
                "kind": w.kind,
                "title": w.title,
                "start_time": _iso(w.time_ns),
                "end_time": _iso(w.end_ns),
                "waiting": w.end_ns is None,
                **({"fires_at": _iso(w.detail["fire_ns"])} if w.kind == "timer" else {}),
                **({"state": w.detail["state"]} if w.kind == "timer" else {}),
            }
            for w in ctx["story"].waits
        ],
        "spans": [
            {
                "trace_id": r.span["trace_id"],
                "span_id": r.span["span_id"],
                "parent_span_id": r.span["parent_span_id"] or None,
                "name": r.span["name"],
                "kind": r.span["kind"],
                "start_time": _iso(r.span["start_ns"]),
                "end_time": _iso(r.span["end_ns"]),
                "status_code": r.span["status_code"],
                "status_message": r.span["status_message"] or None,
                "activity_id": r.span["activity_id"] or None,
                "attempt": r.span["attempt"],
                "agent": r.span["agent"] or None,
                "model": r.span["model"] or None,
                "tokens_in": r.span["tokens_in"],
                "tokens_out": r.span["tokens_out"],
            }
            for r in ctx["tree"]
        ],
    }


def _usd(cost: Decimal | None) -> str | None:
    return str(cost) if cost is not None else None


def _iso(ns: int | None) -> str | None:
    moment = ns_to_datetime(ns)
    return moment.isoformat() if moment else None
