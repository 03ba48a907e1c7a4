"""Ties from a run's Temporal history to spans that carry no Temporal ids.

Pure functions: no database, no Temporal client.

Temporal records, with every event a client or a workflow causes, the headers
it was sent. Two of them name the OpenTelemetry span that was current then:

- ``__openai_span`` (``temporalio.openai_agents``' ``OpenAIAgentsPlugin``; in
  its OTel mode, ``use_otel_instrumentation=True``, it carries ``otelTraceId``
  and ``otelSpanId`` as integers: for a scheduled activity, the span of
  ``temporal:startActivity``, or the agent's turn when ``add_temporal_spans``
  is off);
- ``_tracer-data`` (``temporalio.contrib.opentelemetry``'s ``TracingInterceptor``
  and ``OpenTelemetryPlugin``: a W3C ``traceparent``).

So the history knows, for the workflow start, every signal, every update and
every scheduled activity, which trace and span it belongs to. ``history_links``
reads those ties; ``assign`` gives the spans of those traces their run, their
activity and their attempt:

- a span that is, or descends from, a span the history names belongs to that
  event's run (the nearest such ancestor wins; a span with ids of its own stops
  the walk, as ancestors with ids always did); when the run's own spans name
  their activities (Temporal's ``RunActivity`` spans), those stand and the
  history gives the run only;
- below an activity's span, the child on the way down is that attempt's frame
  (``temporal:executeActivity``, or the model span itself when the plugin adds
  no spans of its own), when it starts within the activity's time in the
  history (the turn's tool calls start after the model call closed); frames
  are numbered in start order, which is the attempt number;
- any other span of a trace that the history ties to exactly one run belongs
  to that run (the trace root an instrumentation opens around a run).

The history also says what each model call cost (its result carries the
usage) and how many attempts it took, which counts calls whose spans never
arrived (OpenInference drops activity spans in a process that did not start
the trace, e.g. a model worker of its own or after a cache eviction).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from temporalio.api.common.v1 import Header, Payload
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent

from telemetry import vocab

Row = dict[str, Any]
SpanKey = tuple[str, str]

# How far up a walk goes; spans come from strangers (cycles, absurd depth).
MAX_DEPTH = 256

_STARTED = int(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
_SCHEDULED = int(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
_ACTIVITY_STARTED = int(EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED)
_SIGNALED = int(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
_UPDATE_ACCEPTED = int(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)
_COMPLETED = int(EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
_CLOSED = {int(k): v for k, v in vocab.ACTIVITY_CLOSE_OUTCOMES.items()}


@dataclass
class HistoryLink:
    """One span the history names, and what it knows of the event around it."""

    trace_id: str
    span_id: str
    kind: str  # "workflow", "activity", "signal", "update"
    activity_id: str = ""
    activity_type: str = ""
    scheduled_ns: int = 0
    closed_ns: int | None = None
    # Model calls: attempts Temporal ran, whether the last one failed, the usage.
    attempts: int = 0
    failed: bool = False
    tokens_in: int | None = None
    tokens_out: int | None = None


@dataclass
class RunLink(HistoryLink):
    workflow_id: str = ""
    run_id: str = ""


def _json_payload(payload: Payload) -> Any:
    if payload.metadata.get("encoding") != b"json/plain":
        return None
    try:
        return json.loads(payload.data)
    except ValueError:
        return None


def _hex(value: Any, width: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return ""
    text = f"{value:0{width}x}"
    return text if len(text) == width else ""


def span_contexts(header: Header) -> list[tuple[str, str]]:
    """The (trace id, span id) pairs, as lowercase hex, that a header names."""
    found: list[tuple[str, str]] = []
    fields = header.fields
    if vocab.OPENAI_HEADER in fields:
        data = _json_payload(fields[vocab.OPENAI_HEADER])
        if isinstance(data, dict):
            trace_id = _hex(data.get(vocab.OPENAI_HEADER_OTEL_TRACE), 32)
            span_id = _hex(data.get(vocab.OPENAI_HEADER_OTEL_SPAN), 16)
            if trace_id and span_id:
                found.append((trace_id, span_id))
    if vocab.OTEL_TRACER_HEADER in fields:
        data = _json_payload(fields[vocab.OTEL_TRACER_HEADER])
        parent = data.get(vocab.TRACEPARENT) if isinstance(data, dict) else None
        if isinstance(parent, str):
            parts = parent.strip().lower().split("-")
            if len(parts) >= 3 and len(parts[1]) == 32 and len(parts[2]) == 16:
                try:
                    if int(parts[1], 16) and int(parts[2], 16):
                        found.append((parts[1], parts[2]))
                except ValueError:
                    pass
    return list(dict.fromkeys(found))


def history_usage(event: HistoryEvent) -> tuple[int | None, int | None]:
    """The usage a model call's result reports (a serialized ModelResponse)."""
    payloads = event.activity_task_completed_event_attributes.result.payloads
    if not payloads:
        return None, None
    data = _json_payload(payloads[0])
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None, None
    tokens_in, tokens_out = usage.get("input_tokens"), usage.get("output_tokens")
    return (
        tokens_in if isinstance(tokens_in, int) and not isinstance(tokens_in, bool) else None,
        tokens_out if isinstance(tokens_out, int) and not isinstance(tokens_out, bool) else None,
    )


def history_links(events: Sequence[HistoryEvent]) -> list[HistoryLink]:
    """Every span the history names, with the event (and activity) it was current for.

    A reset run's activities before its reset point are its base run's (their
    events are copies): they tie nothing to this run and are not its calls."""
    links: list[HistoryLink] = []
    activities: dict[int, list[HistoryLink]] = {}
    _, reset_event_id = reset_point(events)
    for event in events:
        kind = event.event_type
        ns = int(event.event_time.ToNanoseconds())
        copied = reset_event_id is not None and event.event_id < reset_event_id
        if copied and (kind in (_SCHEDULED, _ACTIVITY_STARTED) or kind in _CLOSED):
            continue
        if kind == _SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            found = [
                HistoryLink(t, s, "activity", attrs.activity_id, attrs.activity_type.name, ns)
                for t, s in span_contexts(attrs.header)
            ]
            activities[event.event_id] = found
            links.extend(found)
        elif kind == _ACTIVITY_STARTED:
            started = event.activity_task_started_event_attributes
            for link in activities.get(started.scheduled_event_id, []):
                link.attempts = started.attempt
        elif kind in _CLOSED:
            attrs_name = f"activity_task_{_CLOSED[kind]}_event_attributes"
            closed = getattr(event, attrs_name)
            usage = history_usage(event) if kind == _COMPLETED else (None, None)
            for link in activities.get(closed.scheduled_event_id, []):
                link.closed_ns = ns
                link.failed = _CLOSED[kind] in vocab.FAILED_OUTCOMES
                link.tokens_in, link.tokens_out = usage
        else:
            header = _event_header(event, kind)
            if header is not None:
                links.extend(
                    HistoryLink(t, s, _HEADER_EVENTS[kind], scheduled_ns=ns)
                    for t, s in span_contexts(header)
                )
    return links


_HEADER_EVENTS = {_STARTED: "workflow", _SIGNALED: "signal", _UPDATE_ACCEPTED: "update"}
_TASK_FAILED = int(EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)
_RESET_CAUSE = int(WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW)


def reset_point(events: Sequence[HistoryEvent]) -> tuple[str, int | None]:
    """A reset run's base run id and the event that marks its reset point
    (WorkflowTaskFailed, cause RESET_WORKFLOW); ("", None) for other runs.

    The last marker is the run's own: a reset of a reset copies its base's history,
    its base's marker included."""
    for event in reversed(events):
        if event.event_type != _TASK_FAILED:
            continue
        attrs = event.workflow_task_failed_event_attributes
        if attrs.cause == _RESET_CAUSE and attrs.base_run_id:
            return attrs.base_run_id, event.event_id
    return "", None


def _event_header(event: HistoryEvent, kind: int) -> Header | None:
    if kind == _STARTED:
        return event.workflow_execution_started_event_attributes.header
    if kind == _SIGNALED:
        return event.workflow_execution_signaled_event_attributes.header
    if kind == _UPDATE_ACCEPTED:
        accepted = event.workflow_execution_update_accepted_event_attributes
        return accepted.accepted_request.input.header
    return None


def model_calls(links: Iterable[HistoryLink]) -> dict[str, HistoryLink]:
    """The model activities the links know, by activity id."""
    return {
        link.activity_id: link
        for link in links
        if link.kind == "activity" and link.activity_type == vocab.MODEL_ACTIVITY_TYPE
    }


def _is_activity_span(name: str) -> bool:
    """The span that wraps the scheduling of one activity (every attempt runs below it)."""
    return name == vocab.NATIVE_START_ACTIVITY or name.startswith("StartActivity:")


def _own_ids(node: Row) -> bool:
    return bool(node.get("workflow_id")) and not node.get("inherited")


def _pick_activity(
    candidates: list[RunLink], anchor: Row, frame: Row | None
) -> tuple[RunLink | None, bool]:
    """The activity the anchor span's link names for this frame; (link, is a frame)."""
    if not candidates:
        return None, False
    wrapping = _is_activity_span(str(anchor.get("name", "")))
    if frame is None:
        # The anchor itself: only an activity's own span belongs to the activity.
        return (candidates[0], False) if wrapping and len(candidates) == 1 else (None, False)
    start, end = frame["start_ns"], frame["end_ns"]
    inside = [
        link
        for link in candidates
        if link.scheduled_ns <= start and (link.closed_ns is None or end <= link.closed_ns)
    ]
    if wrapping and not inside:
        inside = candidates
    if not inside:
        return None, False
    return max(inside, key=lambda link: link.scheduled_ns), True


def assign(nodes: dict[SpanKey, Row], links: Sequence[RunLink]) -> dict[SpanKey, Row]:
    """New Temporal ids for the spans (of the links' traces) that lack their own.

    ``nodes`` holds every stored span of those traces (trace_id, span_id,
    parent_span_id, name, start_ns, end_ns, workflow_id, run_id, activity_id,
    attempt, inherited). Returns, for each span whose ids change, its new
    ``workflow_id``, ``run_id``, ``activity_id`` and ``attempt``.
    """
    at: dict[SpanKey, list[RunLink]] = {}
    runs_of_trace: dict[str, set[tuple[str, str]]] = {}
    for link in links:
        at.setdefault((link.trace_id, link.span_id), []).append(link)
        runs_of_trace.setdefault(link.trace_id, set()).add((link.workflow_id, link.run_id))

    # Runs whose own spans name their activities (Temporal's RunActivity spans):
    # those ids are exact, and the model spans below them are matched by time
    # (tracing.correlation); a header names the span that was current, which a
    # confused instrumentation (OpenInference after a cache eviction) may get wrong.
    framed = {
        (node["workflow_id"], node["run_id"])
        for node in nodes.values()
        if _own_ids(node) and node.get("activity_id")
    }
    found: dict[SpanKey, tuple[str, str, RunLink | None, Row | None]] = {}
    frames: dict[tuple[str, str, str], dict[SpanKey, int]] = {}
    for key, node in nodes.items():
        if _own_ids(node) or key[0] not in runs_of_trace:
            continue
        path = [node]
        seen = {key}
        anchor: Row | None = None
        for _ in range(MAX_DEPTH):
            current = path[-1]
            current_key = (key[0], current["span_id"])
            if current_key in at:
                anchor = current
                break
            if current is not node and _own_ids(current):
                break  # ancestors with ids of their own: ingest's inheritance covers it
            parent = current.get("parent_span_id")
            parent_key = (key[0], parent)
            if not parent or parent_key in seen:
                break
            if parent_key not in nodes:
                if parent_key in at:
                    # The tied span itself has not arrived (yet): its id is enough.
                    anchor = {"span_id": parent, "name": ""}
                    path.append(anchor)
                break
            seen.add(parent_key)
            path.append(nodes[parent_key])
        if anchor is None:
            if path[-1] is not node and _own_ids(path[-1]):
                continue
            runs = runs_of_trace[key[0]]
            if len(runs) == 1:
                (workflow_id, run_id) = next(iter(runs))
                found[key] = (workflow_id, run_id, None, None)
            continue
        anchor_links = at[(key[0], anchor["span_id"])]
        runs = {(link.workflow_id, link.run_id) for link in anchor_links}
        if len(runs) != 1:
            continue  # one span current for several runs' events: no single owner
        workflow_id, run_id = next(iter(runs))
        frame = path[-2] if len(path) > 1 else None
        activity, is_frame = (
            (None, False)
            if (workflow_id, run_id) in framed
            else _pick_activity(
                [link for link in anchor_links if link.kind == "activity"], anchor, frame
            )
        )
        found[key] = (workflow_id, run_id, activity, frame if is_frame else None)
        if activity is not None and frame is not None and is_frame:
            frames.setdefault((workflow_id, run_id, activity.activity_id), {})[
                (key[0], frame["span_id"])
            ] = frame["start_ns"]

    numbers: dict[SpanKey, int] = {}
    for by_frame in frames.values():
        for number, frame_key in enumerate(sorted(by_frame, key=lambda k: (by_frame[k], k)), 1):
            numbers[frame_key] = number

    changes: dict[SpanKey, Row] = {}
    for key, (workflow_id, run_id, activity, frame) in found.items():
        node = nodes[key]
        activity_id = node.get("activity_id") or (activity.activity_id if activity else "")
        attempt = node.get("attempt")
        if attempt is None and frame is not None:
            attempt = numbers.get((key[0], frame["span_id"]))
        new = {
            "workflow_id": workflow_id,
            "run_id": run_id,
            "activity_id": activity_id,
            "attempt": attempt,
        }
        if any(node.get(k) != v for k, v in new.items()) or not node.get("inherited"):
            changes[key] = new
    return changes
