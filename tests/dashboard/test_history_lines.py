"""The full history reads like Temporal's: one summary line per event."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard import history_lines
from dashboard.run_page import full_history
from tests.dashboard.run_fixtures import history_proto, recorded


def lines() -> dict[int, str]:
    return {row.event_id: row.summary for row in full_history(history_proto(recorded()).events)}


def test_every_event_of_a_recorded_run_has_its_line() -> None:
    found = lines()
    assert all(found.values()), [k for k, v in found.items() if not v]
    assert found[1].startswith('triage · queue cap-queue · input {"prompt": "Our dashboard')
    assert found[5] == "invoke_model_activity #1 · queue cap-queue · start-to-close 2m 00s"
    # The retried attempt, with the failure of the one before it, in brief.
    assert found[6].startswith("invoke_model_activity #1 · attempt 3 · ")
    failure = "last failure InjectedModelFault: Injected model failure on call 1, attempt 2"
    assert failure in found[6]
    # A model call's result in words: the tool it asked for, and its tokens.
    model_line = "invoke_model_activity #1 · → transfer_to_technical_support({}) · 61→52 tokens"
    assert found[7] == model_line
    assert found[19].startswith("check_service_status #3 · result service ")
    assert found[35].startswith('result {"output": "Technical support engineer here.')
    assert all(len(line) < 400 for line in found.values())


@pytest.mark.parametrize(
    ("event_type", "attrs", "activity", "line"),
    [
        ("EVENT_TYPE_TIMER_STARTED", {"timerId": "1", "startToFireTimeout": "300s"}, None,
         "timer 1 · 5m 00s"),
        ("EVENT_TYPE_TIMER_FIRED", {"timerId": "1", "startedEventId": "9"}, None, "timer 1"),
        ("EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED",
         {"signalName": "approve", "input": {"comment": "ok", "by": "ops"},
          "identity": "loomview:ops"}, None,
         'signal approve · {"comment": "ok", "by": "ops"} · by loomview:ops'),
        ("EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED", {"signalName": "end"}, None,
         "signal end · no payload"),
        ("EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED",
         {"acceptedRequest": {"input": {"name": "send_message", "args": "Where is my refund?"},
                              "meta": {"identity": "loomview:ops"}}}, None,
         "update send_message · Where is my refund? · by loomview:ops"),
        ("EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED",
         {"outcome": {"failure": {"message": "the message is empty"}}}, None,
         "failed: the message is empty"),
        ("EVENT_TYPE_ACTIVITY_TASK_FAILED",
         {"failure": {"message": "boom", "applicationFailureInfo": {"type": "Fault"},
                      "cause": {"message": "socket closed"}},
          "retryState": "RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED"},
         ("invoke_model_activity", "3"),
         "invoke_model_activity #3 · Fault: boom ← socket closed · retry maximum_attempts_reached"),
        ("EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW",
         {"newExecutionRunId": "0192ab34-5678", "input": {"history": []}}, None,
         'new run 0192ab34… · input {"history": []}'),
        ("EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED", {"reason": "stuck", "identity": "ops"}, None,
         "stuck · by ops"),
        ("EVENT_TYPE_SOMETHING_NEW", {"count": 3, "nested": {"x": 1}}, None, '{"count": 3}'),
    ],
)  # fmt: skip
def test_summary_lines(
    event_type: str, attrs: dict[str, Any], activity: tuple[str, str] | None, line: str
) -> None:
    assert history_lines.summary(event_type, attrs, activity) == line


def test_long_payloads_are_cut_on_one_line() -> None:
    text = history_lines.brief({"text": "word\n" * 200})
    assert "\n" not in text and text.endswith("…") and len(text) == history_lines.BRIEF_CHARS
