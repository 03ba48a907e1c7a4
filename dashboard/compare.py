"""Two runs side by side: totals, model calls, handoffs and histories, with what differs marked.

Each run is loaded and built exactly as its run page is (dashboard.run_page
``load`` and ``build``, so tracing.correlation.correlate() runs once per run);
this module only lines the two stories up:

- model calls are aligned by agent and order: the k-th call of an agent in A
  against the k-th call of the same agent in B; where the runs went to other
  agents, the calls pair position by position as "went elsewhere";
- each pair gets a diff of its input messages, its output and its tool calls
  (dashboard.diffs), and deltas of tokens and latency;
- handoffs are aligned by the agent that handed off: a pair whose target differs
  went elsewhere;
- history events are aligned by type and subject (activity type, signal name)
  and their order among those; workflow-task bookkeeping is left out, and an
  aligned pair whose details differ (attempt, failure, payload) is marked.

Everything is computed on the server; every text from a run is escaped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from html import escape
from typing import Any
from urllib.parse import quote, unquote, urlencode

from django.urls import reverse
from django.utils.safestring import SafeString
from google.protobuf.message import Message as ProtoMessage
from temporalio.api.enums.v1 import WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent

from dashboard import diffs, run_page
from dashboard.run_page import Header, Loaded, Totals
from dashboard.runs import run_url
from dashboard.templatetags.runs_format import duration_ns
from telemetry import vocab
from tracing.correlation import ModelCall, RunStory
from tracing.models import ns_to_datetime

# Identical events kept around a difference when the rest is folded away.
CONTEXT_EVENTS = 2
# Folds hide at least this many identical rows.
MIN_FOLD = 3
# Identical model calls kept around a difference.
CONTEXT_CALLS = 1
# Event details longer than this are cut (they are compared in full).
_DETAIL_CHARS = 300
_NOISE = ("EVENT_TYPE_WORKFLOW_TASK_SCHEDULED", "EVENT_TYPE_WORKFLOW_TASK_STARTED",
          "EVENT_TYPE_WORKFLOW_TASK_COMPLETED")  # fmt: skip


MINUS = "\u2212"


_FAILED = ("_FAILED", "_TIMED_OUT")


class BadRunRef(ValueError):
    """A run reference that names no run: the message is for the form."""


def parse_ref(raw: str) -> tuple[str, str]:
    """``<workflow id>/<run id>`` (a workflow id may hold ``/``, a run id not) or a run URL."""
    text = raw.strip()
    if "/runs/" in text:
        text = unquote(text.split("/runs/", 1)[1].split("?", 1)[0].strip("/"))
    workflow_id, sep, run_id = text.rpartition("/")
    if not sep or not workflow_id or not run_id:
        raise BadRunRef(f"{raw[:200]!r} is not <workflow id>/<run id>")
    if len(workflow_id) > 1000 or len(run_id) > 255:
        raise BadRunRef("that run reference is too long")
    return workflow_id, run_id


def ref(workflow_id: str, run_id: str) -> str:
    return f"{workflow_id}/{run_id}"


def compare_url(a: tuple[str, str], b: tuple[str, str]) -> str:
    """The compare page of two runs; ids are URL-encoded (a workflow id may hold / ? & #)."""
    return f"{reverse('dash-compare')}?{urlencode({'a': ref(*a), 'b': ref(*b)})}"


# -- one side -------------------------------------------------------------------


@dataclass
class CallView:
    call: ModelCall
    agent: str
    ordinal: int  # the k-th call of this agent in its run
    latency_ns: int | None
    span_url: str

    @property
    def label(self) -> str:
        call = self.call
        number = f"call {call.number}" if call.number else f"activity {call.activity_id}"
        return f"{number} · {self.agent or '(no agent)'}"

    # Messages are parsed only for calls whose recorded text differs.
    @cached_property
    def input(self) -> list[diffs.Message] | None:
        return diffs.messages(self.call.input)

    @cached_property
    def output(self) -> list[diffs.Message] | None:
        return diffs.messages(self.call.output)

    @cached_property
    def tools(self) -> list[diffs.ToolCall]:
        return diffs.tool_calls(self.output)


@dataclass
class Side:
    workflow_id: str
    run_id: str
    header: Header
    totals: Totals
    duration_ns: int | None
    calls: list[CallView]
    story: RunStory
    events: Sequence[HistoryEvent]
    has_history: bool
    temporal_error: str | None
    url: str

    @property
    def start(self) -> datetime | None:
        return ns_to_datetime(self.header.start_ns)


def _latency(call: ModelCall) -> int | None:
    """How long the model took to answer: the last attempt, else schedule to close."""
    for attempt in reversed(call.attempts):
        if attempt.start_ns is not None and attempt.end_ns is not None:
            return max(attempt.end_ns - attempt.start_ns, 0)
    if call.scheduled_ns is not None and call.closed_ns is not None:
        return max(call.closed_ns - call.scheduled_ns, 0)
    return None


def side(workflow_id: str, run_id: str, loaded: Loaded) -> Side:
    ctx = run_page.build(workflow_id, run_id, loaded, page=False)
    header: Header = ctx["header"]
    story: RunStory = ctx["story"]
    span_base = run_page.span_base_url(workflow_id, run_id)
    seen: dict[str, int] = {}
    calls = []
    for call in story.model_calls:
        seen[call.agent] = seen.get(call.agent, 0) + 1
        span = call.model_span_id or next(iter(call.span_ids), "")
        calls.append(
            CallView(
                call=call,
                agent=call.agent,
                ordinal=seen[call.agent],
                latency_ns=_latency(call),
                span_url=f"{span_base}{quote(span, safe='')}/" if span and span_base else "",
            )
        )
    duration = None
    if header.start_ns is not None and header.close_ns is not None:
        duration = max(header.close_ns - header.start_ns, 0)
    return Side(
        workflow_id=workflow_id,
        run_id=run_id,
        header=header,
        totals=ctx["totals"],
        duration_ns=duration,
        calls=calls,
        story=story,
        events=loaded.events,
        has_history=ctx["has_history"],
        temporal_error=ctx["temporal_error"],
        url=run_url(workflow_id, run_id),
    )


# -- totals ------------------------------------------------------------------------


@dataclass
class TotalRow:
    label: str
    a: str
    b: str
    delta: str
    trend: str  # more | less | same | "" (not comparable)


def signed(value: float | Decimal, fmt: Callable[[Any], str]) -> str:
    """A delta with its sign: +12, MINUS 3 (a real minus sign), ±0."""
    if value > 0:
        return "+" + fmt(value)
    if value < 0:
        return MINUS + fmt(-value)
    return "±0"


def _total(label: str, a: Any, b: Any, fmt: Callable[[Any], str]) -> TotalRow:
    if a is None or b is None:
        return TotalRow(label, fmt(a), fmt(b), "—", "")
    delta = b - a
    trend = "more" if delta > 0 else "less" if delta < 0 else "same"
    text = signed(delta, fmt)
    if a and delta:
        text += f" ({signed(round(delta / a * 100), str)} %)"
    return TotalRow(label, fmt(a), fmt(b), text, trend)


def _int(value: Any) -> str:
    return "—" if value is None else f"{int(value):,}"


def _usd(value: Any) -> str:
    return "—" if value is None else f"${Decimal(value):.4f}"


def _dur(value: Any) -> str:
    if value is None:
        return "—"
    return duration_ns(int(value))


def totals(a: Side, b: Side) -> list[TotalRow]:
    ta, tb = a.totals, b.totals
    rows = [
        _total("Duration", a.duration_ns, b.duration_ns, _dur),
        _total("Model calls", ta.model_calls, tb.model_calls, _int),
        _total("Attempts", ta.attempts, tb.attempts, _int),
        _total("Failed attempts", ta.failed_attempts, tb.failed_attempts, _int),
        _total("Tokens in", ta.tokens_in, tb.tokens_in, _int),
        _total("Tokens out", ta.tokens_out, tb.tokens_out, _int),
        _total("Tokens", ta.tokens_in + ta.tokens_out, tb.tokens_in + tb.tokens_out, _int),
        _total("Est. cost", ta.cost, tb.cost, _usd),
    ]
    return rows


# -- model calls -------------------------------------------------------------------


@dataclass
class CallPair:
    a: CallView | None
    b: CallView | None
    status: str  # same | changed | elsewhere | only_a | only_b
    reasons: list[str] = field(default_factory=list)
    inputs: list[diffs.Pair] | None = None
    outputs: list[diffs.Pair] | None = None
    tools: list[diffs.Pair] | None = None
    notes: list[str] = field(default_factory=list)
    tokens_in_delta: int | None = None
    tokens_out_delta: int | None = None
    latency_delta_ns: int | None = None
    open: bool = False  # shown open: the first difference

    @property
    def differs(self) -> bool:
        return self.status != "same"

    @property
    def changed_inputs(self) -> int:
        return sum(1 for p in self.inputs or () if p.differs)

    @property
    def tokens_delta(self) -> str:
        if self.tokens_in_delta is None and self.tokens_out_delta is None:
            return ""
        parts = [
            signed(delta, _int) if delta is not None else "—"
            for delta in (self.tokens_in_delta, self.tokens_out_delta)
        ]
        return " / ".join(parts)

    @property
    def latency_delta(self) -> str:
        return signed(self.latency_delta_ns, _dur) if self.latency_delta_ns is not None else ""


def _delta(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else b - a


def _recorded(value: Any) -> bool:
    return value not in (None, "", "[]", [])


def _content_pairs(
    pair: CallPair, what: str, raw_a: Any, raw_b: Any, parsed: Callable[[CallView], Any]
) -> list[diffs.Pair] | None:
    if not _recorded(raw_a) and not _recorded(raw_b):
        return None
    if not _recorded(raw_a) or not _recorded(raw_b):
        missing = "A" if not _recorded(raw_a) else "B"
        pair.notes.append(f"{what}: not recorded in run {missing} (no spans)")
        return None
    if raw_a == raw_b:
        return None  # the same text: nothing to show
    assert pair.a is not None and pair.b is not None
    a, b = parsed(pair.a), parsed(pair.b)
    if a is None or b is None:
        return None
    pairs = diffs.message_pairs(a, b)
    if any(p.differs for p in pairs):
        pair.reasons.append(what)
    return pairs


def call_pair(a: CallView | None, b: CallView | None, status: str) -> CallPair:
    pair = CallPair(a, b, status)
    if a is None or b is None:
        return pair
    if a.agent != b.agent:
        pair.status = "elsewhere"
        pair.reasons.append("agent")
    if a.call.model != b.call.model:
        pair.reasons.append("model")
    pair.inputs = _content_pairs(pair, "input", a.call.input, b.call.input, lambda v: v.input)
    pair.outputs = _content_pairs(pair, "output", a.call.output, b.call.output, lambda v: v.output)
    if pair.outputs is not None:
        pair.tools = diffs.tool_pairs(a.tools, b.tools)
        if any(p.differs for p in pair.tools):
            pair.reasons.append("tool calls")
    if a.call.outcome != b.call.outcome:
        pair.reasons.append("outcome")
    if len(a.call.attempts) != len(b.call.attempts):
        pair.reasons.append("attempts")
    if pair.status != "elsewhere":
        pair.status = "changed" if pair.reasons else "same"
    pair.tokens_in_delta = _delta(a.call.tokens_in, b.call.tokens_in)
    pair.tokens_out_delta = _delta(a.call.tokens_out, b.call.tokens_out)
    pair.latency_delta_ns = _delta(a.latency_ns, b.latency_ns)
    return pair


def _instructions(view: CallView) -> str:
    messages = view.input or []
    first = messages[0] if messages else None
    return first.text if first is not None and first.role in ("system", "developer") else ""


def name_agents(a: Side, b: Side) -> None:
    """Calls whose spans name no agent (a reset run's inherited calls: their agent span
    stayed in the base run's trace) take the agent whose calls had the same system
    instructions, in either run, so they align with that agent's calls."""
    unnamed = [v for v in (*a.calls, *b.calls) if not v.agent and _recorded(v.call.input)]
    if not unnamed:
        return
    wanted = {_instructions(v) for v in unnamed} - {""}
    agents: dict[str, str] = {}
    for view in (*a.calls, *b.calls):
        if view.agent and wanted - set(agents):
            instructions = _instructions(view)
            if instructions in wanted:
                agents.setdefault(instructions, view.agent)
    for view in unnamed:
        view.agent = agents.get(_instructions(view), "")
    for side_ in (a, b):
        seen: dict[str, int] = {}
        for view in side_.calls:
            seen[view.agent] = seen.get(view.agent, 0) + 1
            view.ordinal = seen[view.agent]


def call_pairs(a: Side, b: Side) -> list[CallPair]:
    """Model calls aligned by agent and order (the k-th call of an agent against the k-th)."""
    name_agents(a, b)
    same_type = a.header.workflow_type == b.header.workflow_type
    rows = diffs.align(
        a.calls, b.calls, key=lambda c: (c.agent, c.ordinal), pair_replaced=same_type
    )
    return [call_pair(left, right, status) for left, right, status in rows]


# -- handoffs ------------------------------------------------------------------------


@dataclass
class Handoff:
    source: str
    target: str
    ordinal: int


@dataclass
class HandoffPair:
    a: Handoff | None
    b: Handoff | None
    status: str  # same | elsewhere | only_a | only_b


def handoffs(story: RunStory) -> list[Handoff]:
    seen: dict[str, int] = {}
    out = []
    for item in story.items:
        if item.kind != "handoff":
            continue
        source, _, target = item.title.partition(" → ")
        seen[source] = seen.get(source, 0) + 1
        out.append(Handoff(source, target, seen[source]))
    return out


def handoff_pairs(a: Side, b: Side) -> list[HandoffPair]:
    rows = diffs.align(
        handoffs(a.story), handoffs(b.story), key=lambda h: (h.source, h.ordinal, h.target)
    )
    pairs = []
    for left, right, status in rows:
        if status == "changed" and left.source == right.source:
            status = "elsewhere"
        pairs.append(HandoffPair(left, right, status))
    return pairs


# -- history ---------------------------------------------------------------------------


@dataclass
class EventView:
    event_id: int
    label: str
    category: str  # activity | signal | timer | failure | update | child | workflow | other
    detail: str
    key: tuple[str, str, int]


@dataclass
class EventRow:
    a: EventView | None
    b: EventView | None
    status: str  # same | changed | only_a | only_b
    html_a: str = ""
    html_b: str = ""
    category: str = "other"


@dataclass
class Fold:
    count: int
    fold = True


def _compact_json(message: ProtoMessage) -> str:
    value = run_page.decode_payloads(run_page.to_json(message))
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _attributes(event: HistoryEvent) -> Any:
    name = event.WhichOneof("attributes")
    return getattr(event, name) if name else None


def _present(message: Any, name: str) -> Any:
    """A message field if the message has it and it is set, else None."""
    try:
        return getattr(message, name) if message is not None and message.HasField(name) else None
    except ValueError:  # the message has no such field
        return None


def _failure(attrs: Any) -> str:
    return run_page.failure_message(_present(attrs, "failure"))


def _category(kind: str) -> str:
    if kind.endswith(("_FAILED", "_TIMED_OUT")) or kind.endswith("_TERMINATED"):
        return "failure"
    if kind.startswith("ACTIVITY_TASK_"):
        return "activity"
    if "SIGNAL" in kind:
        return "signal"
    if kind.startswith("TIMER_"):
        return "timer"
    if "UPDATE" in kind:
        return "update"
    if "CHILD_WORKFLOW" in kind:
        return "child"
    if kind.startswith("WORKFLOW_EXECUTION_"):
        return "workflow"
    return "other"


def _subject_and_detail(
    kind: str, event: HistoryEvent, activity_types: dict[int, str], model_calls: dict[int, int]
) -> tuple[str, str]:
    """What an event is about (its alignment subject) and the details that make it differ."""
    attrs = _attributes(event)
    if kind == "ACTIVITY_TASK_SCHEDULED":
        scheduled = event.activity_task_scheduled_event_attributes
        number = model_calls.get(event.event_id)
        return scheduled.activity_type.name, f"model call {number}" if number else ""
    if kind.startswith("ACTIVITY_TASK_"):
        subject = activity_types.get(getattr(attrs, "scheduled_event_id", 0), "")
        if kind == "ACTIVITY_TASK_STARTED":
            started = event.activity_task_started_event_attributes
            detail = f"attempt {started.attempt or 1}"
            last = run_page.failure_message(_present(started, "last_failure"))
            return subject, f"{detail}; previous attempt: {last}" if last else detail
        if kind == "ACTIVITY_TASK_COMPLETED" and subject != vocab.MODEL_ACTIVITY_TYPE:
            result = _present(attrs, "result")
            return subject, _compact_json(result) if result is not None else ""
        return subject, _failure(attrs) if kind.endswith(_FAILED) else ""
    if kind == "WORKFLOW_EXECUTION_SIGNALED":
        signaled = event.workflow_execution_signaled_event_attributes
        payload = _compact_json(signaled.input) if signaled.HasField("input") else ""
        return signaled.signal_name, payload
    if kind == "WORKFLOW_EXECUTION_UPDATE_ACCEPTED":
        request = event.workflow_execution_update_accepted_event_attributes.accepted_request
        return request.input.name, _compact_json(request.input.args)
    if kind == "TIMER_STARTED":
        timeout = event.timer_started_event_attributes.start_to_fire_timeout
        return "", f"fires after {duration_ns(timeout.ToNanoseconds())}"
    if kind == "WORKFLOW_EXECUTION_STARTED":
        started_wf = event.workflow_execution_started_event_attributes
        payload = _compact_json(started_wf.input) if started_wf.HasField("input") else ""
        return started_wf.workflow_type.name, payload
    if kind == "WORKFLOW_EXECUTION_COMPLETED":
        result = _present(attrs, "result")
        return "", _compact_json(result) if result is not None else ""
    if kind == "WORKFLOW_EXECUTION_TERMINATED":
        return "", event.workflow_execution_terminated_event_attributes.reason
    if kind == "WORKFLOW_TASK_FAILED":
        failed = event.workflow_task_failed_event_attributes
        return "", WorkflowTaskFailedCause.Name(failed.cause).removeprefix(
            "WORKFLOW_TASK_FAILED_CAUSE_"
        ).lower().replace("_", " ")
    if kind.startswith(("START_CHILD_WORKFLOW", "CHILD_WORKFLOW")):
        workflow_type = getattr(attrs, "workflow_type", None)
        name = workflow_type.name if workflow_type is not None else ""
        return name, _failure(attrs) if kind.endswith(_FAILED) else ""
    if kind == "MARKER_RECORDED":
        return event.marker_recorded_event_attributes.marker_name, ""
    return "", _failure(attrs) if kind.endswith(_FAILED) else ""


def event_views(events: Sequence[HistoryEvent]) -> list[EventView]:
    """The events worth comparing, each keyed by (type, subject, its order among those)."""
    activity_types: dict[int, str] = {}
    model_calls: dict[int, int] = {}
    seen: dict[tuple[str, str], int] = {}
    views = []
    for event in events:
        event_type = run_page.event_type_name(event)
        if event_type in _NOISE:
            continue
        kind = event_type.removeprefix("EVENT_TYPE_")
        if kind == "ACTIVITY_TASK_SCHEDULED":
            activity_type = event.activity_task_scheduled_event_attributes.activity_type.name
            activity_types[event.event_id] = activity_type
            if activity_type == vocab.MODEL_ACTIVITY_TYPE:
                model_calls[event.event_id] = len(model_calls) + 1
        subject, detail = _subject_and_detail(kind, event, activity_types, model_calls)
        seen[(kind, subject)] = seen.get((kind, subject), 0) + 1
        label = run_page.event_label(event_type)
        views.append(
            EventView(
                event_id=event.event_id,
                label=f"{label} {subject}".strip(),
                category=_category(kind),
                detail=detail,
                key=(kind, subject, seen[(kind, subject)]),
            )
        )
    return views


def _cut(text: str) -> str:
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"


def event_rows(a: Side, b: Side) -> list[EventRow]:
    """The two histories aligned event by event, differing details marked word by word."""
    rows: list[EventRow] = []
    for left, right, status in diffs.align(
        event_views(a.events), event_views(b.events), key=lambda e: e.key, pair_replaced=False
    ):
        row = EventRow(left, right, status, category=(left or right).category)
        if left is not None and right is not None and left.detail != right.detail:
            row.status = "changed"
            html_a, html_b = diffs.words_diff(_cut(left.detail), _cut(right.detail))
            row.html_a, row.html_b = SafeString(html_a), SafeString(html_b)
        else:
            if left is not None:
                row.html_a = SafeString(escape(_cut(left.detail)))
            if right is not None:
                row.html_b = SafeString(escape(_cut(right.detail)))
        rows.append(row)
    return rows


def folded(rows: Sequence[Any], context: int) -> list[Any]:
    """Stretches of identical rows folded into a count; ``context`` rows kept around changes.

    A stretch shorter than MIN_FOLD stays: a fold line would take as much room.
    """
    keep = [False] * len(rows)
    for index, row in enumerate(rows):
        if row.status != "same":
            for near in range(max(0, index - context), min(len(rows), index + context + 1)):
                keep[near] = True
    out: list[Any] = []
    hidden: list[Any] = []

    def flush() -> None:
        if len(hidden) >= MIN_FOLD:
            out.append(Fold(len(hidden)))
        else:
            out.extend(hidden)
        hidden.clear()

    for index, row in enumerate(rows):
        if keep[index]:
            flush()
            out.append(row)
        else:
            hidden.append(row)
    flush()
    return out


# -- the page ----------------------------------------------------------------------------


def _counts(items: Iterable[Any], attr: str = "status") -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        status = getattr(item, attr)
        counts[status] = counts.get(status, 0) + 1
    return counts


def compare(
    a_ref: tuple[str, str],
    a_loaded: Loaded,
    b_ref: tuple[str, str],
    b_loaded: Loaded,
    all_events: bool = False,
    all_calls: bool = False,
) -> dict[str, Any]:
    """Everything the compare page renders; identical stretches folded unless ``all_*``."""
    a = side(*a_ref, a_loaded)
    b = side(*b_ref, b_loaded)
    calls = call_pairs(a, b)
    rows = event_rows(a, b)
    first = next((c for c in calls if c.differs), None)
    if first is not None:
        first.open = True
    return {
        "a": a,
        "b": b,
        "sides": [("A", a), ("B", b)],
        "same_type": a.header.workflow_type == b.header.workflow_type,
        "totals": totals(a, b),
        "calls": list(calls) if all_calls else folded(calls, CONTEXT_CALLS),
        "all_calls": all_calls,
        "call_counts": _counts(calls),
        "handoffs": handoff_pairs(a, b),
        "events": list(rows) if all_events else folded(rows, CONTEXT_EVENTS),
        "event_counts": _counts(rows),
        "all_events": all_events,
        "swap_url": compare_url(b_ref, a_ref),
    }
