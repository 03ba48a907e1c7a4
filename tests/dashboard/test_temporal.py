"""dashboard.temporal, the dashboard's only door to Temporal, against a real dev server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from dashboard import temporal
from tests.conftest import InProcessWorker, TemporalServer
from worker.inputs import AgentRunInput, ApprovalInput, ConversationInput

pytestmark = pytest.mark.timeout(120)
T = TypeVar("T")


@pytest.fixture
def on_temporal(temporal_server: TemporalServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
    return temporal_server.address


async def eventually(check: Callable[[], Awaitable[T | None]], patience: float = 20) -> T:
    """The first truthy answer of ``check`` (visibility and workers take a moment)."""
    deadline = time.monotonic() + patience
    while True:
        answer = await check()
        if answer:
            return answer
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.1)


def _id(kind: str) -> str:
    return f"temporal-{kind}-{uuid.uuid4().hex[:8]}"


async def waiting_approval(client: Client, worker: InProcessWorker) -> tuple[str, str]:
    handle = await client.start_workflow(
        "approval",
        ApprovalInput("Rotate the keys"),
        id=_id("approval"),
        task_queue=worker.task_queue,
    )

    async def waiting() -> bool:
        return "waiting" in str(await handle.query("status"))

    await eventually(waiting)
    assert handle.first_execution_run_id is not None
    return handle.id, handle.first_execution_run_id


def test_connection_settings_come_from_temporals_env_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", "/nonexistent/temporal.toml")
    assert temporal.target() == (temporal.DEFAULT_ADDRESS, temporal.DEFAULT_NAMESPACE)
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.internal:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "agents")
    assert temporal.target() == ("temporal.internal:7233", "agents")


async def test_one_client_per_loop_and_address(on_temporal: str) -> None:
    first = await temporal.get_client()
    assert await temporal.get_client() is first
    assert first.service_client.config.target_host == on_temporal
    assert await temporal.get_client_as("loomview:ada") is await temporal.get_client_as(
        "loomview:ada"
    )
    assert await temporal.get_client_as("loomview:bob") is not await temporal.get_client_as(
        "loomview:ada"
    )


async def test_nobody_listening_is_unavailable_quickly(closed_temporal_address: str) -> None:
    started = time.monotonic()
    with pytest.raises(temporal.TemporalUnavailable) as error:
        await temporal.check_connection()
    assert error.value.address == closed_temporal_address
    assert time.monotonic() - started < temporal.CONNECT_TIMEOUT.total_seconds() + 3
    with pytest.raises(temporal.TemporalUnavailable):
        await temporal.send_signal("loomview:ada", "wf", "run", "approve", None)


async def test_visibility_lists_a_run_and_quotes_any_id(
    on_temporal: str, temporal_client: Client, shared_worker: InProcessWorker
) -> None:
    # A quote in an id must not end the literal early (nor let it extend the query).
    workflow_id = _id("it's' OR WorkflowId != 'x")
    before = datetime.now(UTC)
    handle = await temporal_client.start_workflow(
        "triage",
        AgentRunInput("Refund invoice INV-1"),
        id=workflow_id,
        task_queue=shared_worker.task_queue,
    )
    await handle.result()
    query = f"WorkflowId = {temporal.quote(workflow_id)}"

    async def closed() -> list[temporal.VisibilityRun] | None:
        runs = await temporal.list_runs(query, 10)
        return runs if runs and runs[0].status == "COMPLETED" else None

    (run,) = await eventually(closed)
    assert (run.workflow_id, run.run_id) == (workflow_id, handle.first_execution_run_id)
    assert run.workflow_type == "triage" and run.status_label == "Completed"
    assert run.close_time is not None
    assert before - timedelta(seconds=1) <= run.start_time <= run.close_time
    recent = await temporal.list_recent_runs(limit=200)
    assert any(r.workflow_id == workflow_id for r in recent)
    assert temporal.quote("a\\b'c") == "'a\\\\b\\'c'"
    with pytest.raises(ValueError, match="visibility query rejected"):
        await temporal.list_runs("WorkflowId = = 'x'", 10)


async def test_history_state_and_definitions_of_a_waiting_run(
    on_temporal: str, temporal_client: Client, shared_worker: InProcessWorker
) -> None:
    workflow_id, run_id = await waiting_approval(temporal_client, shared_worker)
    history = await temporal.fetch_history(workflow_id, run_id)
    assert not history.closed
    kinds = [e.event_type for e in history.history.events]
    assert kinds[0] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    state = await temporal.run_state(workflow_id, run_id)
    assert state.is_open and state.history_length == len(kinds)
    definitions = await temporal.workflow_definitions(workflow_id, run_id)
    assert definitions == temporal.Definitions(
        signals=["approve", "reject"], queries=["status"], updates=[]
    )
    now = await temporal.run_now(workflow_id, run_id)
    assert now.status == "RUNNING" and now.pending == []
    assert now.stack_trace and "query: __stack_trace" not in now.stack_trace
    assert (await temporal.run_now(workflow_id, run_id, with_stack=False)).stack_trace is None

    await temporal.terminate_run("loomview:ada", workflow_id, run_id, "done (by ada)")
    history = await temporal.fetch_history(workflow_id, run_id)
    assert history.closed
    terminated = history.history.events[-1].workflow_execution_terminated_event_attributes
    assert terminated.identity == "loomview:ada" and terminated.reason == "done (by ada)"
    assert not (await temporal.run_state(workflow_id, run_id)).is_open
    # A closed run refuses actions with a message for the user.
    with pytest.raises(temporal.ActionFailed, match="not open"):
        await temporal.send_signal("loomview:ada", workflow_id, run_id, "approve", None)


async def test_an_unknown_or_malformed_run_is_not_found(on_temporal: str) -> None:
    for run_id in (str(uuid.uuid4()), "not-a-uuid"):
        with pytest.raises(temporal.RunNotFound):
            await temporal.fetch_history("no-such-workflow", run_id)
        with pytest.raises(temporal.RunNotFound):
            await temporal.run_state("no-such-workflow", run_id)
        with pytest.raises(temporal.RunNotFound):
            await temporal.run_now("no-such-workflow", run_id)


async def test_signal_query_update_and_their_failures_carry_the_identity(
    on_temporal: str, temporal_client: Client, shared_worker: InProcessWorker
) -> None:
    handle = await temporal_client.start_workflow(
        "conversation", ConversationInput(), id=_id("chat"), task_queue=shared_worker.task_queue
    )
    run_id = handle.first_execution_run_id
    assert run_id is not None
    reply = await temporal.run_update("loomview:ada", handle.id, run_id, "send_message", "Hello?")
    assert "Hello?" in reply
    with pytest.raises(temporal.ActionFailed, match="rejected the update: the message is empty"):
        await temporal.run_update("loomview:ada", handle.id, run_id, "send_message", " ")
    history = await temporal.run_query("loomview:ada", handle.id, run_id, "history", None)
    assert [m["role"] for m in history] == ["user", "assistant"]
    with pytest.raises(temporal.ActionFailed, match="the query failed"):
        await temporal.run_query("loomview:ada", handle.id, run_id, "no_such_query", None)
    await temporal.send_signal("loomview:bob", handle.id, run_id, "end", None)
    await handle.result()
    events = (await temporal.fetch_history(handle.id, run_id)).history.events
    signaled = [
        e.workflow_execution_signaled_event_attributes
        for e in events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]
    assert [(s.signal_name, s.identity) for s in signaled] == [("end", "loomview:bob")]


async def test_start_reset_and_cancel(
    on_temporal: str, temporal_client: Client, shared_worker: InProcessWorker
) -> None:
    workflow_id = _id("start")
    run_id = await temporal.start_run(
        "loomview:ada",
        "triage",
        [AgentRunInput("Refund invoice INV-9")],
        workflow_id,
        shared_worker.task_queue,
    )
    await temporal_client.get_workflow_handle(workflow_id, run_id=run_id).result()
    events = (await temporal.fetch_history(workflow_id, run_id)).history.events
    started = events[0].workflow_execution_started_event_attributes
    assert (
        started.identity == "loomview:ada" and started.task_queue.name == shared_worker.task_queue
    )
    first_task = next(
        e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    )
    new_run_id = await temporal.reset_run(
        "loomview:ada", workflow_id, run_id, first_task, "try again (by ada)"
    )
    assert new_run_id and new_run_id != run_id
    await temporal_client.get_workflow_handle(workflow_id, run_id=new_run_id).result()

    approval_id, approval_run = await waiting_approval(temporal_client, shared_worker)
    with pytest.raises(temporal.ActionFailed, match="already open"):
        await temporal.start_run(
            "loomview:ada", "approval", [ApprovalInput("x")], approval_id, shared_worker.task_queue
        )
    await temporal.cancel_run("loomview:ada", approval_id, approval_run, "not needed (by ada)")

    async def closed() -> bool:
        return (await temporal.fetch_history(approval_id, approval_run)).closed

    await eventually(closed)


def test_the_stack_trace_leaves_out_the_task_answering_the_query() -> None:
    stack = (
        "Stack for <Task pending name='run' coro=<Approval.run()>> (most recent call last):\n"
        '  File "worker/workflows.py", line 10, in run\n\n'
        "Stack for <Task pending name='query: __stack_trace (workflow: 1)'>:\n"
        '  File "temporalio/worker/_workflow_instance.py", line 1, in run_query\n'
    )
    kept = temporal._without_query_task(stack)
    assert "Approval.run()" in kept and "__stack_trace" not in kept
