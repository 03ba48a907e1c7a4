"""What an open run waits for, from its story: the agent's last words, timers, pending
work; and which handler a form may pick first."""

from __future__ import annotations

import json

from dashboard import waiting
from tracing.correlation import ModelCall, RunStory, StoryItem

SECOND = 1_000_000_000


def call(number: int, output: object, agent: str = "Drafter") -> ModelCall:
    return ModelCall(
        activity_id=str(number), number=number, agent=agent, output=output, closed_ns=number
    )


def test_the_last_output_is_the_last_answer_in_words_not_a_tool_request() -> None:
    draft = [{"role": "assistant", "content": "Rotate the keys <b>now</b>, then restart."}]
    tool_request = [
        {"role": "assistant", "tool_calls": [{"id": "c1", "name": "lookup", "arguments": "{}"}]}
    ]
    calls = [call(1, json.dumps(tool_request)), call(2, json.dumps(draft)), call(3, tool_request)]
    output = waiting.last_output(calls)
    assert output is not None
    assert output.text == "Rotate the keys <b>now</b>, then restart."
    assert (output.number, output.agent, output.activity_id) == (2, "Drafter", "2")
    assert waiting.last_output([call(1, tool_request)]) is None
    assert waiting.last_output([]) is None


def test_answers_in_other_shapes_and_long_answers_are_cut() -> None:
    responses = [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}
    ]
    assert waiting.answer_text(responses) == "ok"
    assert waiting.answer_text("plain words") == "plain words"
    assert waiting.answer_text(None) == ""
    long = waiting.last_output([call(1, "x" * (waiting.MAX_OUTPUT_CHARS + 10))])
    assert long is not None and long.cut and long.text.endswith("…")
    assert len(long.text) == waiting.MAX_OUTPUT_CHARS + 1


def test_waiting_for_a_message_with_a_timer_and_a_pending_activity() -> None:
    now = 1000 * SECOND
    story = RunStory(
        items=[
            StoryItem("signal", 10 * SECOND, "approve", True),
            StoryItem("update", 11 * SECOND, "send_message", True, detail={"state": "accepted"}),
            StoryItem("update", 12 * SECOND, "u1 completed", True, detail={"state": "completed"}),
        ],
        model_calls=[call(1, "Draft: rotate the keys.")],
        waits=[
            StoryItem("wait", now - 244 * SECOND, "waiting for a signal or an update", True),
            StoryItem(
                "timer", now - 244 * SECOND, "timer 1", True,
                detail={"timer_id": "1", "timeout_ns": 300 * SECOND,
                        "fire_ns": now + 56 * SECOND, "state": "pending"},
            ),
            StoryItem(
                "timer", 0, "timer 0", True, end_ns=SECOND,
                detail={"timer_id": "0", "timeout_ns": SECOND, "fire_ns": SECOND,
                        "state": "fired"},
            ),
            StoryItem(
                "pending", now - SECOND, "invoke_model_activity pending", True,
                detail={"activity_id": "3", "activity_type": "invoke_model_activity"},
            ),
        ],
    )  # fmt: skip
    found = waiting.waiting_for(story, now_ns=now)
    assert found.is_waiting and found.awaiting_message
    assert found.idle_for == "4m 04s"
    timers = [(t.timer_id, t.timeout, t.fires_in) for t in found.timers]
    assert timers == [("1", "5m 00s", "56.0 s")]
    assert [(p.activity_type, p.activity_id) for p in found.pending] == [
        ("invoke_model_activity", "3")
    ]
    assert found.received == [("signal", "approve"), ("update", "send_message")]
    assert found.output is not None and found.output.text == "Draft: rotate the keys."


def test_a_busy_run_waits_on_nothing() -> None:
    found = waiting.waiting_for(RunStory(items=[], model_calls=[]), now_ns=SECOND)
    assert not found.is_waiting and found.output is None


def test_destructive_handlers_come_last_and_are_never_picked_first() -> None:
    assert waiting.safe_first(["end", "user_message"]) == ["user_message", "end"]
    assert waiting.safe_first(["approve", "reject"]) == ["approve", "reject"]
    assert waiting.safe_first(["cancelOrder", "stop", "addItem", "note"]) == [
        "addItem", "note", "cancelOrder", "stop"
    ]  # fmt: skip
    for name in ("end", "reject", "endConversation", "stop_now", "HTTPStop", "terminate-all"):
        assert waiting.is_destructive(name), name
    for name in ("approve", "user_message", "endorse", "appendix", "send_message", "restock"):
        assert not waiting.is_destructive(name), name
