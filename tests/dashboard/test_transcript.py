"""A conversation as a transcript: turns from model calls, the user's messages and
where they came from (input, signal, update), tools, tokens and cost per turn."""

from __future__ import annotations

import json
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.converter import default

from dashboard import transcript
from tracing.correlation import ModelCall, RunStory

SECOND = 1_000_000_000


def payloads(*values: Any) -> Any:
    return default().payload_converter.to_payloads(list(values))


def started(prompt: str) -> HistoryEvent:
    event = HistoryEvent(event_id=1, event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
    event.event_time.FromNanoseconds(SECOND)
    attrs = event.workflow_execution_started_event_attributes
    attrs.workflow_type.name = "conversation"
    attrs.input.payloads.extend(payloads({"prompt": prompt, "history": []}))
    return event


def signaled(event_id: int, name: str, value: Any) -> HistoryEvent:
    event = HistoryEvent(
        event_id=event_id, event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    )
    event.event_time.FromNanoseconds(event_id * SECOND)
    attrs = event.workflow_execution_signaled_event_attributes
    attrs.signal_name = name
    attrs.input.payloads.extend(payloads(value))
    return event


def update(event_id: int, name: str, text: str) -> HistoryEvent:
    event = HistoryEvent(
        event_id=event_id, event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    )
    event.event_time.FromNanoseconds(event_id * SECOND)
    request = event.workflow_execution_update_accepted_event_attributes.accepted_request
    request.input.name = name
    request.input.args.payloads.extend(payloads(text))
    return event


def chat(*said: str) -> str:
    return json.dumps([{"role": "user", "content": s} for s in said])


def answer(text: str) -> str:
    return json.dumps([{"role": "assistant", "content": text}])


def tool_request(name: str, arguments: dict[str, Any]) -> str:
    call = {"id": "c1", "name": name, "arguments": json.dumps(arguments)}
    return json.dumps([{"role": "assistant", "tool_calls": [call]}])


def model_call(number: int, said: str, output: str, agent: str = "Concierge") -> ModelCall:
    return ModelCall(
        activity_id=str(number), number=number, agent=agent, model="gpt-4o-mini",
        scheduled_ns=(10 + number) * SECOND, input=chat("earlier", said), output=output,
        tokens_in=100, tokens_out=10,
    )  # fmt: skip


def test_turns_group_calls_by_the_users_message_and_say_where_it_came_from() -> None:
    events = [
        started("Plan a trip to Lisbon."),
        update(5, "send_message", "What should I pack?"),
        signaled(9, "user_message", "And <script>alert(1)</script> the weather?"),
        signaled(10, "end", None),
    ]
    calls = [
        model_call(1, "Plan a trip to Lisbon.", tool_request("weather", {"city": "Lisbon"})),
        model_call(2, "Plan a trip to Lisbon.", answer("Three days: Alfama, Belém, Sintra.")),
        model_call(3, "What should I pack?", answer("Light layers."), agent="Packer"),
        model_call(4, "And <script>alert(1)</script> the weather?", answer("Sunny.")),
    ]
    turns = transcript.turns(RunStory(items=[], model_calls=calls), events)
    assert [(t.number, t.user, t.source, t.answer) for t in turns] == [
        (1, "Plan a trip to Lisbon.", "input", "Three days: Alfama, Belém, Sintra."),
        (2, "What should I pack?", "update send_message", "Light layers."),
        (3, "And <script>alert(1)</script> the weather?", "signal user_message", "Sunny."),
    ]
    assert turns[0].tools == ['weather({"city": "Lisbon"})']
    assert [len(t.calls) for t in turns] == [2, 1, 1]
    assert (turns[0].tokens_in, turns[0].tokens_out) == (200, 20)
    assert turns[0].cost is not None and turns[0].cost > turns[1].cost  # type: ignore[operator]
    assert turns[1].agents == ["Packer"]
    assert transcript.is_conversation(turns)


def test_an_open_run_ends_with_the_messages_not_answered_yet() -> None:
    events = [started("Hi."), signaled(7, "user_message", {"text": "Still there?"})]
    calls = [model_call(1, "Hi.", answer("Hello!"))]
    story = RunStory(items=[], model_calls=calls)
    turns = transcript.turns(story, events, open_run=True)
    assert [(t.user, t.waiting, t.source) for t in turns] == [
        ("Hi.", False, "input"),
        ("Still there?", True, "signal user_message"),
    ]
    # Closed, a message nobody answered is not a turn that waits.
    assert len(transcript.turns(story, events, open_run=False)) == 1


def test_a_run_that_received_no_messages_is_not_a_conversation() -> None:
    # The approval's decision is a signal, but it carries no words of the user's.
    events = [started("Rotate the keys."), signaled(8, "approve", {"comment": "ok", "by": "me"})]
    calls = [model_call(1, "Rotate the keys.", answer("Draft: rotate."))]
    turns = transcript.turns(RunStory(items=[], model_calls=calls), events, open_run=True)
    assert len(turns) == 1 and not transcript.is_conversation(turns)


def test_long_messages_are_cut() -> None:
    said = "x" * (transcript.MAX_TEXT_CHARS + 50)
    turns = transcript.turns(
        RunStory(items=[], model_calls=[model_call(1, said, answer("ok"))]), []
    )
    assert turns[0].user.endswith("…") and len(turns[0].user) == transcript.MAX_TEXT_CHARS + 1
