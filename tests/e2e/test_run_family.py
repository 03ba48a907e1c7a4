"""Related runs and trace health in Chromium at 1440 px: a reset run that inherits its
first model call, an orchestrator with its children rolled up, a child linking back,
a run whose spans a broken app sent (orphans, a cycle, a duplicate id), a chain of
continue-as-new runs and a terminated run."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, TraceFlags
from playwright.sync_api import Browser, Page, expect
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest

from tests.conftest import TemporalServer, WorkerProcess, connect_client
from tests.e2e.conftest import LiveDashboard, running_dashboard, watch_problems
from tests.e2e.story_stack import in_thread, module_worker, signed_in, wait_until
from worker.inputs import AgentRunInput, AgentRunResult, ConversationInput, OrchestratorResult

pytestmark = pytest.mark.timeout(300)
S = 1_000_000_000


@pytest.fixture(scope="module")
def stack(
    temporal_server: TemporalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveDashboard]:
    with running_dashboard(tmp_path_factory.mktemp("e2e-family"), temporal_server.address) as live:
        yield live


@pytest.fixture(scope="module")
def worker(
    temporal_server: TemporalServer, stack: LiveDashboard, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    yield from module_worker(
        temporal_server, stack, tmp_path_factory.mktemp("worker"), LOOMVIEW_DEMO_LATENCY_MS="20"
    )


def story(page: Page, stack: LiveDashboard, workflow_id: str, run_id: str) -> dict[str, Any]:
    response = page.request.get(f"{stack.url}/api/runs/{workflow_id}/{run_id}/")
    assert response.ok, response.status
    data: dict[str, Any] = response.json()
    return data


def settled(page: Page, stack: LiveDashboard, workflow_id: str, run_id: str) -> bool:
    data = story(page, stack, workflow_id, run_id)
    calls = data["model_calls"]
    return (
        data["status"] != "RUNNING"
        and bool(calls)
        and all(c["matched"] for c in calls)
        and any(s["name"].startswith("RunWorkflow:") for s in data["spans"])
    )


def reset_before_call_2(temporal_server: TemporalServer, workflow_id: str, run_id: str) -> str:
    """What `temporal workflow reset` does: to the task that scheduled model call 2."""

    async def go() -> str:
        client = await connect_client(temporal_server.address)
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        calls = [
            e.activity_task_scheduled_event_attributes
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and e.activity_task_scheduled_event_attributes.activity_type.name
            == "invoke_model_activity"
        ]
        response = await client.workflow_service.reset_workflow_execution(
            ResetWorkflowExecutionRequest(
                namespace="default",
                workflow_execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
                reason="e2e: the specialist again",
                workflow_task_finish_event_id=calls[1].workflow_task_completed_event_id,
                request_id=str(uuid.uuid4()),
            )
        )
        await client.get_workflow_handle(workflow_id, run_id=response.run_id).result()
        return str(response.run_id)

    return in_thread(go)


def run_to_end(
    temporal_server: TemporalServer, worker: WorkerProcess, kind: str, arg: Any, result: type
) -> tuple[str, str, Any]:
    workflow_id = f"e2e-{kind}-{uuid.uuid4().hex[:6]}"

    async def go() -> tuple[str, Any]:
        client = await connect_client(temporal_server.address)
        handle = await client.start_workflow(
            kind, arg, id=workflow_id, task_queue=worker.task_queue, result_type=result
        )
        return str(handle.first_execution_run_id), await handle.result()

    run_id, value = in_thread(go)
    return workflow_id, run_id, value


def broken_spans(stack: LiveDashboard, workflow_id: str, run_id: str) -> None:
    """A broken app's spans, through the real OTLP/HTTP exporter."""
    resource = Resource.create({"service.name": "broken-app"})
    ids = {"temporal.workflow.id": workflow_id, "temporal.run.id": run_id}
    now = time.time_ns()

    def span(name: str, span_id: int, parent: int | None, start: int, end: int) -> ReadableSpan:
        def ctx(value: int) -> SpanContext:
            return SpanContext(0xF00D, value, is_remote=False, trace_flags=TraceFlags(1))

        return ReadableSpan(
            name=name, context=ctx(span_id), parent=ctx(parent) if parent else None,
            resource=resource, attributes=ids, start_time=start, end_time=end,
        )  # fmt: skip

    exporter = OTLPSpanExporter(endpoint=f"{stack.url}/v1/traces", timeout=10)
    batches = [
        [
            span("RunWorkflow:broken", 0x1, None, now - 3 * S, now),
            span("orphan: parent never sent", 0x2, 0xDEAD, now - 2 * S, now - S),
            span("cycle a", 0x3, 0x4, now - 2 * S, now - S),
            span("cycle b", 0x4, 0x3, now - 2 * S, now - S),
            span("tool call", 0x5, 0x1, now - 2 * S, now - S),
        ],
        [span("tool call, sent again changed", 0x5, 0x1, now - S, now - S // 2)],
    ]
    for batch in batches:
        assert exporter.export(batch) == SpanExportResult.SUCCESS
    exporter.shutdown()


def test_related_runs_and_trace_health_at_1440(
    stack: LiveDashboard,
    worker: WorkerProcess,
    temporal_server: TemporalServer,
    chromium: Browser,
    results_dir: Path,
) -> None:
    context, page = signed_in(chromium, stack)
    problems = watch_problems(page)

    # A reset run: model call 1 (retried once) is inherited from the run it was reset from.
    triage_id, first, _ = run_to_end(
        temporal_server,
        worker,
        "triage",
        AgentRunInput("The sync is stuck with errors", faults=["call=1:fail=1"]),
        AgentRunResult,
    )
    wait_until(lambda: settled(page, stack, triage_id, first), 30, "the first run's spans")
    second = reset_before_call_2(temporal_server, triage_id, first)
    wait_until(lambda: settled(page, stack, triage_id, second), 30, "the reset run's spans")
    page.goto(f"{stack.url}/runs/{triage_id}/{second}/")
    family = page.locator("#run-family")
    expect(family.locator('[data-family="reset-from"]')).to_contain_text("Reset from")
    expect(family).to_contain_text("made before the reset point")
    expect(page.locator("rect.tl-attempt.inherited")).to_have_count(2)
    expect(page.locator('#run-health[data-health="ok"]')).to_be_visible()
    expect(page.locator('#run-header [data-total="model_calls"]')).to_have_text("4")
    inherited = page.locator("#run-trace .span-row.call-row.inherited")
    expect(inherited).to_have_count(1)
    expect(inherited).to_contain_text("call 1 · attempt 2/2 · inherited")
    page.locator("#run-family").scroll_into_view_if_needed()
    page.screenshot(path=str(results_dir / "family-reset-run.png"), full_page=True)
    inherited.click()
    expect(page.locator("#span-panel [data-call-inherited]")).to_contain_text(first[:8])
    page.locator("#span-panel").screenshot(path=str(results_dir / "family-inherited-call.png"))
    page.locator("#run-trace").screenshot(path=str(results_dir / "family-reset-trace.png"))

    # An orchestrator: its children (one retried) rolled up, each linking back.
    parent_id, parent_run, result = run_to_end(
        temporal_server,
        worker,
        "orchestrator",
        AgentRunInput("Double charged on INV-88 and the sync fails since Monday"),
        OrchestratorResult,
    )
    wait_until(lambda: settled(page, stack, parent_id, parent_run), 30, "the parent's spans")
    page.goto(f"{stack.url}/runs/{parent_id}/{parent_run}/")
    children = page.locator('#run-family [data-family="children"]')
    expect(children.locator("tbody tr")).to_have_count(2)
    technical = children.locator(f'tr[data-child="{parent_id}-technical"]')
    expect(technical.locator("td").nth(2)).to_have_text("2")  # two runs: failed, retried
    expect(page.locator('#run-header [data-total="model_calls"]')).to_have_text(
        str(result.model_calls)
    )
    page.screenshot(path=str(results_dir / "family-orchestrator.png"), full_page=True)
    technical.locator("a").click()
    expect(page.locator('#run-family [data-family="parent"]')).to_contain_text(parent_id)
    page.screenshot(path=str(results_dir / "family-child.png"), full_page=True)

    # A broken app's run: the health panel names each problem and how to fix it.
    broken_spans(stack, "e2e-broken-app", "run-1")
    page.goto(f"{stack.url}/runs/e2e-broken-app/run-1/")
    panel = page.locator("#run-health")
    expect(panel).to_have_attribute("data-health", "problems")
    for key in ("orphans", "cycles", "duplicates"):
        expect(panel.locator(f'[data-problem="{key}"]')).to_be_visible()
    panel.locator('[data-problem="duplicates"] summary').click()
    expect(panel.locator('[data-problem="duplicates"]')).to_contain_text("How to fix it.")
    panel.scroll_into_view_if_needed()
    panel.screenshot(path=str(results_dir / "health-panel-problems.png"))
    page.screenshot(path=str(results_dir / "health-broken-run.png"), full_page=True)

    # The runs list: flagged, filterable, the parent's children apart from its columns.
    page.goto(f"{stack.url}/?health=problems")
    rows = page.locator("#runs-rows tr.run-row")
    expect(rows.filter(has_text="e2e-broken-app")).to_have_count(1)
    expect(rows.filter(has_text=parent_id)).to_have_count(0)
    page.goto(f"{stack.url}/")
    expect(rows.filter(has_text="e2e-broken-app").locator(".tag-health")).to_be_visible()
    parent_row = rows.filter(has_text=parent_id).filter(has=page.locator(".row-children"))
    expect(parent_row.locator(".row-children")).to_contain_text("2 children")
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], widths
    page.screenshot(path=str(results_dir / "runs-list-family-health.png"), full_page=True)
    assert problems == []
    context.close()


def test_a_chain_and_a_terminated_run_at_1440(
    stack: LiveDashboard,
    worker: WorkerProcess,
    temporal_server: TemporalServer,
    chromium: Browser,
    results_dir: Path,
) -> None:
    context, page = signed_in(chromium, stack)
    problems = watch_problems(page)
    workflow_id = f"e2e-chat-{uuid.uuid4().hex[:6]}"

    async def chat() -> tuple[str, str]:
        """Two turns per run: the second message continues the chat as a new run, which
        answers the third and is terminated while it waits for the fourth."""
        client = await connect_client(temporal_server.address)
        handle = await client.start_workflow(
            "conversation", ConversationInput(prompt="Lisbon or Porto?", max_turns_per_run=2),
            id=workflow_id, task_queue=worker.task_queue,
        )  # fmt: skip
        first = str(handle.first_execution_run_id)
        await handle.execute_update("send_message", "Which month?", result_type=str)
        latest = client.get_workflow_handle(workflow_id)
        deadline = time.monotonic() + 60
        while (await latest.describe()).run_id == first:
            assert time.monotonic() < deadline, "the chat never continued as new"
            await asyncio.sleep(0.2)
        await latest.execute_update("send_message", "And for food?", result_type=str)
        second = (await latest.describe()).run_id
        await client.get_workflow_handle(workflow_id, run_id=second).terminate("e2e: done")
        return first, str(second)

    first, second = in_thread(chat)

    def root_stored() -> bool:
        spans = story(page, stack, workflow_id, first)["spans"]
        return any(s["name"].startswith("RunWorkflow:") for s in spans)

    def terminated_settled() -> bool:
        data = story(page, stack, workflow_id, second)
        return data["status"] == "TERMINATED" and data["health"]["under_unended_parents"] > 0

    wait_until(root_stored, 30, "the first run's spans")
    wait_until(terminated_settled, 30, "the terminated run's spans")
    page.goto(f"{stack.url}/runs/{workflow_id}/{first}/")
    family = page.locator("#run-family")
    expect(family.locator('[data-link="next"]')).to_be_visible()
    expect(family.locator("[data-chain-totals]")).to_contain_text("2 runs")
    family.scroll_into_view_if_needed()
    page.screenshot(path=str(results_dir / "family-chain.png"), full_page=True)

    page.goto(f"{stack.url}/runs/{workflow_id}/{second}/")
    panel = page.locator("#run-health")
    expect(panel).to_have_attribute("data-health", "ok")
    expect(panel.locator('[data-health-stat="under_unended_parents"]')).to_have_text(
        re.compile(r"^[1-9]")
    )
    panel.scroll_into_view_if_needed()
    panel.screenshot(path=str(results_dir / "health-terminated-run.png"))
    page.screenshot(path=str(results_dir / "family-terminated-run.png"), full_page=True)

    # In the runs list at 1440 px, the longest status ("Continued as new") fits its cell.
    page.goto(f"{stack.url}/?q={workflow_id}")
    badges = page.locator("#runs-rows tr.run-row .status")
    expect(badges.first).to_be_visible()
    labels = badges.all_inner_texts()
    assert any("Continued as new" in label for label in labels), labels
    fits = page.evaluate(
        """() => [...document.querySelectorAll("#runs-rows tr.run-row .status")].map(b => {
            const cell = b.closest("td").getBoundingClientRect();
            const box = b.getBoundingClientRect();
            const fits = box.right <= cell.right + 0.5 && b.scrollWidth <= b.clientWidth + 1;
            return [b.innerText, fits, Math.round(box.width), Math.round(cell.width)]; })"""
    )
    assert fits and all(fit for _, fit, _, _ in fits), fits
    page.locator("#runs-rows").screenshot(path=str(results_dir / "runs-list-chain.png"))
    assert problems == []
    context.close()
