"""A conversation as a transcript, turn by turn, from a run's story and history.

A turn is what the user said and what the agents did about it: the model calls
whose input ends with the same user message (a handoff or a tool round keeps
the turn), their tools, their tokens and cost, and the answer in words. Where
the user's message came from (the run's input, a signal, an update) is read
from the history. A message received but not answered yet is a turn still
waiting. Runs that continue as new are followed by the conversation page, one
run after the other, so every turn of the chain reads as one transcript.

Everything here is sender-controlled text: templates escape it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from dashboard import diffs, waiting
from tracing import pricing
from tracing.correlation import ModelCall, RunStory, event_ns
from tracing.models import ns_to_datetime

# The longest user message or answer shown whole.
MAX_TEXT_CHARS = 8000
# Fields of a structured message payload that hold what the user said.
_TEXT_FIELDS = ("text", "content", "message", "prompt")


@dataclass
class Turn:
    user: str
    # Where the user's message came from: "input", "signal <name>", "update <name>".
    source: str = ""
    answer: str = ""
    agents: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    calls: list[ModelCall] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    cost: Decimal | None = None
    time: datetime | None = None
    # The run that answered it, in a continue-as-new chain.
    workflow_id: str = ""
    run_id: str = ""
    number: int = 0
    # (model call number, its detail URL) for each call of the turn.
    links: list[tuple[int, str]] = field(default_factory=list)

    @property
    def waiting(self) -> bool:
        return not self.calls


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "…"


def _said(value: Any) -> str:
    """The words in a message payload: a string, or the text field of an object."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in _TEXT_FIELDS:
            if isinstance(value.get(key), str):
                return str(value[key])
    if isinstance(value, list) and len(value) == 1:
        return _said(value[0])
    return ""


def user_messages(events: Sequence[HistoryEvent]) -> list[tuple[str, str, int]]:
    """(text, source, time ns) of every message the run received: its input's prompt,
    signals and updates, in history order."""
    from dashboard.run_page import decode_payloads, to_json

    found: list[tuple[str, str, int]] = []
    for event in events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            attrs = event.workflow_execution_started_event_attributes
            payload = decode_payloads(to_json(attrs.input)) if attrs.HasField("input") else None
            text = _said(payload)
            if text.strip():
                found.append((text, "input", event_ns(event)))
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            attrs_s = event.workflow_execution_signaled_event_attributes
            payload = decode_payloads(to_json(attrs_s.input)) if attrs_s.HasField("input") else None
            text = _said(payload)
            if text.strip():
                found.append((text, f"signal {attrs_s.signal_name}", event_ns(event)))
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            request = event.workflow_execution_update_accepted_event_attributes.accepted_request
            args = request.input.args
            payload = decode_payloads(to_json(args)) if request.input.HasField("args") else None
            text = _said(payload)
            if text.strip():
                found.append((text, f"update {request.input.name}", event_ns(event)))
    return found


def _last_user_message(call: ModelCall) -> str:
    for message in reversed(diffs.messages(call.input) or []):
        if message.role == "user":
            return message.text
    return ""


def turns(story: RunStory, events: Sequence[HistoryEvent], open_run: bool = False) -> list[Turn]:
    """One run's conversation, turn by turn (numbered from 1); an open run's messages
    no model call has read yet end it, as turns waiting for an answer."""
    received = user_messages(events)
    sources: dict[str, list[tuple[str, int]]] = {}
    for text, source, ns in received:
        sources.setdefault(text.strip(), []).append((source, ns))
    result: list[Turn] = []
    for call in sorted(story.model_calls, key=lambda c: (c.scheduled_ns or 0, c.number)):
        said = _last_user_message(call)
        if not result or said.strip() != result[-1].user.strip():
            result.append(Turn(user=said))
        turn = result[-1]
        turn.calls.append(call)
        if call.agent and call.agent not in turn.agents:
            turn.agents.append(call.agent)
        output = diffs.messages(call.output) or []
        turn.tools.extend(tool.text for tool in diffs.tool_calls(output))
        answer = waiting.answer_text(call.output)
        if answer:
            turn.answer = answer
    for turn in result:
        turn.tokens_in = sum(c.tokens_in or 0 for c in turn.calls)
        turn.tokens_out = sum(c.tokens_out or 0 for c in turn.calls)
        by_model: dict[str, tuple[int, int]] = {}
        for call in turn.calls:
            was = by_model.get(call.model, (0, 0))
            by_model[call.model] = (was[0] + (call.tokens_in or 0), was[1] + (call.tokens_out or 0))
        cost = pricing.estimate(by_model, settings.LOOMVIEW_MODEL_PRICES) if by_model else None
        turn.cost = cost.quantize(Decimal("0.000001")) if cost is not None else None
        first = turn.calls[0]
        turn.time = ns_to_datetime(first.scheduled_ns or first.started_ns)
        matched = sources.get(turn.user.strip())
        if matched:
            turn.source, _ = matched.pop(0)
    # Messages no model call has read yet: the turns still waiting for an answer.
    answered = {t.user.strip() for t in result}
    for text, source, ns in received if open_run else ():
        if text.strip() not in answered and source != "input":
            result.append(Turn(user=text, source=source, time=ns_to_datetime(ns)))
    for number, turn in enumerate(result, 1):
        turn.user = _cut(turn.user)
        turn.answer = _cut(turn.answer)
        turn.number = number
    return result


def is_conversation(found: Sequence[Turn]) -> bool:
    """Whether a run exchanges messages: a user's message came by signal or update."""
    return any(t.source.startswith(("signal", "update")) for t in found)
