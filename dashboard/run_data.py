"""What the run page shows, shaped from a run's history and the story correlate() tells.

Pure functions, no I/O: the views fetch the history (dashboard.temporal) and
the spans (tracing.store), tracing.correlation.correlate() weaves them into a
RunStory (model calls, attempts, tools, handoffs, signals, updates, totals),
and this module only turns those into what the templates and the timeline
draw: decoded payloads, header facts, the history listing, span tree rows and
chart data. Either input may be missing: without a history (Temporal
unreachable) the page is built from spans alone, without spans (tracing off)
from the history alone.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent

from dashboard.templatetags.runs_format import duration_ns
from tracing.correlation import FAILED_OUTCOMES, RunStory
from tracing.models import ns_to_datetime

_PREFIX = "EVENT_TYPE_"
CLOSE_STATUS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "COMPLETED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "FAILED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: "TIMED_OUT",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: "CANCELED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: "TERMINATED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: "CONTINUED_AS_NEW",
}
# Events that say nothing an engineer debugging a run needs; the full view keeps them.
_NOISE = ("WORKFLOW_TASK_",)


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


def event_ns(event: HistoryEvent) -> int:
    return int(event.event_time.ToNanoseconds())


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

    @property
    def status_label(self) -> str:
        return self.status.replace("_", " ").capitalize()

    @property
    def is_open(self) -> bool:
        return self.status == "RUNNING"


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

    @property
    def time(self) -> datetime | None:
        return ns_to_datetime(self.ns)

    @cached_property
    def attributes(self) -> Any:
        attrs = _attributes(self.event)
        return decode_payloads(to_json(attrs)) if attrs is not None else {}

    @property
    def details(self) -> str:
        return pretty(self.attributes)


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

    @property
    def first_id(self) -> int:
        return self.scheduled.event_id


def full_history(events: Sequence[HistoryEvent]) -> list[HistoryRow]:
    return [HistoryRow(e) for e in events]


def compact_history(history: list[HistoryRow]) -> list[ActivityGroup | HistoryRow]:
    """Activities folded into one row each; workflow-task bookkeeping left out."""
    rows: list[ActivityGroup | HistoryRow] = []
    by_scheduled: dict[int, ActivityGroup] = {}
    for row in history:
        kind = row.event_type.removeprefix(_PREFIX)
        if kind == "ACTIVITY_TASK_SCHEDULED":
            scheduled = row.event.activity_task_scheduled_event_attributes
            group = ActivityGroup(scheduled.activity_id, scheduled.activity_type.name, row)
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
                group.outcome = kind.removeprefix("ACTIVITY_TASK_").lower()
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
    stack: list[tuple[dict[str, Any], int]] = [(r, 0) for r in reversed(roots)]
    seen: set[str] = set()
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


def totals(story: RunStory, span_count: int) -> Totals:
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
        call_rows.append(
            {
                "id": call.activity_id,
                "agent": call.agent,
                "model": call.model,
                "in": call.tokens_in or 0,
                "out": call.tokens_out or 0,
                "span": call.model_span_id or next(iter(call.span_ids), ""),
            }
        )
        for attempt in call.attempts:
            if attempt.start_ns is None:
                continue  # Temporal says it ran; nothing says when.
            end = attempt.end_ns
            if end is None:
                end = t1 if attempt.outcome == "running" else attempt.start_ns
            attempts.append(
                {
                    "c": index,
                    "l": lane_no,
                    "n": attempt.number,
                    "s": _ms(attempt.start_ns, t0),
                    "e": _ms(max(end, attempt.start_ns), t0),
                    "f": attempt.outcome in FAILED_OUTCOMES,
                    "err": attempt.failure[:500],
                    "span": attempt.model_span_id or next(iter(attempt.span_ids), ""),
                }
            )
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
                    "f": item.detail.get("status_code") == 2,
                    "label": item.title,
                    "detail": str(item.detail.get("arguments", ""))[:300],
                    "span": next(iter(item.span_ids), ""),
                }
            )
        elif item.kind in ("signal", "update") and item.detail.get("state") != "completed":
            marks.append(
                {"k": item.kind, "t": _ms(item.time_ns, t0), "label": f"{item.kind} {item.title}"}
            )
    return {
        "duration": _ms(t1, t0),
        "lanes": lanes,
        "calls": call_rows,
        "attempts": attempts,
        "points": points,
        "marks": marks,
    }
