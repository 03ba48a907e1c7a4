"""One line per history event, as Temporal's UI summarises them: the activity and its
attempt, a result or failure in brief, a signal's name and payload, a timer's length.

Works on the event's attributes as decoded proto JSON (payloads already decoded,
camelCase keys), so every event type has a line: the ones not named here show
their first plain fields.
"""

from __future__ import annotations

import json
from typing import Any

from dashboard import diffs
from dashboard.templatetags.runs_format import duration_ns
from telemetry import vocab

# A payload or failure shown in a summary line is cut to about this many characters.
BRIEF_CHARS = 120


def brief(value: Any, limit: int = BRIEF_CHARS) -> str:
    """A value on one line: text as it is, anything else as compact JSON; cut with an ellipsis."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _seconds(value: Any) -> str:
    """A proto JSON duration ("300s", "0.5s") in words."""
    if not isinstance(value, str) or not value.endswith("s"):
        return ""
    try:
        return duration_ns(int(float(value[:-1]) * 1e9))
    except ValueError:
        return ""


def _failure(failure: Any) -> str:
    """A failure's message and its innermost cause's, in brief."""
    if not isinstance(failure, dict):
        return ""
    parts: list[str] = []
    seen = 0
    while isinstance(failure, dict) and seen < 8:
        info = failure.get("applicationFailureInfo") or {}
        kind = info.get("type") if isinstance(info, dict) else ""
        message = str(failure.get("message", ""))
        text = f"{kind}: {message}" if kind else message
        if text and text not in parts:
            parts.append(text)
        failure = failure.get("cause")
        seen += 1
    return brief(" ← ".join(parts))


def _model_result(result: Any) -> str:
    """A model activity's response in words: what it said, the tools it asked for, tokens."""
    if not isinstance(result, dict) or "output" not in result:
        return ""
    said = [" ".join(m.text.split()) for m in diffs.messages(result.get("output")) or [] if m.text]
    usage = result.get("usage")
    tokens = ""
    if isinstance(usage, dict):
        tokens_in, tokens_out = usage.get("input_tokens"), usage.get("output_tokens")
        if isinstance(tokens_in, int) and isinstance(tokens_out, int):
            tokens = f"{tokens_in}→{tokens_out} tokens"
    return _join(brief(" / ".join(said)) if said else "no output", tokens)


def _name(value: Any) -> str:
    return str(value.get("name", "")) if isinstance(value, dict) else ""


def _join(*parts: str) -> str:
    return " · ".join(p for p in parts if p)


def summary(event_type: str, attrs: dict[str, Any], activity: tuple[str, str] | None) -> str:
    """The one line for an event. ``activity`` is (type, id) of the activity an activity
    event belongs to, looked up from its scheduled event."""
    kind = event_type.removeprefix("EVENT_TYPE_")
    act = f"{activity[0]} #{activity[1]}" if activity else ""
    if kind == "WORKFLOW_EXECUTION_STARTED":
        return _join(
            _name(attrs.get("workflowType")),
            f"queue {_name(attrs.get('taskQueue'))}",
            f"input {brief(attrs.get('input'))}" if attrs.get("input") is not None else "",
            f"continued from {attrs['continuedExecutionRunId'][:8]}…"
            if attrs.get("continuedExecutionRunId")
            else "",
        )
    if kind in ("WORKFLOW_EXECUTION_COMPLETED", "ACTIVITY_TASK_COMPLETED"):
        result = attrs.get("result")
        if activity and activity[0] == vocab.MODEL_ACTIVITY_TYPE and _model_result(result):
            return _join(act, _model_result(result))
        return _join(act, f"result {brief(result)}" if result is not None else "no result")
    if kind in ("WORKFLOW_EXECUTION_FAILED", "ACTIVITY_TASK_FAILED", "WORKFLOW_TASK_FAILED"):
        retry = str(attrs.get("retryState", "")).removeprefix("RETRY_STATE_").lower()
        cause = str(attrs.get("cause", "")).removeprefix("WORKFLOW_TASK_FAILED_CAUSE_").lower()
        return _join(act, _failure(attrs.get("failure")), cause, f"retry {retry}" if retry else "")
    if kind == "ACTIVITY_TASK_TIMED_OUT":
        return _join(act, _failure(attrs.get("failure")) or "timed out")
    if kind == "ACTIVITY_TASK_SCHEDULED":
        return _join(
            f"{_name(attrs.get('activityType'))} #{attrs.get('activityId', '')}",
            f"queue {_name(attrs.get('taskQueue'))}",
            f"start-to-close {_seconds(attrs.get('startToCloseTimeout'))}"
            if attrs.get("startToCloseTimeout")
            else "",
        )
    if kind == "ACTIVITY_TASK_STARTED":
        last = _failure(attrs.get("lastFailure"))
        return _join(
            act,
            f"attempt {attrs.get('attempt', 1)}",
            str(attrs.get("identity", "")),
            f"last failure {last}" if last else "",
        )
    if kind in ("ACTIVITY_TASK_CANCEL_REQUESTED", "ACTIVITY_TASK_CANCELED"):
        return act
    if kind == "TIMER_STARTED":
        return _join(
            f"timer {attrs.get('timerId', '')}",
            _seconds(attrs.get("startToFireTimeout")),
        )
    if kind in ("TIMER_FIRED", "TIMER_CANCELED"):
        return f"timer {attrs.get('timerId', '')}"
    if kind == "WORKFLOW_EXECUTION_SIGNALED":
        payload = attrs.get("input")
        return _join(
            f"signal {attrs.get('signalName', '')}",
            brief(payload) if payload is not None else "no payload",
            f"by {attrs['identity']}" if attrs.get("identity") else "",
        )
    if kind == "WORKFLOW_EXECUTION_UPDATE_ACCEPTED":
        request = attrs.get("acceptedRequest") or {}
        body = request.get("input") or {}
        meta = request.get("meta") or {}
        return _join(
            f"update {body.get('name', '')}",
            brief(body.get("args")) if body.get("args") is not None else "no arguments",
            f"by {meta['identity']}" if meta.get("identity") else "",
        )
    if kind == "WORKFLOW_EXECUTION_UPDATE_COMPLETED":
        outcome = attrs.get("outcome") or {}
        if "failure" in outcome:
            return f"failed: {_failure(outcome['failure'])}"
        success = outcome.get("success")
        return f"result {brief(success)}" if success is not None else "completed"
    if kind == "WORKFLOW_EXECUTION_CONTINUED_AS_NEW":
        return _join(
            f"new run {str(attrs.get('newExecutionRunId', ''))[:8]}…",
            f"input {brief(attrs.get('input'))}" if attrs.get("input") is not None else "",
        )
    if kind in ("WORKFLOW_EXECUTION_CANCELED", "WORKFLOW_EXECUTION_TERMINATED"):
        identity = attrs.get("identity")
        return _join(brief(attrs.get("reason", "")), f"by {identity}" if identity else "")
    if kind == "WORKFLOW_EXECUTION_CANCEL_REQUESTED":
        return _join(brief(attrs.get("cause", "")), str(attrs.get("identity", "")))
    if kind == "WORKFLOW_TASK_SCHEDULED":
        return _join(
            f"queue {_name(attrs.get('taskQueue'))}",
            f"attempt {attrs['attempt']}" if int(attrs.get("attempt", 1) or 1) > 1 else "",
        )
    if kind == "WORKFLOW_TASK_STARTED":
        return str(attrs.get("identity", ""))
    if kind == "WORKFLOW_TASK_COMPLETED":
        return str(attrs.get("identity", ""))
    if kind.startswith(("START_CHILD_WORKFLOW", "CHILD_WORKFLOW")):
        execution = attrs.get("workflowExecution") or {}
        return _join(
            _name(attrs.get("workflowType")),
            str(attrs.get("workflowId") or execution.get("workflowId", "")),
            f"result {brief(attrs['result'])}" if attrs.get("result") is not None else "",
            _failure(attrs.get("failure")),
        )
    if kind == "MARKER_RECORDED":
        return str(attrs.get("markerName", ""))
    # Anything else: its plain fields, in brief.
    plain = {k: v for k, v in attrs.items() if isinstance(v, (str, int, float, bool)) and v != ""}
    return brief(plain) if plain else ""
