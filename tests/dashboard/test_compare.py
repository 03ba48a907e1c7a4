"""The compare page on real runs: a real worker (traced, exporting to the live
dashboard's receiver), a real Temporal dev server, the compare view read through
Django's test client.

- two triage runs that took different handoffs (billing and technical support);
- a run and its reset (reset before its first model call, then approved).

The demo model is deterministic, so what differs between the runs is known
exactly, and the page must mark exactly that.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client as TemporalClient

from dashboard import compare
from tests.conftest import TemporalServer, WorkerFactory, WorkerProcess, connect_client
from tracing.store import spans_for_run
from worker.inputs import AgentRunInput, ApprovalInput, Decision

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

BILLING = "I was charged twice on invoice INV-2231, please refund the duplicate payment."
TECHNICAL = "Our dashboard sync is stuck and the app shows errors since this morning."


@pytest.fixture
def traced_worker(
    worker_factory: WorkerFactory,
    live_server: Any,
    temporal_server: TemporalServer,
    monkeypatch: pytest.MonkeyPatch,
) -> WorkerProcess:
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
    cache.clear()
    return worker_factory(
        LOOMVIEW_TRACING="on",
        LOOMVIEW_OTLP_ENDPOINT=f"{live_server.url}/v1/traces",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )


@pytest.fixture
def ops(client: Client) -> Client:
    # A transactional test flushes the tables: the role groups a migration made are
    # gone (permissions come back with the flush's post_migrate).
    operators, _ = Group.objects.get_or_create(name="Operators")
    operators.permissions.add(Permission.objects.get(codename="operate_runs"))
    Group.objects.get_or_create(name="Viewers")
    User.objects.create_user("ops", password="x")
    call_command("set_role", "ops", "operator")
    client.force_login(User.objects.get(username="ops"))
    return client


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def settled(workflow_id: str, run_id: str, workflow_type: str) -> None:
    """Wait until the run's RunWorkflow span is stored and no more spans arrive."""
    deadline = time.monotonic() + 60
    count = -1
    while True:
        rows = spans_for_run(workflow_id, run_id)
        done = any(r["name"] == f"RunWorkflow:{workflow_type}" for r in rows)
        if done and len(rows) == count:
            return
        assert time.monotonic() < deadline, f"spans of {workflow_id} never settled"
        count = len(rows) if done else -1
        time.sleep(0.5)


async def triage(client: TemporalClient, prompt: str, task_queue: str) -> tuple[str, str]:
    handle = await client.start_workflow(
        "triage",
        AgentRunInput(prompt),
        id=f"cmp-triage-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
    )
    await handle.result()
    return handle.id, str(handle.result_run_id)


def compare_ctx(client: Client, a: tuple[str, str], b: tuple[str, str]) -> Any:
    response = client.get(compare.compare_url(a, b))
    assert response.status_code == 200, response.content[:2000]
    return response


def differing(rows: list[Any]) -> list[tuple[str, str, str]]:
    """(status, A label, B label) of every event row that is not the same."""
    out = []
    for row in rows:
        if isinstance(row, compare.Fold) or row.status == "same":
            continue
        out.append((row.status, row.a.label if row.a else "", row.b.label if row.b else ""))
    return out


def test_compare_two_triage_runs_that_took_different_handoffs(
    traced_worker: WorkerProcess, temporal_server: TemporalServer, ops: Client
) -> None:
    async def both() -> list[tuple[str, str]]:
        client = await connect_client(temporal_server.address)
        return list(
            await asyncio.gather(
                triage(client, BILLING, traced_worker.task_queue),
                triage(client, TECHNICAL, traced_worker.task_queue),
            )
        )

    billing, technical = run(both())
    for workflow_id, run_id in (billing, technical):
        settled(workflow_id, run_id, "triage")

    response = compare_ctx(ops, billing, technical)
    ctx = response.context
    page = response.content.decode()
    calls: list[compare.CallPair] = [c for c in ctx["calls"] if not isinstance(c, compare.Fold)]
    # Triage agent's call pairs with itself; the specialists' calls went elsewhere.
    assert [c.status for c in calls] == ["changed", "elsewhere", "elsewhere", "elsewhere"]
    first = calls[0]
    assert first.a is not None and first.b is not None
    assert first.a.agent == first.b.agent == "Triage agent"
    assert set(first.reasons) == {"input", "output", "tool calls"}
    assert first.inputs is not None
    # System prompt identical, the user's message differs.
    assert [(p.a.role, p.status) for p in first.inputs] == [
        ("system", "same"),
        ("user", "changed"),
    ]
    assert [(p.a.name, p.b.name, p.status) for p in first.tools or []] == [
        ("transfer_to_billing_specialist", "transfer_to_technical_support", "changed")
    ]
    assert [(c.a.agent, c.b.agent) for c in calls[1:] if c.a and c.b] == [
        ("Billing specialist", "Technical support")
    ] * 3
    # The handoff that went elsewhere is highlighted.
    handoffs = ctx["handoffs"]
    assert [(h.a.target, h.b.target, h.status) for h in handoffs] == [
        ("Billing specialist", "Technical support", "elsewhere")
    ]
    assert 'data-handoff-status="elsewhere"' in page
    # Totals: both made four model calls.
    totals = {row.label: row for row in ctx["totals"]}
    assert (totals["Model calls"].a, totals["Model calls"].b, totals["Model calls"].trend) == (
        "4",
        "4",
        "same",
    )
    # Events: the input and the result differ, technical support's tool activity is only in B.
    assert differing(ctx["events"]) == [
        ("changed", "WorkflowExecutionStarted triage", "WorkflowExecutionStarted triage"),
        ("only_b", "", "ActivityTaskScheduled check_service_status"),
        ("only_b", "", "ActivityTaskStarted check_service_status"),
        ("only_b", "", "ActivityTaskCompleted check_service_status"),
        ("changed", "WorkflowExecutionCompleted", "WorkflowExecutionCompleted"),
    ]
    # The user's words are escaped and diffed word by word on the server.
    assert "<del>" in page and "<ins>" in page


def wait_for_event(
    client: TemporalClient, workflow_id: str, run_id: str, event_type: EventType.ValueType
) -> list[Any]:
    async def go() -> list[Any]:
        deadline = time.monotonic() + 60
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        while True:
            events = list((await handle.fetch_history()).events)
            if any(e.event_type == event_type for e in events):
                return events
            assert time.monotonic() < deadline, f"no {EventType.Name(event_type)}"
            await asyncio.sleep(0.2)

    return run(go())


@pytest.mark.parametrize("before_call", [1, 2], ids=["before-call-1", "before-call-2"])
def test_compare_a_run_and_its_reset(
    traced_worker: WorkerProcess, temporal_server: TemporalServer, ops: Client, before_call: int
) -> None:
    """Reset before call 1, the reset run makes every call itself; before call 2, it
    inherits call 1 from the run it was reset from (its spans are that run's)."""
    from dashboard import actions

    async def client() -> TemporalClient:
        return await connect_client(temporal_server.address)

    temporal = run(client())
    workflow_id = f"cmp-approval-{uuid.uuid4().hex[:8]}"

    async def start() -> str:
        handle = await (await client()).start_workflow(
            "approval",
            ApprovalInput("Rotate the staging database credentials.", timeout_seconds=300),
            id=workflow_id,
            task_queue=traced_worker.task_queue,
        )
        return str(handle.first_execution_run_id)

    original = run(start())
    events = wait_for_event(temporal, workflow_id, original, EventType.EVENT_TYPE_TIMER_STARTED)
    point = actions.reset_points(events)[before_call - 1]
    assert point.label.startswith(f"Before model call {before_call}")
    response = ops.post(
        f"/runs/{workflow_id}/{original}/reset/",
        {"event_id": str(point.event_id), "reason": "compare test"},
    )
    assert response.status_code == 302, response.content[:500]
    reset = response["Location"].rstrip("/").rsplit("/", 1)[1]
    wait_for_event(temporal, workflow_id, reset, EventType.EVENT_TYPE_TIMER_STARTED)

    async def approve() -> None:
        handle = (await client()).get_workflow_handle(workflow_id, run_id=reset)
        await handle.signal("approve", Decision(comment="after the reset", by="ops"))
        await handle.result()

    run(approve())
    settled(workflow_id, reset, "approval")

    # The reset run's page offers the comparison with the run it was reset from.
    panel = ops.get(f"/runs/{workflow_id}/{reset}/compare/").content.decode()
    expected_url = compare.compare_url((workflow_id, original), (workflow_id, reset))
    assert "Compare with the run it was reset from" in panel
    assert expected_url.replace("&", "&amp;") in panel

    response = compare_ctx(ops, (workflow_id, original), (workflow_id, reset))
    ctx = response.context
    # Both drafted the same way (the reset ran call 1 again); only B was approved and executed.
    calls = ctx["calls"]
    assert [(c.status, c.a and c.a.label, c.b and c.b.label) for c in calls] == [
        ("same", "call 1 · Operations drafter", "call 1 · Operations drafter"),
        ("same", "call 2 · Operations drafter", "call 2 · Operations drafter"),
        ("only_b", None, "call 3 · Operations executor"),
    ]
    assert ctx["call_counts"] == {"same": 2, "only_b": 1}
    # Both sides of call 1 have their messages: the reset run's own, or the ones it inherited.
    first = calls[0]
    assert first.b is not None and not first.notes
    assert first.b.call.inherited_from == (original if before_call == 2 else "")
    assert differing(ctx["events"]) == [
        ("only_b", "", "WorkflowTaskFailed"),
        ("only_a", "WorkflowExecutionTerminated", ""),
        ("only_b", "", "WorkflowExecutionSignaled approve"),
        ("only_b", "", "TimerCanceled"),
        ("only_b", "", "ActivityTaskScheduled invoke_model_activity"),
        ("only_b", "", "ActivityTaskStarted invoke_model_activity"),
        ("only_b", "", "ActivityTaskCompleted invoke_model_activity"),
        ("only_b", "", "WorkflowExecutionCompleted"),
    ]
    reset_row = next(
        r for r in ctx["events"] if getattr(r, "b", None) and r.b.label == "WorkflowTaskFailed"
    )
    assert reset_row.b.detail == "reset workflow"
    totals = {row.label: row for row in ctx["totals"]}
    assert (totals["Model calls"].a, totals["Model calls"].b) == ("2", "3")
    assert totals["Model calls"].delta == "+1 (+50 %)"
    assert totals["Failed attempts"].delta == "±0"
