"""Every bundled workflow on a real Temporal dev server and the bundled worker (in process)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError

from tests.conftest import InProcessWorker, InProcessWorkerFactory
from tests.worker.history import MODEL_ACTIVITY, activities, model_calls
from worker.inputs import (
    AgentRunInput,
    AgentRunResult,
    ApprovalInput,
    ApprovalResult,
    ApprovalStatus,
    ChatMessage,
    ConversationInput,
    ConversationResult,
    Decision,
)

pytestmark = pytest.mark.timeout(180)


def _id(kind: str) -> str:
    return f"test-{kind}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def worker(shared_worker: InProcessWorker) -> InProcessWorker:
    return shared_worker


def _ok_invocations(worker: InProcessWorker, workflow_id: str) -> list[dict[str, object]]:
    return [
        row
        for row in worker.invocations()
        if row.get("workflow_id") == workflow_id and row.get("outcome") == "ok"
    ]


async def test_triage_hands_off_and_runs_workflow_and_activity_tools(
    temporal_client: Client, worker: InProcessWorker
) -> None:
    workflow_id = _id("triage")
    handle = await temporal_client.start_workflow(
        "triage",
        AgentRunInput("Our sync is stuck and the app shows errors since this morning."),
        id=workflow_id,
        task_queue=worker.task_queue,
        result_type=AgentRunResult,
    )
    result = await handle.result()
    assert result.answered_by == "Technical support"
    assert result.agents == ["Triage agent", "Technical support"]
    assert "degraded in eu-west-1" in result.output  # the activity tool's result
    assert "KB-" in result.output  # the in-workflow function tool's result
    recorded = await activities(handle)
    assert [a.activity_type for a in recorded] == [
        MODEL_ACTIVITY,
        MODEL_ACTIVITY,
        "check_service_status",
        MODEL_ACTIVITY,
        MODEL_ACTIVITY,
    ]
    assert all(a.outcome == "completed" for a in recorded)
    # Token totals reported by the workflow equal what the demo model reported.
    calls = _ok_invocations(worker, workflow_id)
    assert len(calls) == result.model_calls == 4
    assert sum(int(str(c["input_tokens"])) for c in calls) == result.input_tokens
    assert sum(int(str(c["output_tokens"])) for c in calls) == result.output_tokens


async def test_triage_routes_billing_requests_to_billing(
    temporal_client: Client, worker: InProcessWorker
) -> None:
    result = await temporal_client.execute_workflow(
        "triage",
        AgentRunInput("I was charged twice on invoice INV-2231, please refund me."),
        id=_id("triage"),
        task_queue=worker.task_queue,
        result_type=AgentRunResult,
    )
    assert result.answered_by == "Billing specialist"
    assert "invoice INV-2231: $" in result.output


async def test_injected_faults_are_retried_by_temporal(
    temporal_client: Client, worker: InProcessWorker
) -> None:
    workflow_id = _id("faults")
    handle = await temporal_client.start_workflow(
        "triage",
        AgentRunInput("Refund invoice INV-7", faults=["call=2:fail=2"]),
        id=workflow_id,
        task_queue=worker.task_queue,
        result_type=AgentRunResult,
    )
    result = await handle.result()
    assert result.answered_by == "Billing specialist"
    calls = await model_calls(handle)
    assert calls[0].attempts == [1]
    # Temporal records only the last attempt's started event, with its attempt number.
    assert calls[1].activity_id == "2" and calls[1].attempts == [3]
    assert all(call.outcome == "completed" for call in calls)
    injected = [
        row
        for row in worker.invocations()
        if row["workflow_id"] == workflow_id and str(row["outcome"]).startswith("injected")
    ]
    assert [(row["activity_id"], row["attempt"]) for row in injected] == [("2", 1), ("2", 2)]


async def test_fault_specs_count_model_calls_not_tool_activities(
    temporal_client: Client, worker: InProcessWorker
) -> None:
    """Triage's third model call is activity 4: check_service_status (activity_as_tool) is 3."""
    workflow_id = _id("faults-numbered")
    handle = await temporal_client.start_workflow(
        "triage",
        AgentRunInput("The sync is stuck with errors", faults=["call=3:fail=1"]),
        id=workflow_id,
        task_queue=worker.task_queue,
        result_type=AgentRunResult,
    )
    await handle.result()
    every = await activities(handle)
    assert [a.activity_type for a in every][:4] == [
        MODEL_ACTIVITY, MODEL_ACTIVITY, "check_service_status", MODEL_ACTIVITY
    ]  # fmt: skip
    assert every[2].attempts == [1]
    assert every[3].activity_id == "4" and every[3].attempts == [2]
    injected = [
        (row["activity_id"], row["call"], row["attempt"])
        for row in worker.invocations()
        if row["workflow_id"] == workflow_id and str(row["outcome"]).startswith("injected")
    ]
    assert injected == [("4", 3, 1)]


async def test_resilient_falls_back_when_the_primary_model_is_down(
    temporal_client: Client, worker: InProcessWorker
) -> None:
    handle = await temporal_client.start_workflow(
        "resilient",
        AgentRunInput("Summarize our churn drivers."),
        id=_id("resilient"),
        task_queue=worker.task_queue,
        result_type=AgentRunResult,
    )
    result = await handle.result()
    assert result.answered_by == "Fallback analyst"
    assert result.output.startswith("Fallback analyst here.")
    assert "primary model failed after retries" in result.notes[0]
    primary, fallback = await model_calls(handle)
    assert primary.outcome == "failed" and primary.attempts == [3]
    assert "503 Service Unavailable" in primary.failure or "Injected" in primary.failure
    assert fallback.outcome == "completed"


async def test_resilient_uses_the_primary_when_it_is_healthy(
    temporal_client: Client, worker: InProcessWorker
) -> None:
    result = await temporal_client.execute_workflow(
        "resilient",
        AgentRunInput("Summarize our churn drivers.", faults=[]),
        id=_id("resilient"),
        task_queue=worker.task_queue,
        result_type=AgentRunResult,
    )
    assert result.answered_by == "Primary analyst"


async def test_parallel_runs_analysts_concurrently_and_merges(
    temporal_client: Client, worker: InProcessWorker
) -> None:
    handle = await temporal_client.start_workflow(
        "parallel",
        AgentRunInput("Should we launch a self-serve plan?"),
        id=_id("parallel"),
        task_queue=worker.task_queue,
        result_type=AgentRunResult,
    )
    result = await handle.result()
    assert result.answered_by == "Editor"
    assert result.agents == ["Market analyst", "Risk analyst", "Engineering analyst", "Editor"]
    for analyst in ("Market analyst here.", "Risk analyst here.", "Engineering analyst here."):
        assert analyst in result.output
    # The three analysts' calls were scheduled together, before any of them completed.
    history = await handle.fetch_history()
    kinds = [e.event_type for e in history.events]
    first_completed = kinds.index(EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
    assert kinds[:first_completed].count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 3
    assert len(await model_calls(handle)) == 4


async def _wait_for_state(handle: WorkflowHandle, state: str) -> ApprovalStatus:
    for _ in range(200):
        status = await handle.query("status", result_type=ApprovalStatus)
        if status.state == state:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"approval never reached {state!r}")


async def test_approval_waits_then_finishes_on_approve(
    temporal_client: Client, worker: InProcessWorker
) -> None:
    handle = await temporal_client.start_workflow(
        "approval",
        ApprovalInput("Scale the search cluster to 5 nodes."),
        id=_id("approval"),
        task_queue=worker.task_queue,
        result_type=ApprovalResult,
    )
    status = await _wait_for_state(handle, "waiting")
    assert "Operations drafter here." in status.draft
    # Parked on the human: running, no model call in flight, only the draft's two done.
    description = await handle.describe()
    assert description.status == WorkflowExecutionStatus.RUNNING
    assert list(description.raw_description.pending_activities) == []
    assert len(await model_calls(handle)) == 2
    assert (await handle.query("status", result_type=ApprovalStatus)).state == "waiting"
    await handle.signal("approve", Decision(comment="ship it before Monday", by="alice"))
    result = await handle.result()
    assert result.outcome == "approved"
    assert result.decided_by == "alice"
    assert result.output.startswith("Operations executor here.")
    assert "ship it before Monday" in result.output


async def test_approval_reject_does_nothing(
    temporal_client: Client, worker: InProcessWorker
) -> None:
    handle = await temporal_client.start_workflow(
        "approval",
        ApprovalInput("Delete the staging cluster."),
        id=_id("approval"),
        task_queue=worker.task_queue,
        result_type=ApprovalResult,
    )
    await _wait_for_state(handle, "waiting")
    await handle.signal("reject", Decision(comment="not during the freeze", by="bob"))
    result = await handle.result()
    assert (result.outcome, result.comment, result.decided_by) == (
        "rejected",
        "not during the freeze",
        "bob",
    )
    assert len(await model_calls(handle)) == 2  # the draft only: drafter tool call + answer


async def test_approval_expires_without_a_decision(
    temporal_client: Client, worker: InProcessWorker
) -> None:
    result = await temporal_client.execute_workflow(
        "approval",
        ApprovalInput("Restart the API pods.", timeout_seconds=1),
        id=_id("approval"),
        task_queue=worker.task_queue,
        result_type=ApprovalResult,
    )
    assert result.outcome == "expired"


async def test_conversation_takes_updates_and_signals_and_ends(
    temporal_client: Client, worker: InProcessWorker
) -> None:
    handle = await temporal_client.start_workflow(
        "conversation",
        ConversationInput(prompt="Hi, I'm planning a trip to Lisbon."),
        id=_id("chat"),
        task_queue=worker.task_queue,
        result_type=ConversationResult,
    )
    reply = await handle.execute_update("send_message", "What should I pack?", result_type=str)
    assert reply.startswith("Concierge here.") and "What should I pack?" in reply
    with pytest.raises(WorkflowUpdateFailedError) as rejected:
        await handle.execute_update("send_message", "   ", result_type=str)
    assert "the message is empty" in str(rejected.value.cause)
    await handle.signal("user_message", "And where should I eat?")
    for _ in range(200):
        history = await handle.query("history", result_type=list[ChatMessage])
        if len(history) == 6:
            break
        await asyncio.sleep(0.05)
    assert [m.role for m in history] == ["user", "assistant"] * 3
    assert history[4].content == "And where should I eat?"
    assert history[5].agent == "Concierge"
    await handle.signal("end")
    result = await handle.result()
    assert result.turns == 3 and len(result.history) == 6


async def test_conversation_continues_as_new_keeping_its_history(
    temporal_client: Client, worker: InProcessWorker
) -> None:
    workflow_id = _id("chat")
    handle = await temporal_client.start_workflow(
        "conversation",
        ConversationInput(prompt="one", max_turns_per_run=2),
        id=workflow_id,
        task_queue=worker.task_queue,
    )
    await handle.execute_update("send_message", "two", result_type=str)
    for _ in range(200):
        if (
            await temporal_client.get_workflow_handle(workflow_id).describe()
        ).run_id != handle.result_run_id:
            break
        await asyncio.sleep(0.05)
    latest = temporal_client.get_workflow_handle(workflow_id)
    await latest.execute_update("send_message", "three", result_type=str)
    history = await latest.query("history", result_type=list[ChatMessage])
    assert [m.content for m in history if m.role == "user"] == ["one", "two", "three"]
    await latest.signal("end")


@pytest.mark.parametrize(
    ("workflow", "payload", "message"),
    [
        ("triage", AgentRunInput("   "), "the prompt is empty"),
        ("parallel", AgentRunInput(""), "the prompt is empty"),
        ("triage", AgentRunInput("hi", faults=["call=1:explode"]), "unknown key 'explode'"),
        ("resilient", AgentRunInput("hi", faults=["fail=2"]), "missing call=N"),
        ("approval", ApprovalInput("do it", timeout_seconds=0), "timeout_seconds must be positive"),
        ("conversation", ConversationInput(faults=["call=1:slow"]), "slow needs a value"),
    ],
)
async def test_bad_input_fails_at_once_with_a_clear_error(
    temporal_client: Client, worker: InProcessWorker, workflow: str, payload: object, message: str
) -> None:
    handle = await temporal_client.start_workflow(
        workflow,
        payload,
        id=_id("bad"),
        task_queue=worker.task_queue,
        execution_timeout=timedelta(seconds=60),
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.non_retryable and cause.type == "InvalidInput"
    assert message in cause.message
    assert await model_calls(handle) == []


async def test_model_calls_run_on_a_separate_model_task_queue(
    temporal_client: Client, inprocess_worker_factory: InProcessWorkerFactory
) -> None:
    model_queue = f"models-{uuid.uuid4().hex[:8]}"
    workflows_only = inprocess_worker_factory(model_task_queue=model_queue, role="workflows")
    inprocess_worker_factory(
        task_queue=workflows_only.task_queue, model_task_queue=model_queue, role="models"
    )
    handle = await temporal_client.start_workflow(
        "resilient",
        AgentRunInput("hello", faults=[]),
        id=_id("queues"),
        task_queue=workflows_only.task_queue,
        result_type=AgentRunResult,
    )
    assert (await handle.result()).answered_by == "Primary analyst"
    assert [call.task_queue for call in await model_calls(handle)] == [model_queue]


async def test_triage_guardrail_blocks_a_request_carrying_a_secret(
    temporal_client: Client, worker: InProcessWorker
) -> None:
    workflow_id = _id("guardrail")
    handle = await temporal_client.start_workflow(
        "triage",
        AgentRunInput("My key sk-abcdefghijklmnopqrstuvwx stopped working, please check"),
        id=workflow_id,
        task_queue=worker.task_queue,
        result_type=AgentRunResult,
    )
    result = await handle.result()
    assert result.answered_by == "guardrail"
    assert "No secrets in the request" in result.output
    assert await model_calls(handle) == []
