"""Acting on runs, the parts without I/O: reset points, payload parsing, audit rows.

The views (dashboard.action_views) validate a request with these helpers
before anything reaches Temporal (dashboard.temporal), so a bad request is
refused whole, never half-done.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from dashboard.models import AuditEntry
from telemetry import vocab
from telemetry.vocab import FAILED_OUTCOMES, MODEL_ACTIVITY_TYPE
from tracing import correlation
from worker.faults import FaultSpecError, parse_faults
from worker.inputs import INPUT_TYPES

MAX_PAYLOAD_CHARS = 64 * 1024
MAX_REASON_CHARS = 500
NAME_RE = re.compile(r"^[A-Za-z_][\w.\-:]{0,199}$")

# Payload examples for the bundled workflows' handlers, filled into the forms.
EXAMPLES: dict[tuple[str, str, str], Any] = {
    ("approval", "signal", "approve"): {"comment": "Looks good", "by": "{user}"},
    ("approval", "signal", "reject"): {"comment": "Not now", "by": "{user}"},
    ("conversation", "signal", "user_message"): "Hello again",
    ("conversation", "update", "send_message"): "What is the status of my ticket?",
}
# Handlers that take no argument: the payload box stays empty.
NO_ARGUMENT = {
    ("approval", "query", "status"),
    ("conversation", "query", "history"),
    ("conversation", "signal", "end"),
}

# A failed or timed-out activity, or the run itself failing or timing out.
_FAILURE_EVENTS = frozenset(
    {
        *(t for t, outcome in vocab.ACTIVITY_CLOSE_OUTCOMES.items() if outcome in FAILED_OUTCOMES),
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
    }
)


class InvalidAction(ValueError):
    """A request that must not reach Temporal; the message is for the form."""


def example_payload(workflow_type: str, kind: str, name: str, username: str) -> str:
    if (workflow_type, kind, name) in NO_ARGUMENT:
        return ""
    example = EXAMPLES.get((workflow_type, kind, name))
    if example is None:
        return ""
    if isinstance(example, dict):
        example = {k: v.replace("{user}", username) for k, v in example.items()}
    return json.dumps(example)


def examples_for(workflow_type: str, kind: str, names: Sequence[str], username: str) -> list[Any]:
    """(name, example JSON) for each handler name, for the form's <option>s."""
    return [(name, example_payload(workflow_type, kind, name, username)) for name in names]


def parse_payload(raw: str) -> Any:
    """The JSON argument of a signal, query or update; None when the box is empty."""
    text = raw.strip()
    if not text:
        return None
    if len(text) > MAX_PAYLOAD_CHARS:
        raise InvalidAction(f"the payload is over {MAX_PAYLOAD_CHARS // 1024} KiB")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidAction(
            f"the payload is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None


def check_name(kind: str, name: str, known: Sequence[str] | None) -> str:
    """A handler name the workflow declares, or any well-formed one if that is unknown."""
    name = name.strip()
    if not name:
        raise InvalidAction(f"choose a {kind}")
    if not NAME_RE.match(name) or name.startswith("__"):
        raise InvalidAction(f"{name!r} is not a {kind} name Loomview sends")
    if known is not None and name not in known:
        declared = ", ".join(known) or "none"
        raise InvalidAction(f"this workflow has no {kind} {name!r} (it declares: {declared})")
    return name


def check_reason(raw: str) -> str:
    reason = " ".join(raw.split())
    if not reason:
        raise InvalidAction("a reason is required")
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidAction(f"the reason is over {MAX_REASON_CHARS} characters")
    return reason


def attributed(reason: str, username: str) -> str:
    """The reason Temporal records: the user's words and who said them."""
    return f"{reason} (by {username} via Loomview)"


@dataclass(frozen=True)
class ResetPoint:
    event_id: int  # the WorkflowTaskCompleted event to reset to
    label: str
    kind: str  # "call" | "last-good"


def reset_points(events: Sequence[HistoryEvent]) -> list[ResetPoint]:
    """Where a run can be reset to: before each model call, and the last good point."""
    points: list[ResetPoint] = []
    seen: set[int] = set()
    number = 0
    for event in events:
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            continue
        attrs = event.activity_task_scheduled_event_attributes
        if attrs.activity_type.name != MODEL_ACTIVITY_TYPE:
            continue
        # Model call N is the Nth model activity (tool activities take ids too).
        number += 1
        # The workflow task that scheduled this call: resetting to it replays
        # everything before and runs the call again.
        finish = attrs.workflow_task_completed_event_id
        if finish in seen:
            # Calls scheduled together (parallel agents) share one point.
            continue
        seen.add(finish)
        points.append(ResetPoint(finish, f"Before model call {number} (event {finish})", "call"))
    last_good = last_good_point(events)
    if last_good is not None:
        points.append(
            ResetPoint(
                last_good, f"Last good point before the failure (event {last_good})", "last-good"
            )
        )
    return points


def last_good_point(events: Sequence[HistoryEvent]) -> int | None:
    """The last WorkflowTaskCompleted before the run's first failure; None if nothing failed."""
    completed: int | None = None
    for event in events:
        if event.event_type in _FAILURE_EVENTS:
            return completed
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            completed = event.event_id
    return None


def check_reset_point(raw: str, points: Sequence[ResetPoint]) -> int:
    try:
        event_id = int(raw)
    except ValueError:
        raise InvalidAction("choose a reset point") from None
    if event_id not in {p.event_id for p in points}:
        raise InvalidAction(f"event {event_id} is not a reset point of this run")
    return event_id


@dataclass(frozen=True)
class StartedWith:
    """What a run was started with, to start it again the same way."""

    workflow_type: str
    task_queue: str
    payloads: list[Payload]


def started_with(events: Sequence[HistoryEvent]) -> StartedWith | None:
    if not events or events[0].event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
        return None
    attrs = events[0].workflow_execution_started_event_attributes
    return StartedWith(
        workflow_type=attrs.workflow_type.name,
        task_queue=attrs.task_queue.name,
        payloads=list(attrs.input.payloads),
    )


def reset_from(events: Sequence[HistoryEvent]) -> str | None:
    """The run this one was reset from, as Temporal records it (base run id)."""
    return correlation.reset_point(events)[0] or None


def edited_input(workflow_type: str, raw: str) -> Any:
    """The edited input of a run again of a bundled workflow, checked like a new run's."""
    kind = INPUT_TYPES.get(workflow_type)
    if kind is None:
        raise InvalidAction(
            f"Loomview edits the input of its bundled workflows only, not {workflow_type!r}"
        )
    value = parse_payload(raw)
    if not isinstance(value, dict):
        raise InvalidAction("the input is a JSON object")
    fields = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(value) - fields)
    if unknown:
        raise InvalidAction(f"the {workflow_type} input has no field {', '.join(unknown)}")
    try:
        made = kind(**value)
    except TypeError as exc:
        raise InvalidAction(f"the {workflow_type} input is incomplete: {exc}") from None
    prompt = value.get("prompt", "")
    if not isinstance(prompt, str):
        raise InvalidAction("the prompt is text")
    if workflow_type != "conversation" and not prompt.strip():
        raise InvalidAction("give the agent something to do: the prompt is empty")
    faults = value.get("faults")
    if faults is not None:
        if not isinstance(faults, list) or not all(isinstance(f, str) for f in faults):
            raise InvalidAction('faults is a list of fault specs such as "call=2:fail=1"')
        try:
            parse_faults(faults)
        except FaultSpecError as exc:
            raise InvalidAction(f"bad fault spec: {exc}") from None
    return made


def again_id(workflow_id: str, suffix: str) -> str:
    """A new workflow id for a run again: the old one without an earlier -again- suffix."""
    base = re.sub(r"-again-[0-9a-f]{6}$", "", workflow_id)
    return f"{base}-again-{suffix}"


@dataclass(frozen=True)
class RunLink:
    label: str  # "Reset from", "Reset to", "Run again of", "Run again as"
    workflow_id: str
    run_id: str


def run_links(workflow_id: str, run_id: str, base_run_id: str | None) -> list[RunLink]:
    """Runs this one came from or led to, through resets and runs again."""
    links: list[RunLink] = []
    made = AuditEntry.objects.filter(
        outcome=AuditEntry.Outcome.OK, action__in=["reset", "run_again"]
    )
    for entry in made.filter(new_run_id=run_id, new_workflow_id=workflow_id):
        label = "Reset from" if entry.action == "reset" else "Run again of"
        links.append(RunLink(label, entry.workflow_id, entry.run_id))
    if base_run_id and not any(link.label == "Reset from" for link in links):
        links.append(RunLink("Reset from", workflow_id, base_run_id))
    for entry in made.filter(workflow_id=workflow_id, run_id=run_id):
        label = "Reset to" if entry.action == "reset" else "Run again as"
        links.append(RunLink(label, entry.new_workflow_id, entry.new_run_id))
    return links
