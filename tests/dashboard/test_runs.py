import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client
from temporalio.client import Client as TemporalClient
from temporalio.service import RPCError

from dashboard import temporal

pytestmark = pytest.mark.django_db


def test_runs_page_shows_banner_when_temporal_is_unreachable(
    logged_in_client: Client, closed_temporal_address: str
) -> None:
    response = logged_in_client.get("/")
    assert response.status_code == 200
    body = response.content.decode()
    assert f"Temporal is unreachable at {closed_temporal_address}" in body
    assert "<table" not in body


def test_runs_page_lists_runs_escaped_with_temporal_ui_links(
    logged_in_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    async def fake_runs() -> list[temporal.RunSummary]:
        return [
            temporal.RunSummary(
                workflow_id="triage-<script>alert(1)</script>",
                run_id="run-1",
                workflow_type="TriageWorkflow",
                status="RUNNING",
                start_time=started,
                close_time=None,
            ),
            temporal.RunSummary(
                workflow_id="approval-7",
                run_id="run-2",
                workflow_type="ApprovalWorkflow",
                status="TIMED_OUT",
                start_time=started,
                close_time=started,
            ),
        ]

    monkeypatch.setattr(temporal, "list_recent_runs", fake_runs)
    body = logged_in_client.get("/").content.decode()
    assert "<script>alert(1)</script>" not in body
    assert "triage-&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "TriageWorkflow" in body
    assert "Timed out" in body
    assert "2026-01-02 03:04:05" in body
    assert "/namespaces/default/workflows/approval-7/run-2/history" in body


def test_htmx_refresh_returns_only_the_runs_panel(
    logged_in_client: Client, closed_temporal_address: str
) -> None:
    response = logged_in_client.get("/", headers={"HX-Request": "true"})
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="runs-panel"')
    assert "<html" not in body
    assert "Temporal is unreachable" in body


def test_empty_visibility_shows_empty_state(
    logged_in_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_runs() -> list[temporal.RunSummary]:
        return []

    monkeypatch.setattr(temporal, "list_recent_runs", no_runs)
    assert "No runs yet" in logged_in_client.get("/").content.decode()


def test_connect_config_defaults_and_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEMPORAL_ADDRESS", raising=False)
    monkeypatch.delenv("TEMPORAL_NAMESPACE", raising=False)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", "/nonexistent/temporal.toml")
    assert temporal.target() == ("localhost:7233", "default")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.internal:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "agents")
    assert temporal.target() == ("temporal.internal:7233", "agents")


async def test_list_recent_runs_raises_unavailable_quickly(closed_temporal_address: str) -> None:
    with pytest.raises(temporal.TemporalUnavailable) as excinfo:
        await temporal.list_recent_runs()
    assert excinfo.value.address == closed_temporal_address


def test_runs_page_lists_workflows_from_a_real_temporal_server(
    logged_in_client: Client, temporal_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    workflow_id = f"dashboard-probe-{uuid.uuid4().hex[:8]}"

    async def start_probe() -> None:
        # No worker polls this queue, so the run stays Running for the test.
        client = await TemporalClient.connect(temporal_server.address)
        for attempt in range(50):
            try:
                await client.start_workflow(
                    "DashboardProbe", id=workflow_id, task_queue=f"nobody-{workflow_id}"
                )
                return
            except RPCError:
                # A freshly started dev server may not have its namespace ready yet.
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)

    asyncio.run(start_probe())
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")

    deadline = time.monotonic() + 10
    body = ""
    while workflow_id not in body and time.monotonic() < deadline:
        response = logged_in_client.get("/")
        assert response.status_code == 200
        body = response.content.decode()
        time.sleep(0.2)
    assert workflow_id in body
    assert "DashboardProbe" in body
    assert "Running" in body
    assert "Temporal is unreachable" not in body


async def test_unknown_namespace_is_reported_not_raised(
    temporal_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", f"missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(temporal.TemporalUnavailable) as excinfo:
        await temporal.list_recent_runs()
    assert excinfo.value.address == temporal_server.address
    assert "not found" in excinfo.value.reason.lower()
