"""The core promise: a run survives its worker being killed, and no finished model call reruns."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import pytest
from temporalio.client import Client

from tests.conftest import WorkerFactory
from tests.worker.history import model_calls
from worker.inputs import AgentRunInput, AgentRunResult

pytestmark = pytest.mark.timeout(240)


async def test_run_completes_after_sigkill_and_completed_model_calls_run_once(
    temporal_client: Client, worker_factory: WorkerFactory
) -> None:
    settings = {
        # Slow enough that the kill lands mid-run; a short heartbeat timeout lets
        # Temporal notice the dead worker's in-flight call quickly.
        "LOOMVIEW_DEMO_LATENCY_MS": "700",
        "LOOMVIEW_MODEL_HEARTBEAT_SECONDS": "2",
        "LOOMVIEW_MODEL_START_TO_CLOSE_SECONDS": "30",
    }
    first = worker_factory(**settings)
    workflow_id = f"test-durable-{uuid.uuid4().hex[:8]}"
    handle = await temporal_client.start_workflow(
        "triage",
        AgentRunInput("Our sync is stuck and the app shows errors since this morning."),
        id=workflow_id,
        task_queue=first.task_queue,
        result_type=AgentRunResult,
    )

    async def completed() -> list[str]:
        """Model calls whose completion Temporal has recorded."""
        return [c.activity_id for c in await model_calls(handle) if c.outcome == "completed"]

    deadline = time.monotonic() + 60
    while len(await completed()) < 2:
        assert time.monotonic() < deadline, "the first worker never completed two model calls"
        await asyncio.sleep(0.05)
    first.kill()
    done_before_kill = await completed()
    assert len(done_before_kill) >= 2
    assert first.process is not None and first.process.returncode == -9

    second = worker_factory(
        **settings,
        LOOMVIEW_TASK_QUEUE=first.task_queue,
        LOOMVIEW_DEMO_LOG=str(first.demo_log),
    )
    result = await asyncio.wait_for(handle.result(), timeout=120)

    assert result.answered_by == "Technical support"
    assert "degraded in eu-west-1" in result.output and "KB-" in result.output
    rows = [row for row in second.invocations() if row["workflow_id"] == workflow_id]
    successes = Counter(str(row["activity_id"]) for row in rows if row["outcome"] == "ok")
    for activity_id in done_before_kill:
        assert successes[activity_id] == 1, f"model call {activity_id} ran again after the kill"
    # Every model call in the history succeeded exactly once across both workers.
    calls = await model_calls(handle)
    assert len(calls) == result.model_calls == 4
    assert {call.activity_id: successes[call.activity_id] for call in calls} == {
        call.activity_id: 1 for call in calls
    }
    assert {int(str(row["pid"])) for row in rows if row["outcome"] == "ok"} == {
        first.history[0].pid,
        second.history[0].pid,
    }
