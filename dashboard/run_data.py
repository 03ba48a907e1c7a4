"""What the run page shows, built from a run's Temporal history and its stored spans.

Pure functions, no I/O: the views fetch the history (dashboard.temporal) and
the spans (tracing.store) and hand both here. Either may be missing: without
a history (Temporal unreachable) the page is built from spans alone, without
spans (tracing off) from the history alone.

Temporal's history records only the last attempt of an activity (its
``ActivityTaskStarted`` carries the attempt number and the previous
failure), so earlier attempts and their times come from the spans: one
``RunActivity:invoke_model_activity`` (or generation) span per attempt, with
``temporal.activity.id`` and ``temporal.activity.attempt``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

MODEL_ACTIVITY = "invoke_model_activity"
_PREFIX = "EVENT_TYPE_"
CLOSE_STATUS = {
    "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED": "COMPLETED",
    "EVENT_TYPE_WORKFLOW_EXECUTION_FAILED": "FAILED",
    "EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT": "TIMED_OUT",
    "EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED": "CANCELED",
    "EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED": "TERMINATED",
    "EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW": "CONTINUED_AS_NEW",
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


def event_ns(event: dict[str, Any]) -> int | None:
    stamp = event.get("eventTime")
    if not stamp:
        return None
    # Proto JSON times carry nanoseconds; datetime keeps microseconds, enough here.
    head, _, frac = stamp.rstrip("Z").partition(".")
    base = datetime.fromisoformat(head).replace(tzinfo=UTC)
    nanos = int((frac + "000000000")[:9]) if frac else 0
    return int(base.timestamp()) * 1_000_000_000 + nanos


def event_label(event_type: str) -> str:
    return event_type.removeprefix(_PREFIX).replace("_", " ").title().replace(" ", "")


def _attributes(event: dict[str, Any]) -> dict[str, Any]:
    for key, value in event.items():
        if key.endswith("EventAttributes") and isinstance(value, dict):
            return value
    return {}


def failure_message(failure: dict[str, Any] | None) -> str:
    """A failure and its causes as one line each, outermost first."""
    lines: list[str] = []
    while failure and len(lines) < 8:
        kind = (failure.get("applicationFailureInfo") or {}).get("type", "")
        message = failure.get("message", "")
        lines.append(f"{kind}: {message}" if kind else message)
        failure = failure.get("cause")
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


def header_from_history(events: list[dict[str, Any]]) -> Header:
    header = Header()
    if not events:
        return header
    first = events[0]
    attrs = _attributes(first)
    header.status = "RUNNING"
    header.workflow_type = (attrs.get("workflowType") or {}).get("name", "")
    header.task_queue = (attrs.get("taskQueue") or {}).get("name", "")
    header.start_ns = event_ns(first)
    if "input" in attrs:
        header.input = decode_payloads(attrs["input"])
        header.has_input = True
    last = events[-1]
    status = CLOSE_STATUS.get(last.get("eventType", ""))
    if status:
        header.status = status
        header.close_ns = event_ns(last)
        close = _attributes(last)
        if "result" in close:
            header.result = decode_payloads(close["result"])
            header.has_result = True
        if "failure" in close:
            header.failure = failure_message(close["failure"])
    return header


@dataclass
class HistoryEvent:
    event_id: int
    ns: int | None
    event_type: str
    label: str
    attributes: Any

    @property
    def time(self) -> datetime | None:
        return ns_to_datetime(self.ns)

    @property
    def details(self) -> str:
        return pretty(self.attributes)


@dataclass
class ActivityGroup:
    """One scheduled activity and what became of it: compact history."""

    activity_id: str
    activity_type: str
    scheduled: HistoryEvent
    started: HistoryEvent | None = None
    closed: HistoryEvent | None = None
    attempt: int = 1
    last_failure: str = ""
    failure: str = ""
    outcome: str = "scheduled"
    input: Any = None
    result: Any = None

    @property
    def first_id(self) -> int:
        return self.scheduled.event_id


def full_history(events: list[dict[str, Any]]) -> list[HistoryEvent]:
    return [
        HistoryEvent(
            event_id=int(e.get("eventId", 0)),
            ns=event_ns(e),
            event_type=e.get("eventType", ""),
            label=event_label(e.get("eventType", "")),
            attributes=decode_payloads(_attributes(e)),
        )
        for e in events
    ]


def compact_history(history: list[HistoryEvent]) -> list[ActivityGroup | HistoryEvent]:
    """Activities folded into one row each; workflow-task bookkeeping left out."""
    rows: list[ActivityGroup | HistoryEvent] = []
    by_scheduled: dict[int, ActivityGroup] = {}
    for event in history:
        kind = event.event_type.removeprefix(_PREFIX)
        attrs = event.attributes if isinstance(event.attributes, dict) else {}
        if kind == "ACTIVITY_TASK_SCHEDULED":
            group = ActivityGroup(
                activity_id=str(attrs.get("activityId", "")),
                activity_type=(attrs.get("activityType") or {}).get("name", ""),
                scheduled=event,
                input=attrs.get("input"),
            )
            by_scheduled[event.event_id] = group
            rows.append(group)
        elif kind.startswith("ACTIVITY_TASK_"):
            group_or_none = by_scheduled.get(int(attrs.get("scheduledEventId", 0) or 0))
            if group_or_none is None:
                rows.append(event)
                continue
            group = group_or_none
            if kind == "ACTIVITY_TASK_STARTED":
                group.started = event
                group.attempt = int(attrs.get("attempt", 1) or 1)
                group.last_failure = failure_message(attrs.get("lastFailure"))
                group.outcome = "started"
            else:
                group.closed = event
                group.outcome = kind.removeprefix("ACTIVITY_TASK_").lower()
                group.failure = failure_message(attrs.get("failure"))
                group.result = attrs.get("result")
        elif not kind.startswith(_NOISE):
            rows.append(event)
    return rows


@dataclass
class Marker:
    ns: int
    kind: str  # signal, update
    label: str
    detail: str


def markers_from_history(history: list[HistoryEvent]) -> list[Marker]:
    markers: list[Marker] = []
    for event in history:
        attrs = event.attributes if isinstance(event.attributes, dict) else {}
        if event.ns is None:
            continue
        if event.event_type == "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED":
            name = attrs.get("signalName", "")
            markers.append(Marker(event.ns, "signal", f"signal {name}", pretty(attrs.get("input"))))
        elif event.event_type == "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED":
            request = (attrs.get("acceptedRequest") or {}).get("input") or {}
            name = request.get("name", "")
            markers.append(
                Marker(event.ns, "update", f"update {name}", pretty(request.get("args")))
            )
    return markers


# -- spans ------------------------------------------------------------------


def ns_to_datetime(ns: int | None) -> datetime | None:
    return None if ns is None else datetime.fromtimestamp(ns / 1e9, tz=UTC)


@dataclass
class Attempt:
    attempt: int
    start_ns: int
    end_ns: int
    failed: bool
    error: str = ""
    span_id: str = ""


@dataclass
class ModelCall:
    activity_id: str
    agent: str = ""
    model: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    scheduled_ns: int | None = None
    closed_ns: int | None = None
    generation_span_id: str = ""
    input: Any = None
    output: Any = None

    @property
    def failed_attempts(self) -> int:
        return sum(1 for a in self.attempts if a.failed)

    @property
    def start_ns(self) -> int:
        starts = [a.start_ns for a in self.attempts]
        if self.scheduled_ns is not None:
            starts.append(self.scheduled_ns)
        return min(starts) if starts else 0

    @property
    def sort_key(self) -> tuple[int, int]:
        return (int(self.activity_id) if self.activity_id.isdigit() else 1 << 62, self.start_ns)


@dataclass
class Point:
    """A tool call or handoff on the timeline."""

    kind: str
    label: str
    agent: str
    start_ns: int
    end_ns: int
    failed: bool
    span_id: str
    detail: str = ""


def _agent_of(row: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> str:
    node: dict[str, Any] | None = row
    hops = 0
    while node is not None and hops < 64:
        if node["kind"] == "agent" and node["agent"]:
            return str(node["agent"])
        node = by_id.get(node["parent_span_id"])
        hops += 1
    return str(row.get("agent") or "")


def _is_model_activity_span(row: dict[str, Any]) -> bool:
    return bool(row["activity_id"]) and (
        row["kind"] in ("generation", "response")
        or row["name"] == f"RunActivity:{MODEL_ACTIVITY}"
        or (row.get("attributes") or {}).get("temporal.activity.type") == MODEL_ACTIVITY
    )


def model_calls(
    spans: list[dict[str, Any]], history: list[HistoryEvent] | None = None
) -> list[ModelCall]:
    """Model calls in activity-id order, each with every attempt seen in spans or history."""
    by_id = {r["span_id"]: r for r in spans}
    calls: dict[str, ModelCall] = {}
    # Which activity ids are model calls: history says so for sure; spans too.
    for row in spans:
        if not _is_model_activity_span(row):
            continue
        call = calls.setdefault(row["activity_id"], ModelCall(row["activity_id"]))
        attempt_no = int(row["attempt"] or 1)
        failed = row["status_code"] == 2
        existing = next((a for a in call.attempts if a.attempt == attempt_no), None)
        # The outermost span of an attempt (RunActivity) gives its times; any
        # failing span inside marks it failed.
        if existing is None:
            existing = Attempt(attempt_no, row["start_ns"], row["end_ns"], failed, "", "")
            call.attempts.append(existing)
        if row["name"].startswith("RunActivity:") or not existing.span_id:
            existing.start_ns = min(existing.start_ns, row["start_ns"])
            existing.end_ns = max(existing.end_ns, row["end_ns"])
            existing.span_id = row["span_id"]
        if failed:
            existing.failed = True
            if row["kind"] in ("generation", "response") or not existing.error:
                existing.error = row["status_message"] or existing.error
        if row["kind"] in ("generation", "response"):
            call.model = row["model"] or call.model
            call.agent = call.agent or _agent_of(row, by_id)
            if not failed:
                call.tokens_in += row["tokens_in"] or 0
                call.tokens_out += row["tokens_out"] or 0
                call.generation_span_id = row["span_id"]
                attrs = row.get("attributes") or {}
                call.input = maybe_json(
                    attrs.get("gen_ai.input.messages", attrs.get("input.value"))
                )
                call.output = maybe_json(
                    attrs.get("gen_ai.output.messages", attrs.get("output.value"))
                )
            elif not call.generation_span_id:
                call.generation_span_id = row["span_id"]
    for group in compact_history(history or []):
        if not isinstance(group, ActivityGroup) or group.activity_type != MODEL_ACTIVITY:
            continue
        call = calls.setdefault(group.activity_id, ModelCall(group.activity_id))
        call.scheduled_ns = group.scheduled.ns
        call.closed_ns = group.closed.ns if group.closed else None
        if group.started is not None and group.started.ns is not None:
            last = next((a for a in call.attempts if a.attempt == group.attempt), None)
            failed = group.outcome in ("failed", "timed_out")
            if last is None:
                end = call.closed_ns or group.started.ns
                call.attempts.append(
                    Attempt(group.attempt, group.started.ns, end, failed, group.failure)
                )
            elif failed and not last.error:
                last.failed, last.error = True, group.failure
            if group.last_failure:
                previous = next((a for a in call.attempts if a.attempt == group.attempt - 1), None)
                if previous is not None and not previous.error:
                    previous.failed, previous.error = True, group.last_failure
    for call in calls.values():
        call.attempts.sort(key=lambda a: a.attempt)
    return sorted(calls.values(), key=lambda c: c.sort_key)


def points(spans: list[dict[str, Any]]) -> list[Point]:
    by_id = {r["span_id"]: r for r in spans}
    found: list[Point] = []
    for row in spans:
        attrs = row.get("attributes") or {}
        if row["kind"] == "function":
            found.append(
                Point(
                    "tool",
                    row["tool"] or row["name"],
                    _agent_of(row, by_id),
                    row["start_ns"],
                    row["end_ns"],
                    row["status_code"] == 2,
                    row["span_id"],
                    str(attrs.get("gen_ai.tool.call.arguments", ""))[:300],
                )
            )
        elif row["kind"] == "handoff":
            source = str(attrs.get("agents.handoff.from", row["agent"]))
            target = str(attrs.get("agents.handoff.to", ""))
            found.append(
                Point(
                    "handoff",
                    f"{source} → {target}",
                    source or _agent_of(row, by_id),
                    row["start_ns"],
                    row["end_ns"],
                    row["status_code"] == 2,
                    row["span_id"],
                )
            )
    return found


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
                duration=format_duration(row["end_ns"] - row["start_ns"]),
            )
        )
    return rows


def format_duration(ns: int) -> str:
    ms = ns / 1e6
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{int(ms // 60_000)} m {ms % 60_000 / 1000:.0f} s"


# -- totals and cost ----------------------------------------------------------


@dataclass
class Totals:
    model_calls: int = 0
    attempts: int = 0
    failed_attempts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: Decimal | None = None
    spans: int = 0


def totals(calls: list[ModelCall], span_count: int) -> Totals:
    result = Totals(spans=span_count)
    for call in calls:
        result.model_calls += 1
        result.attempts += len(call.attempts)
        result.failed_attempts += call.failed_attempts
        result.tokens_in += call.tokens_in
        result.tokens_out += call.tokens_out
    return result
