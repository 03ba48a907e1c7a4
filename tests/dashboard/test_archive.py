"""Histories that outlive Temporal: a closed run deleted from Temporal still shows whole."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.core.cache import cache
from django.test import Client
from opentelemetry.trace import Tracer
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from dashboard import maintenance, run_page
from tests.conftest import TEMPORAL_BIN, InProcessWorker, TemporalServer, connect_client
from tests.tracing.spans import agent_run, protobuf_body, record
from tracing import archive, otlp, store
from tracing.models import ArchivedHistory
from worker.inputs import AgentRunInput

# Not transactional: async_to_sync runs the page's database work in this thread,
# inside the test's transaction (a transactional test here would flush the
# database ahead of test_compare's serialized rollback).
pytestmark = [pytest.mark.django_db, pytest.mark.timeout(120)]


@pytest.fixture
def on_temporal(temporal_server: TemporalServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
    cache.clear()
    return temporal_server.address


def finished_triage(address: str, worker: InProcessWorker) -> tuple[str, str]:
    workflow_id = f"archive-{uuid.uuid4().hex[:8]}"

    async def go() -> str:
        client = await connect_client(address)
        handle = await client.start_workflow(
            "triage", AgentRunInput("Export button greyed out"), id=workflow_id,
            task_queue=worker.task_queue,
        )  # fmt: skip
        await handle.result()
        description = await handle.describe()
        assert description.status == WorkflowExecutionStatus.COMPLETED
        return str(handle.result_run_id)

    return workflow_id, asyncio.run(go())


def ingest_spans(workflow_id: str, run_id: str) -> None:
    def build(tracer: Tracer) -> None:
        agent_run(tracer, workflow_id, run_id, activity_id="1", failed_attempts=1)

    store.ingest(otlp.decode(protobuf_body(record(build)), otlp.PROTOBUF).rows)


def delete_from_temporal(address: str, workflow_id: str, run_id: str) -> None:
    deleted = subprocess.run(
        [str(TEMPORAL_BIN), "workflow", "delete", "--address", address, "--namespace", "default",
         "--workflow-id", workflow_id, "--run-id", run_id, "--yes"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert deleted.returncode == 0, deleted.stderr + deleted.stdout

    async def gone() -> bool:
        client = await connect_client(address)
        try:
            await client.get_workflow_handle(workflow_id, run_id=run_id).describe()
        except RPCError:
            return True
        return False

    deadline = time.monotonic() + 60
    while not asyncio.run(gone()):
        assert time.monotonic() < deadline, "Temporal never deleted the run"
        time.sleep(0.3)


def page_facts(workflow_id: str, run_id: str) -> dict[str, Any]:
    cache.clear()
    loaded = async_to_sync(run_page.load)(workflow_id, run_id)
    ctx = run_page.build(workflow_id, run_id, loaded)
    return {
        "archived": ctx["archived"],
        "status": ctx["header"].status,
        "events": [(e.event_id, e.event_type) for e in loaded.events],
        "calls": [
            (c.activity_id, len(c.attempts), c.outcome, c.matched, sorted(c.span_ids))
            for c in ctx["calls"]
        ],
        "compact": len(ctx["compact"]),
        "input": ctx["input_json"],
        "result": ctx["result_json"],
    }


def test_a_run_deleted_from_temporal_still_shows_its_page_and_history(
    shared_worker: InProcessWorker, on_temporal: str, admin_client: Client
) -> None:
    workflow_id, run_id = finished_triage(on_temporal, shared_worker)
    ingest_spans(workflow_id, run_id)
    live = page_facts(workflow_id, run_id)
    assert not live["archived"] and live["status"] == "COMPLETED"
    assert live["calls"] and any(call[3] for call in live["calls"])
    history_before = json.loads(
        admin_client.get(f"/runs/{workflow_id}/{run_id}/history.json").content
    )

    # The background sweep archives it, whoever opens the page (nobody, here).
    ArchivedHistory.objects.all().delete()
    swept = async_to_sync(maintenance.run_archive)(force=True)
    assert swept is not None and swept.archived >= 1
    row = ArchivedHistory.objects.get(workflow_id=workflow_id, run_id=run_id)
    assert (
        row.event_count == len(live["events"]) and row.close_event == "WORKFLOW_EXECUTION_COMPLETED"
    )
    assert len(bytes(row.history)) < row.size_bytes  # compressed
    # A second sweep finds nothing new.
    again = async_to_sync(maintenance.run_archive)(force=True)
    assert again is not None and again.archived == 0

    delete_from_temporal(on_temporal, workflow_id, run_id)
    archived = page_facts(workflow_id, run_id)
    assert archived["archived"]
    assert {k: v for k, v in archived.items() if k != "archived"} == {
        k: v for k, v in live.items() if k != "archived"
    }

    page = admin_client.get(f"/runs/{workflow_id}/{run_id}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "archived in Loomview" in html and "data-archived" in html
    assert "Temporal has no history for this run" not in html
    full = admin_client.get(f"/runs/{workflow_id}/{run_id}/?history=full").content.decode()
    assert "WorkflowExecutionCompleted" in full or "WORKFLOW_EXECUTION_COMPLETED" in full
    history_after = admin_client.get(f"/runs/{workflow_id}/{run_id}/history.json")
    assert history_after.status_code == 200
    assert json.loads(history_after.content) == history_before
    api = admin_client.get(f"/api/runs/{workflow_id}/{run_id}/")
    assert api.status_code == 200 and api.json()["archived"] is True


def test_a_closed_run_opened_is_archived_on_the_spot(
    shared_worker: InProcessWorker, on_temporal: str
) -> None:
    workflow_id, run_id = finished_triage(on_temporal, shared_worker)
    assert archive.load(workflow_id, run_id) is None
    facts = page_facts(workflow_id, run_id)
    stored = archive.load(workflow_id, run_id)
    assert stored is not None
    assert [(e.event_id, e.event_type) for e in stored.events] == facts["events"]


def test_an_open_run_is_never_archived(shared_worker: InProcessWorker, on_temporal: str) -> None:
    from worker.inputs import ApprovalInput

    workflow_id = f"archive-open-{uuid.uuid4().hex[:8]}"

    async def go() -> str:
        client = await connect_client(on_temporal)
        handle = await client.start_workflow(
            "approval", ApprovalInput("Rotate the keys.", timeout_seconds=300), id=workflow_id,
            task_queue=shared_worker.task_queue,
        )  # fmt: skip
        return str(handle.first_execution_run_id)

    run_id = asyncio.run(go())
    ingest_spans(workflow_id, run_id)
    page_facts(workflow_id, run_id)
    assert async_to_sync(maintenance.run_archive)(force=True) is not None
    assert archive.load(workflow_id, run_id) is None

    async def stop() -> None:
        client = await connect_client(on_temporal)
        await client.get_workflow_handle(workflow_id, run_id=run_id).terminate("test over")

    asyncio.run(stop())
