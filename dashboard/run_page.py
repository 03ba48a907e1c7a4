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
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from html import escape
from typing import Any
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError
from django.urls import NoReverseMatch, reverse
from django.utils.safestring import SafeString
from google.protobuf import json_format
from google.protobuf.message import Message
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import History, HistoryEvent

from dashboard import linker, run_family, temporal
from dashboard import run_health as run_health_panel
from dashboard.templatetags.runs_format import duration_ns
from telemetry import vocab
from telemetry.vocab import FAILED_OUTCOMES, STATUS_ERROR, run_digest
from tracing import archive, pricing, store
from tracing.correlation import Attempt, ModelCall, RunStory, StoryItem, correlate, event_ns
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


def run_duration_ns(header: Header) -> int | None:
    """How long the run took, or has been running so far."""
    if header.start_ns is None:
        return None
    end = header.close_ns if header.close_ns is not None else time.time_ns()
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
    # Model call N for invoke_model_activity, else 0.
    number: int = 0

    @property
    def first_id(self) -> int:
        return self.scheduled.event_id


def full_history(events: Sequence[HistoryEvent]) -> list[HistoryRow]:
    return [HistoryRow(e) for e in events]


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
    cost = pricing.estimate(
        {model: (tokens_in or 0, tokens_out or 0)}, settings.LOOMVIEW_MODEL_PRICES
    )
    return cost.quantize(Decimal("0.000001")) if cost is not None else None


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


async def load(workflow_id: str, run_id: str) -> Loaded:
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
    spans = await sync_to_async(store.spans_for_run)(workflow_id, run_id)
    family = await run_family.load(workflow_id, run_id, history, spans)
    facts = await sync_to_async(run_health_panel.load)(workflow_id, run_id, spans)
    return Loaded(history, error, spans, stored, archived, family, facts)


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


async def build_kept(workflow_id: str, run_id: str, loaded: Loaded) -> dict[str, Any]:
    """``build``, then keep what the page learned about the run's trace health, so the
    runs list flags the run as its page does (dashboard.run_health)."""
    ctx = await sync_to_async(build)(workflow_id, run_id, loaded)
    await sync_to_async(run_health_panel.keep)(workflow_id, run_id, ctx["health"])
    return ctx


def build(workflow_id: str, run_id: str, loaded: Loaded, page: bool = True) -> dict[str, Any]:
    """Everything the run template renders, from history and spans.

    ``page=False`` leaves out the span tree, the timeline and the history rows
    (most of the time after correlate) for callers that want the run's story
    but not its page: the compare page builds two runs.
    """
    events = loaded.events
    spans = loaded.spans
    family = loaded.family
    # A reset run's calls before its reset point were made (and traced) by its base run.
    story = correlate(events, [*spans, *family.inherited])
    history = full_history(events) if page else []
    header = header_from_history(events)
    if family.lineage.reset_ns is not None:
        # The history starts with the base run's events; this run began at the reset.
        header.original_start_ns = header.start_ns
        header.start_ns = family.lineage.reset_ns
    if not events:
        attrs: dict[str, Any] = next(
            (s["attributes"] for s in spans if not s["parent_span_id"]), {}
        )
        header.workflow_type = str(attrs.get(vocab.WORKFLOW_TYPE, ""))
        header.task_queue = str(attrs.get(vocab.TASK_QUEUE, ""))
    starts = [s["start_ns"] for s in spans]
    ends = [s["end_ns"] for s in spans]
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
    if header.start_ns is None and spans:
        header.start_ns = t0
    totals = story_totals(story, len(spans))
    by_model: dict[str, tuple[int, int]] = {}
    for call in story.model_calls:
        tokens = by_model.get(call.model, (0, 0))
        by_model[call.model] = (
            tokens[0] + (call.tokens_in or 0),
            tokens[1] + (call.tokens_out or 0),
        )
    calls = story.model_calls
    cost = pricing.estimate(by_model, settings.LOOMVIEW_MODEL_PRICES) if calls else None
    run_health = run_health_panel.build(spans, story, events, loaded.health, header.close_ns)
    totals.cost = cost.quantize(Decimal("0.0001")) if cost is not None else None
    namespace = temporal.target()[1]
    tree = span_tree(spans, t0, t1) if page else []
    span_base = span_base_url(workflow_id, run_id)
    return {
        "workflow_id": workflow_id,
        "run_id": run_id,
        "namespace": namespace,
        "header": header,
        "start": ns_to_datetime(header.start_ns),
        "close": ns_to_datetime(header.close_ns),
        "duration_ns": run_duration_ns(header),
        "input_json": pretty(header.input) if header.has_input else "",
        "result_json": pretty(header.result) if header.has_result else "",
        "totals": totals,
        "calls": calls,
        "story": story,
        "timeline": timeline(story, t0, t1) if page else {},
        "tree": tree,
        "tree_html": render_tree(tree, span_base),
        "history": history,
        "compact": compact_history(history),
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


# -- the span tree as HTML --------------------------------------------------------


_ROW = (
    '<a class="span-row{error}" data-depth="{depth}" href="{url}" hx-get="{url}"'
    ' hx-target="#span-panel" data-span="{id}"><span class="kind kind-{kind}">{kind}</span>'
    '<span class="span-name">{name}</span><span class="att">{attempt}</span>'
    '<span class="dur">{duration}</span>'
    '<span class="dbar"><i data-left="{offset}" data-width="{width}"></i></span></a>'
)


_BRANCH = (
    '<details class="node" open><summary>'
    '<i class="tw" data-depth="{depth}" aria-hidden="true"></i>{link}</summary>'
)
_LEAF = '<div class="node leaf">{link}</div>'
_CLOSE = "</details>"


def render_tree(rows: list[TreeRow], span_base: str) -> SafeString:
    """The span tree as nested <details>; every value from a span is HTML-escaped.

    Built here rather than in the template, and with html.escape rather than
    format_html: a run with 500 model calls has thousands of spans, and either
    would spend most of the page's time on these rows. Every value taken from a
    span goes through ``escape``; only this function's constants do not.
    """
    parts: list[str] = []
    for row in rows:
        span = row.span
        attempt = f"#{span['activity_id']}·{span['attempt']}" if span["attempt"] else ""
        link = _ROW.format(
            error=" is-error" if span["status_code"] == STATUS_ERROR else "",
            depth=int(row.depth),
            url=escape(f"{span_base}{quote(span['span_id'], safe='')}/"),
            id=escape(span["span_id"]),
            kind=escape(span["kind"]),
            name=escape(span["name"]),
            attempt=escape(attempt) if span["activity_id"] else "",
            duration=escape(row.duration),
            offset=float(row.offset_pct),
            width=float(row.width_pct),
        )
        # The twisty sits outside the link, so clicking it folds the node.
        template = _BRANCH if row.has_children else _LEAF
        parts.append(template.format(depth=int(row.depth), link=link))
        parts.append(_CLOSE * len(row.closes))
    return SafeString("".join(parts))


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
