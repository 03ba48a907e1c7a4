import asyncio

from temporalio.client import Client

from tests.conftest import InProcessWorkerFactory
from worker.inputs import INPUT_TYPES
from worker.seed import DEMO_RUNS, seed


async def test_seed_starts_every_workflow_type_once(
    temporal_client: Client, inprocess_worker_factory: InProcessWorkerFactory
) -> None:
    worker = inprocess_worker_factory(demo_latency_ms=5)
    assert {run.workflow for run in DEMO_RUNS} == set(INPUT_TYPES)
    started = await seed(temporal_client, worker.task_queue)
    assert started == [run.workflow_id for run in DEMO_RUNS]
    assert await seed(temporal_client, worker.task_queue) == []

    expected = {
        "demo-triage-retries": "COMPLETED",
        "demo-approval-approved": "COMPLETED",
        "demo-resilient-fallback": "COMPLETED",
        "demo-approval-waiting": "RUNNING",
        "demo-conversation-open": "RUNNING",
        # Its technical child fails once and is retried; the orchestrator completes.
        "demo-orchestrator": "COMPLETED",
    }
    statuses: dict[str, str] = {}
    for _ in range(300):
        for workflow_id in expected:
            description = await temporal_client.get_workflow_handle(workflow_id).describe()
            assert description.status is not None
            statuses[workflow_id] = description.status.name
        if statuses == expected:
            break
        await asyncio.sleep(0.1)
    assert statuses == expected
