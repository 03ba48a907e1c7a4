"""Weave a run's Temporal history and its spans into one story.

A pure function: no database, no Temporal client. The history says what the
durable execution did (activities scheduled, the last attempt started, how
each closed, signals, updates); the spans say what the agent did (generations
with their messages and tokens, tool calls, handoffs, guardrails). Temporal
only records the last attempt of an activity (its ActivityTaskStarted, plus
the failure that ended it), so earlier attempts come from the spans, one
``RunActivity:invoke_model_activity`` or generation span per attempt carrying
``temporal.activity.attempt``.

Nothing is dropped: an event without spans, or spans without an event, stay
in the story with ``matched=False``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from telemetry import vocab
from telemetry.vocab import FAILED_OUTCOMES, MODEL_ACTIVITY_TYPE, MODEL_KINDS, STATUS_ERROR
from tracing.links import history_usage, reset_point

_STORY_SPAN_KINDS = {"function": "tool", "handoff": "handoff", "guardrail": "guardrail"}
_STORY_SPAN_KINDS["custom"] = "custom"

Row = dict[str, Any]

# Enum members as plain ints: attribute access on the generated enum wrapper
# costs more than the rest of the loop over a long history.
_SCHEDULED = int(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
_STARTED = int(EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED)
# Close event type -> (outcome, attributes field, failure field).
_CLOSED: dict[int, tuple[str, str, str | None]] = {
    event_type: (
        outcome,
        f"activity_task_{outcome}_event_attributes",
        "failure" if outcome in FAILED_OUTCOMES else None,
    )
    for event_type, outcome in vocab.ACTIVITY_CLOSE_OUTCOMES.items()
}
_SIGNALED = int(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
_TIMER_STARTED = int(EventType.EVENT_TYPE_TIMER_STARTED)
_TIMER_FIRED = int(EventType.EVENT_TYPE_TIMER_FIRED)
_TIMER_CANCELED = int(EventType.EVENT_TYPE_TIMER_CANCELED)
_TASK_SCHEDULED = int(EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED)
_TASK_COMPLETED = int(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
_CHILD_INITIATED = int(EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED)
_WORKFLOW_CLOSED = frozenset(int(t) for t in vocab.WORKFLOW_CLOSE_EVENT_TYPES)
# What wakes a waiting workflow; everything else after a completed workflow
# task (timers started, updates accepted or completed, markers) is written by
# that task itself.
_WAKING = frozenset(
    {
        _TASK_SCHEDULED,
        _SIGNALED,
        _TIMER_FIRED,
        int(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED),
    }
)
# Agents SDK spans that group the agents of one Runner.run.
_RUN_GROUP_KINDS = frozenset({"trace", "task", "agent"})
_MAX_WALK = 64
_UPDATE_ACCEPTED = int(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)
_UPDATE_COMPLETED = int(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED)


@dataclass
class Attempt:
    number: int
    start_ns: int | None = None
    end_ns: int | None = None
    outcome: str = "unknown"  # completed, failed, timed_out, canceled, running, unknown
    failure: str = ""
    span_ids: list[str] = field(default_factory=list)
    # The attempt's generation/response span: what the model was asked and said.
    model_span_id: str = ""
    # True when a span reports this attempt; the history alone shows only the last.
    matched: bool = False
    # What this attempt's model spans report: a failed attempt may cost tokens too.
    tokens_in: int | None = None
    tokens_out: int | None = None


@dataclass
class ModelCall:
    activity_id: str
    # Model call N: the run's Nth invoke_model_activity in the history (tool
    # activities take activity ids too); 0 for spans of an activity the history
    # does not know.
    number: int = 0
    scheduled_ns: int | None = None
    started_ns: int | None = None
    closed_ns: int | None = None
    outcome: str = "unknown"
    failure: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    agent: str = ""
    model: str = ""
    tokens_in: int | None = None
    tokens_out: int | None = None
    input: Any = None
    output: Any = None
    span_ids: list[str] = field(default_factory=list)
    # The generation span of the last attempt that answered (else the last one).
    model_span_id: str = ""
    # True when both the history and the spans know this call.
    matched: bool = False
    # The agent span this call ran under (see AgentRun), "" when none is known.
    agent_span_id: str = ""
    # True when the history has this call's ActivityTaskScheduled event.
    event_known: bool = False
    # A reset run's call from before its reset point: the run that made it
    # (whose spans tell about it).
    inherited_from: str = ""


@dataclass
class StoryItem:
    kind: str  # model_call, activity, tool, handoff, guardrail, custom, signal, update
    time_ns: int | None
    title: str
    matched: bool
    model_call: ModelCall | None = None
    event_ids: list[int] = field(default_factory=list)
    span_ids: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    # When it ended, if known: the span's end, or the activity's close event.
    end_ns: int | None = None


@dataclass
class AgentRun:
    """One agent span: an agent's turn at the run (a Runner.run, or one after a handoff)."""

    span_id: str
    agent: str
    start_ns: int
    end_ns: int
    # The span that groups it with the other agents of one Runner.run: the
    # outermost trace/agent/task ancestor below the workflow's own spans.
    root_span_id: str = ""
    status_code: int = 0


@dataclass
class RunStory:
    items: list[StoryItem]
    model_calls: list[ModelCall]
    # Agent spans in start order; model calls and tool/handoff/guardrail items
    # name theirs (ModelCall.agent_span_id, StoryItem.detail["agent_span_id"]).
    agents: list[AgentRun] = field(default_factory=list)
    # What the workflow waited on, from the history: timers ("timer"), idle
    # stretches ended by a signal or an update or still open ("wait"), and
    # activities scheduled but not closed ("pending"). end_ns None: still waiting.
    waits: list[StoryItem] = field(default_factory=list)
    # A reset run: the run it was reset from, and the history event of the reset.
    reset_from: str = ""
    reset_event_id: int | None = None
    total_model_calls: int = 0
    total_attempts: int = 0
    failed_attempts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0


@dataclass
class _Activity:
    activity_id: str
    activity_type: str
    scheduled_event_id: int
    scheduled_ns: int
    started_ns: int | None = None
    attempt: int | None = None
    last_failure: str = ""
    closed_ns: int | None = None
    outcome: str = "scheduled"
    failure: str = ""
    event_ids: list[int] = field(default_factory=list)
    # A model call's usage, as its result in the history reports it.
    usage: tuple[int | None, int | None] = (None, None)


def event_ns(event: HistoryEvent) -> int:
    """When a history event happened, in nanoseconds since the epoch."""
    # Timestamp.ToNanoseconds() validates first and costs ten times more; a long
    # history reads thousands of these per page.
    stamp = event.event_time
    return stamp.seconds * 1_000_000_000 + stamp.nanos


def _activities(events: Sequence[HistoryEvent]) -> list[_Activity]:
    by_scheduled: dict[int, _Activity] = {}
    for event in events:
        kind = event.event_type
        if kind == _SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            by_scheduled[event.event_id] = _Activity(
                attrs.activity_id, attrs.activity_type.name, event.event_id, event_ns(event),
                event_ids=[event.event_id],
            )  # fmt: skip
            continue
        if kind == _STARTED:
            started = event.activity_task_started_event_attributes
            activity = by_scheduled.get(started.scheduled_event_id)
            if activity is not None:
                activity.started_ns = event_ns(event)
                activity.attempt = started.attempt
                activity.last_failure = started.last_failure.message
                activity.outcome = "running"
                activity.event_ids.append(event.event_id)
            continue
        closed = _CLOSED.get(kind)
        if closed is None:
            continue
        outcome, attrs_field, failure_field = closed
        closed_attrs: Message = getattr(event, attrs_field)
        # Every close event's attributes name the scheduled event they close.
        activity = by_scheduled.get(closed_attrs.scheduled_event_id)  # type: ignore[attr-defined]
        if activity is None:
            continue
        activity.closed_ns = event_ns(event)
        activity.outcome = outcome
        if outcome == "completed" and activity.activity_type == MODEL_ACTIVITY_TYPE:
            activity.usage = history_usage(event)
        if failure_field:
            failure = getattr(closed_attrs, failure_field)
            activity.failure = failure.message or (
                failure.cause.message if failure.HasField("cause") else ""
            )
        activity.event_ids.append(event.event_id)
    return sorted(by_scheduled.values(), key=lambda a: a.scheduled_event_id)


def handoff_agents(row: Row) -> tuple[str, str]:
    """(from, to) of a handoff span, whichever instrumentation wrote it."""
    attrs = row.get("attributes") or {}
    source = _message(attrs, *vocab.HANDOFF_FROM_KEYS)
    target = _message(attrs, *vocab.HANDOFF_TO_KEYS)
    name = str(row.get("name") or "")
    if name.startswith(vocab.OI_HANDOFF_PREFIX):
        # OpenInference: "handoff to <agent>", from in input.value, to in output.value.
        source = source or attrs.get(vocab.OI_INPUT)
        target = target or attrs.get(vocab.OI_OUTPUT) or name[len(vocab.OI_HANDOFF_PREFIX) :]
    return str(source or ""), str(target or "")


def _is_model_span(row: Row) -> bool:
    return row["kind"] in MODEL_KINDS or vocab.is_model_activity_span(row["name"])


def _message(attrs: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if attrs.get(key) not in (None, ""):
            return attrs[key]
    return None


def _agent_of(row: Row, by_id: dict[str, Row]) -> str:
    node: Row | None = row
    for _ in range(64):
        if node is None:
            return ""
        if node.get("agent"):
            return str(node["agent"])
        node = by_id.get(node["parent_span_id"]) if node["parent_span_id"] else None
    return ""


# Span kinds the story reads besides activity spans and signal/update handlers.
_READ_KINDS = frozenset({"agent", "function", "handoff", "guardrail", *MODEL_KINDS})


def reads_span(kind: str, activity_id: str, name: str) -> bool:
    """Whether correlate() makes something of a span of this kind, activity and name.

    A caller that cannot load every span of a huge run loads these and their
    ancestors (the walks over parents read those): the model calls, agents, tools,
    handoffs, guardrails, signals and updates come out the same; only custom spans
    are left out of the items.
    """
    return (
        bool(activity_id)
        or kind in _READ_KINDS
        or name.partition(":")[0] in vocab.HANDLER_SPAN_PREFIXES
    )


def _agent_span_of(row: Row, by_id: dict[str, Row]) -> str:
    """The nearest agent span above row (bounded, cycle-safe), or ""."""
    node: Row | None = by_id.get(row["parent_span_id"]) if row["parent_span_id"] else None
    seen: set[str] = set()
    for _ in range(_MAX_WALK):
        if node is None or node["span_id"] in seen:
            return ""
        if node["kind"] == "agent":
            return str(node["span_id"])
        seen.add(node["span_id"])
        node = by_id.get(node["parent_span_id"]) if node["parent_span_id"] else None
    return ""


def _agent_runs(rows: Sequence[Row], by_id: dict[str, Row]) -> list[AgentRun]:
    runs: list[AgentRun] = []
    for row in rows:
        if row["kind"] != "agent":
            continue
        root = row
        node = row
        seen = {row["span_id"]}
        for _ in range(_MAX_WALK):
            parent = by_id.get(node["parent_span_id"]) if node["parent_span_id"] else None
            if parent is None or parent["span_id"] in seen or parent["kind"] == "temporal":
                break
            seen.add(parent["span_id"])
            node = parent
            if node["kind"] in _RUN_GROUP_KINDS:
                root = node
        runs.append(
            AgentRun(
                row["span_id"], str(row.get("agent") or row["name"]), row["start_ns"],
                row["end_ns"], root["span_id"], row["status_code"],
            )
        )  # fmt: skip
    return runs


class _AgentFinder:
    """Which agent span a span ran under: its nearest agent ancestor, else the
    innermost agent span of the same agent name that was running at that time
    (model activities run outside the agent span's subtree in some setups)."""

    def __init__(self, runs: list[AgentRun], by_id: dict[str, Row]) -> None:
        self.by_id = by_id
        self.by_name: dict[str, list[AgentRun]] = {}
        for run in runs:
            self.by_name.setdefault(run.agent, []).append(run)

    def find(self, rows: Iterable[Row], agent: str, at_ns: int | None) -> str:
        for row in rows:
            found = _agent_span_of(row, self.by_id)
            if found:
                return found
        candidates = self.by_name.get(agent, [])
        if at_ns is None or not candidates:
            return ""
        running = [r for r in candidates if r.start_ns <= at_ns <= r.end_ns]
        if running:
            return max(running, key=lambda r: r.start_ns).span_id
        before = [r for r in candidates if r.start_ns <= at_ns]
        return max(before, key=lambda r: r.start_ns).span_id if before else ""


def _attempts_from_spans(spans: Iterable[Row]) -> dict[int, Attempt]:
    attempts: dict[int, Attempt] = {}
    for row in spans:
        number = row.get("attempt")
        if number is None:
            continue
        attempt = attempts.setdefault(number, Attempt(number, matched=True))
        attempt.span_ids.append(row["span_id"])
        if row["kind"] in MODEL_KINDS:
            attempt.model_span_id = attempt.model_span_id or row["span_id"]
            if row.get("tokens_in") is not None:
                attempt.tokens_in = (attempt.tokens_in or 0) + row["tokens_in"]
            if row.get("tokens_out") is not None:
                attempt.tokens_out = (attempt.tokens_out or 0) + row["tokens_out"]
        # The activity span frames the attempt; a generation span inside it is narrower.
        if attempt.start_ns is None or row["start_ns"] < attempt.start_ns:
            attempt.start_ns = row["start_ns"]
        if attempt.end_ns is None or row["end_ns"] > attempt.end_ns:
            attempt.end_ns = row["end_ns"]
        if row["status_code"] == STATUS_ERROR:
            attempt.outcome = "failed"
            attempt.failure = attempt.failure or row.get("status_message") or "failed"
        elif attempt.outcome == "unknown":
            attempt.outcome = "completed"
    return attempts


def _model_call(activity_id: str, spans: list[Row], by_id: dict[str, Row]) -> ModelCall:
    call = ModelCall(activity_id=activity_id, span_ids=[r["span_id"] for r in spans])
    generations = [r for r in spans if r["kind"] in MODEL_KINDS]
    for row in generations:
        if row.get("tokens_in") is not None:
            call.tokens_in = (call.tokens_in or 0) + row["tokens_in"]
        if row.get("tokens_out") is not None:
            call.tokens_out = (call.tokens_out or 0) + row["tokens_out"]
    # What the model saw and said: the last attempt that answered.
    answered = [r for r in generations if r["status_code"] != STATUS_ERROR] or generations
    if answered:
        final = max(answered, key=lambda r: (r.get("attempt") or 0, r["start_ns"]))
        attrs = final.get("attributes") or {}
        call.model = final.get("model") or ""
        call.model_span_id = final["span_id"]
        call.input = _message(attrs, *vocab.INPUT_MESSAGE_KEYS)
        call.output = _message(attrs, *vocab.OUTPUT_MESSAGE_KEYS)
    for row in generations or spans:
        call.agent = call.agent or _agent_of(row, by_id)
    return call


def _merge_history(call: ModelCall, activity: _Activity, spans: list[Row]) -> None:
    call.scheduled_ns = activity.scheduled_ns
    call.started_ns = activity.started_ns
    call.closed_ns = activity.closed_ns
    call.outcome = activity.outcome
    call.failure = activity.failure
    call.matched = bool(spans)
    if call.tokens_in is None and call.tokens_out is None:
        # No model span reported usage (none arrived): the history's result did.
        call.tokens_in, call.tokens_out = activity.usage
    attempts = _attempts_from_spans(spans)
    last = activity.attempt
    if last is not None:
        # Temporal guarantees attempts 1..last ran; spans may be missing for some.
        for number in range(1, last + 1):
            attempts.setdefault(number, Attempt(number))
        final = attempts[last]
        final.start_ns = final.start_ns or activity.started_ns
        final.end_ns = final.end_ns or activity.closed_ns
        if activity.outcome in ("completed", "failed", "timed_out", "canceled", "running"):
            final.outcome = activity.outcome
        if activity.failure:
            final.failure = activity.failure
        previous = attempts.get(last - 1)
        if previous is not None and activity.last_failure and not previous.failure:
            previous.failure = activity.last_failure
        for attempt in attempts.values():
            # An attempt followed by another did not succeed, whatever its spans said.
            if attempt.number < last and attempt.outcome not in FAILED_OUTCOMES:
                attempt.outcome = "failed"
    call.attempts = [attempts[n] for n in sorted(attempts)]


def _attach_to_attempts(rows: list[Row]) -> list[Row]:
    """Stock instrumentations leave model spans without an activity id.

    Temporal's ``RunActivity`` span of each attempt carries the activity id (the
    ``TracingInterceptor`` not the attempt, so attempts are numbered in start
    order); a model span belongs to the attempt whose span encloses it in time.
    """
    frames: dict[str, list[Row]] = {}
    for row in rows:
        if row.get("activity_id") and row["name"].startswith(vocab.RUN_ACTIVITY_PREFIX):
            frames.setdefault(row["activity_id"], []).append(row)
    if not frames:
        return rows
    numbered: dict[str, Row] = {}
    for activity_frames in frames.values():
        for number, frame in enumerate(sorted(activity_frames, key=lambda r: r["start_ns"]), 1):
            numbered[frame["span_id"]] = (
                frame if frame.get("attempt") is not None else {**frame, "attempt": number}
            )
    out: list[Row] = []
    for row in rows:
        if row["span_id"] in numbered:
            row = numbered[row["span_id"]]
        elif row["kind"] in MODEL_KINDS and not row.get("activity_id"):
            enclosing = [
                f
                for f in numbered.values()
                if f["trace_id"] == row["trace_id"]
                and f["start_ns"] <= row["start_ns"]
                and row["end_ns"] <= f["end_ns"]
            ]
            if enclosing:
                frame = min(enclosing, key=lambda f: f["end_ns"] - f["start_ns"])
                row = {**row, "activity_id": frame["activity_id"], "attempt": frame["attempt"]}
        out.append(row)
    return out


def correlate(events: Sequence[HistoryEvent], spans: Sequence[Row]) -> RunStory:
    """The story of one run from its history events and its span rows."""
    rows = _attach_to_attempts(sorted(spans, key=lambda r: (r["start_ns"], r["end_ns"])))
    by_id = {r["span_id"]: r for r in rows}
    activities = _activities(events)
    activity_spans: dict[str, list[Row]] = {}
    for row in rows:
        if row.get("activity_id"):
            activity_spans.setdefault(row["activity_id"], []).append(row)

    items: list[StoryItem] = []
    model_calls: list[ModelCall] = []
    used_spans: set[str] = set()
    known_ids: set[str] = set()
    reset_from, reset_event_id = reset_point(events)
    for activity in activities:
        known_ids.add(activity.activity_id)
        spans_of = activity_spans.get(activity.activity_id, [])
        used_spans.update(r["span_id"] for r in spans_of)
        if activity.activity_type == MODEL_ACTIVITY_TYPE:
            call = _model_call(activity.activity_id, spans_of, by_id)
            _merge_history(call, activity, spans_of)
            call.event_known = True
            if reset_event_id is not None and activity.scheduled_event_id < reset_event_id:
                call.inherited_from = next(
                    (r["inherited_from"] for r in spans_of if r.get("inherited_from")), reset_from
                )
            model_calls.append(call)
            items.append(
                StoryItem("model_call", activity.scheduled_ns, call.model or "model call",
                          call.matched, call, activity.event_ids, call.span_ids,
                          end_ns=activity.closed_ns)
            )  # fmt: skip
        else:
            items.append(
                StoryItem("activity", activity.scheduled_ns, activity.activity_type,
                          bool(spans_of), None, activity.event_ids,
                          [r["span_id"] for r in spans_of],
                          {"outcome": activity.outcome, "failure": activity.failure,
                           "attempt": activity.attempt}, activity.closed_ns)
            )  # fmt: skip

    # Model spans whose activity the history does not know (another run's
    # history, a truncated one, or spans from before a reset).
    for activity_id, spans_of in activity_spans.items():
        if activity_id in known_ids or not any(_is_model_span(r) for r in spans_of):
            continue
        used_spans.update(r["span_id"] for r in spans_of)
        call = _model_call(activity_id, spans_of, by_id)
        call.attempts = [a for _, a in sorted(_attempts_from_spans(spans_of).items())]
        call.outcome = call.attempts[-1].outcome if call.attempts else "unknown"
        call.scheduled_ns = spans_of[0]["start_ns"]
        model_calls.append(call)
        items.append(
            StoryItem("model_call", call.scheduled_ns, call.model or "model call", False, call,
                      [], call.span_ids, end_ns=max(r["end_ns"] for r in spans_of))
        )  # fmt: skip

    for row in rows:
        kind = _STORY_SPAN_KINDS.get(row["kind"])
        if kind is None or row["span_id"] in used_spans:
            continue
        attrs = row.get("attributes") or {}
        title = row.get("tool") or row["name"]
        if kind == "handoff":
            title = "{} → {}".format(*handoff_agents(row))
        items.append(
            StoryItem(kind, row["start_ns"], title, False, None, [], [row["span_id"]],
                      {"agent": _agent_of(row, by_id), "status_code": row["status_code"],
                       "status_message": row.get("status_message", ""),
                       "arguments": _message(attrs, vocab.GEN_AI_TOOL_ARGUMENTS) or ""},
                      row["end_ns"])
        )  # fmt: skip

    items.extend(_messages(events, rows))
    items.sort(key=lambda i: (i.time_ns is None, i.time_ns or 0))
    model_calls.sort(key=lambda c: (c.scheduled_ns is None, c.scheduled_ns or 0))
    _number_model_calls(model_calls, known_ids, bool(activities))
    agents = _agent_runs(rows, by_id)
    finder = _AgentFinder(agents, by_id)
    names = {a.span_id: a.agent for a in agents}
    for call in model_calls:
        spans_of_call = [by_id[i] for i in call.span_ids if i in by_id]
        spans_of_call.sort(key=lambda r: r["kind"] not in MODEL_KINDS)
        when = call.scheduled_ns or next((a.start_ns for a in call.attempts if a.start_ns), None)
        call.agent_span_id = finder.find(spans_of_call, call.agent, when)
        call.agent = call.agent or names.get(call.agent_span_id, "")
    for item in items:
        if item.kind in _STORY_SPAN_KINDS.values() and item.span_ids:
            item_span = by_id.get(item.span_ids[0])
            if item_span is not None:
                item.detail["agent_span_id"] = finder.find(
                    [item_span], item.detail.get("agent", ""), item.time_ns
                )
    story = RunStory(
        items=items,
        model_calls=model_calls,
        agents=agents,
        waits=_waits(events),
        reset_from=reset_from,
        reset_event_id=reset_event_id,
    )
    story.total_model_calls = len(model_calls)
    story.total_attempts = sum(len(c.attempts) for c in model_calls)
    story.failed_attempts = sum(
        1 for c in model_calls for a in c.attempts if a.outcome in FAILED_OUTCOMES
    )
    story.tokens_in = sum(c.tokens_in or 0 for c in model_calls)
    story.tokens_out = sum(c.tokens_out or 0 for c in model_calls)
    return story


def _number_model_calls(calls: list[ModelCall], known_ids: set[str], has_history: bool) -> None:
    """Model call N, as fault specs and reset points count: history order of the model
    activities; without a history, the order the spans give."""
    number = 0
    for call in calls:
        if has_history and call.activity_id not in known_ids:
            continue
        number += 1
        call.number = number


def _messages(events: Sequence[HistoryEvent], rows: Sequence[Row]) -> list[StoryItem]:
    """Signals and updates, each matched to the span of the handler that ran it."""
    handlers: dict[str, list[Row]] = {}
    for row in rows:
        prefix, _, name = row["name"].partition(":")
        if prefix in vocab.HANDLER_SPAN_PREFIXES:
            handlers.setdefault(f"{prefix}:{name}", []).append(row)
    items: list[StoryItem] = []
    for event in events:
        kind = event.event_type
        if kind == _SIGNALED:
            name = event.workflow_execution_signaled_event_attributes.signal_name
            items.append(_message_item("signal", name, vocab.HANDLE_SIGNAL, event, handlers, {}))
        elif kind == _UPDATE_ACCEPTED:
            request = event.workflow_execution_update_accepted_event_attributes.accepted_request
            detail = {"update_id": request.meta.update_id, "state": "accepted"}
            items.append(
                _message_item(
                    "update", request.input.name, vocab.HANDLE_UPDATE, event, handlers, detail
                )
            )
        elif kind == _UPDATE_COMPLETED:
            attrs = event.workflow_execution_update_completed_event_attributes
            failure = attrs.outcome.failure.message if attrs.outcome.HasField("failure") else ""
            items.append(
                StoryItem("update", event_ns(event), f"update {attrs.meta.update_id} completed",
                          True, None, [event.event_id], [],
                          {"update_id": attrs.meta.update_id, "state": "completed",
                           "failure": failure})
            )  # fmt: skip
    return items


def _message_item(
    kind: str,
    name: str,
    prefix: str,
    event: HistoryEvent,
    handlers: dict[str, list[Row]],
    detail: dict[str, Any],
) -> StoryItem:
    candidates = handlers.get(f"{prefix}:{name}", [])
    # Handler spans run after the event is recorded; take the first one not yet used.
    span = candidates.pop(0) if candidates else None
    return StoryItem(
        kind, event_ns(event), name, span is not None, None, [event.event_id],
        [span["span_id"]] if span else [], detail,
    )  # fmt: skip


def _waits(events: Sequence[HistoryEvent]) -> list[StoryItem]:
    """What the workflow waited on: timers, idle stretches, activities still pending.

    An idle stretch starts when a workflow task completes with no activity or
    child workflow open, and ends with the next event that wakes the workflow
    (a signal, an update's workflow task, a timer firing); it is labelled by
    what woke it. One still open at the end of an open run has end_ns None.
    """
    waits: list[StoryItem] = []
    timers: dict[str, StoryItem] = {}
    open_activities: dict[int, tuple[str, str, int, int]] = {}
    open_children = 0
    idle_since: int | None = None
    idle_event = 0
    closed = False
    for index, event in enumerate(events):
        kind = event.event_type
        ns = event_ns(event)
        if kind == _SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            open_activities[event.event_id] = (
                attrs.activity_id,
                attrs.activity_type.name,
                ns,
                event.event_id,
            )
            idle_since = None
            continue
        if kind in _CLOSED:
            attrs_field = _CLOSED[kind][1]
            scheduled_id = getattr(event, attrs_field).scheduled_event_id
            open_activities.pop(scheduled_id, None)
        elif kind == _CHILD_INITIATED:
            open_children += 1
            idle_since = None
            continue
        elif kind == _TIMER_STARTED:
            attrs_t = event.timer_started_event_attributes
            timeout = int(attrs_t.start_to_fire_timeout.ToNanoseconds())
            item = StoryItem(
                "timer", ns, f"timer {attrs_t.timer_id}", True, None, [event.event_id], [],
                {"timer_id": attrs_t.timer_id, "timeout_ns": timeout, "fire_ns": ns + timeout,
                 "state": "pending"},
            )  # fmt: skip
            timers[attrs_t.timer_id] = item
            waits.append(item)
        elif kind in (_TIMER_FIRED, _TIMER_CANCELED):
            timer_id = (
                event.timer_fired_event_attributes.timer_id
                if kind == _TIMER_FIRED
                else event.timer_canceled_event_attributes.timer_id
            )
            timer = timers.pop(timer_id, None)
            if timer is not None:
                timer.end_ns = ns
                timer.event_ids.append(event.event_id)
                timer.detail["state"] = "fired" if kind == _TIMER_FIRED else "canceled"
        elif kind in _WORKFLOW_CLOSED:
            # Closing in the same task that found nothing to wait for.
            closed = True
            idle_since = None
            continue
        if kind == _TASK_COMPLETED:
            if not open_activities and not open_children:
                idle_since, idle_event = ns, event.event_id
            continue
        if idle_since is None or kind not in _WAKING:
            continue
        # Something woke the workflow: say what, and close the stretch.
        woke = _what_woke(events, index)
        waits.append(
            StoryItem(
                "wait", idle_since, f"waited for {woke[0]}{' ' + woke[1] if woke[1] else ''}",
                True, None, [idle_event, event.event_id], [],
                {"woken_by": woke[0], "name": woke[1]}, ns,
            )
        )  # fmt: skip
        idle_since = None
    if not closed:
        if idle_since is not None:
            waits.append(
                StoryItem(
                    "wait", idle_since, "waiting for a signal or an update", True, None,
                    [idle_event], [], {"woken_by": "", "name": "",
                                       "timers": sorted(timers)}, None,
                )
            )  # fmt: skip
        for activity_id, activity_type, ns, event_id in open_activities.values():
            waits.append(
                StoryItem(
                    "pending", ns, f"{activity_type} pending", True, None, [event_id], [],
                    {"activity_id": activity_id, "activity_type": activity_type}, None,
                )
            )  # fmt: skip
    waits.sort(key=lambda w: (w.time_ns or 0, w.event_ids[0] if w.event_ids else 0))
    return waits


def _what_woke(events: Sequence[HistoryEvent], index: int) -> tuple[str, str]:
    """(kind, name) of the event at index that ended an idle stretch."""
    event = events[index]
    kind = event.event_type
    if kind == _SIGNALED:
        return "signal", event.workflow_execution_signaled_event_attributes.signal_name
    if kind == _TIMER_FIRED:
        return "timer", event.timer_fired_event_attributes.timer_id
    if kind == _TASK_SCHEDULED:
        # An update arrives as a workflow task; its acceptance follows it.
        for later in events[index + 1 : index + 6]:
            if later.event_type == _UPDATE_ACCEPTED:
                request = later.workflow_execution_update_accepted_event_attributes
                return "update", request.accepted_request.input.name
            if later.event_type == _SIGNALED:
                return "signal", later.workflow_execution_signaled_event_attributes.signal_name
        return "workflow task", ""
    name = EventType.Name(kind) if kind in EventType.values() else str(kind)
    return name.removeprefix("EVENT_TYPE_").replace("_", " ").lower(), ""
