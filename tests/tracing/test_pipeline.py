"""The trace pipeline end to end: real worker → real OTLP exporter → real receiver → store.

For every bundled workflow, every model activity in the Temporal history is
matched to its spans, every span arrives with its parent, and the stored token
totals equal what the demo model reported.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from tests.conftest import ROOT, TemporalServer, WorkerProcess, new_worker_process
from tests.worker.history import model_calls
from tracing.correlation import correlate
from tracing.models import RunSummary, Span
from tracing.store import spans_for_run
from worker.inputs import (
    AgentRunInput,
    ApprovalInput,
    ApprovalStatus,
    ConversationInput,
    Decision,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

Rows = list[dict[str, Any]]
HANDLERS = ("HandleSignal:", "HandleQuery:", "HandleUpdate:", "ValidateUpdate:")


@pytest.fixture(scope="module")
def traced_worker(
    temporal_server: TemporalServer, live_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One traced worker process for the module: each test tells its runs apart by id."""
    worker = new_worker_process(
        temporal_server.address,
        tmp_path_factory.mktemp("traced-worker"),
        LOOMVIEW_TRACING="on",
        LOOMVIEW_OTLP_ENDPOINT=f"{live_server.url}/v1/traces",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    yield worker
    worker.stop()


@sync_to_async
def stored(workflow_id: str, run_id: str) -> Rows:
    # The test database is SQLite in memory with a shared cache: a read while
    # the live server's receiver writes fails at once ("table is locked")
    # instead of waiting as a file database would. Read again.
    for _ in range(50):
        try:
            return spans_for_run(workflow_id, run_id)
        except OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.05)
    return spans_for_run(workflow_id, run_id)


@sync_to_async
def summary(workflow_id: str, run_id: str) -> RunSummary:
    return RunSummary.objects.get(workflow_id=workflow_id, run_id=run_id)


async def wait_for_root(handle: WorkflowHandle, workflow_type: str, patience: float = 30) -> Rows:
    """Temporal's RunWorkflow span ends last; once stored and quiet, the run is complete."""
    assert handle.result_run_id is not None
    deadline = time.monotonic() + patience
    while True:
        rows = await stored(handle.id, handle.result_run_id)
        if any(r["name"] == f"RunWorkflow:{workflow_type}" for r in rows):
            break
        assert time.monotonic() < deadline, f"RunWorkflow:{workflow_type} never arrived"
        await asyncio.sleep(0.1)
    while True:
        await asyncio.sleep(0.5)
        again = await stored(handle.id, handle.result_run_id)
        if len(again) == len(rows):
            return again
        rows = again


def ancestors(row: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    chain = []
    while row["parent_span_id"] in by_id:
        row = by_id[row["parent_span_id"]]
        chain.append(row)
    return chain


def nearest(row: dict[str, Any], by_id: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(a for a in ancestors(row, by_id) if a["kind"] == kind)


async def drive_approval(handle: WorkflowHandle) -> None:
    for _ in range(400):
        if (await handle.query("status", result_type=ApprovalStatus)).state == "waiting":
            break
        await asyncio.sleep(0.05)
    await handle.signal("approve", Decision(comment="looks right", by="oncall"))


async def drive_conversation(handle: WorkflowHandle) -> None:
    await handle.execute_update("send_message", "And what about the weekend?", result_type=str)
    await handle.signal("end")


async def nothing(handle: WorkflowHandle) -> None:
    return None


WORKFLOWS: list[tuple[str, Any, Callable[[WorkflowHandle], Awaitable[None]], set[str]]] = [
    (
        "triage",
        AgentRunInput("The sync is stuck with errors", faults=["call=2:fail=1"]),
        nothing,
        {"trace", "custom", "agent", "generation", "function", "handoff", "guardrail"},
    ),
    (
        "approval",
        ApprovalInput("Rotate the API keys"),
        drive_approval,
        {"trace", "agent", "function", "custom"},
    ),
    (
        "resilient",
        AgentRunInput("Summarize churn"),
        nothing,
        {"trace", "agent", "generation", "custom"},
    ),
    (
        "parallel",
        AgentRunInput("Launch a self-serve plan?"),
        nothing,
        {"trace", "agent", "generation", "custom"},
    ),
    (
        "conversation",
        ConversationInput(prompt="Plan a day in Lisbon"),
        drive_conversation,
        {"trace", "agent", "generation"},
    ),
]


@pytest.mark.parametrize(
    ("workflow", "payload", "drive", "kinds"), WORKFLOWS, ids=[w[0] for w in WORKFLOWS]
)
async def test_every_model_call_is_matched_to_its_spans(
    temporal_client: Client,
    traced_worker: WorkerProcess,
    workflow: str,
    payload: Any,
    drive: Callable[[WorkflowHandle], Awaitable[None]],
    kinds: set[str],
) -> None:
    workflow_id = f"test-pipeline-{workflow}-{uuid.uuid4().hex[:6]}"
    handle = await temporal_client.start_workflow(
        workflow, payload, id=workflow_id, task_queue=traced_worker.task_queue
    )
    await drive(handle)
    await handle.result()
    rows = await wait_for_root(handle, workflow)
    by_id = {r["span_id"]: r for r in rows}

    # Every span type the run produces is stored, each under its parent.
    assert kinds <= {r["kind"] for r in rows}
    assert Counter((r["trace_id"], r["span_id"]) for r in rows).most_common(1)[0][1] == 1
    roots = [r for r in rows if r["parent_span_id"] not in by_id]
    run_root = next(r for r in roots if r["name"] == f"RunWorkflow:{workflow}")
    # Signals, queries and updates from an uninstrumented client start traces of their own.
    assert all(r is run_root or r["name"].startswith(HANDLERS) for r in roots)
    assert {r["trace_id"] for r in rows if r["kind"] != "temporal"} == {run_root["trace_id"]}
    for row in rows:
        if row["kind"] == "trace":
            assert by_id[row["parent_span_id"]]["kind"] == "temporal"
        elif row["kind"] in ("agent", "function", "handoff", "guardrail"):
            assert any(a["kind"] == "trace" for a in ancestors(row, by_id)), row["name"]
        if row["kind"] in ("function", "handoff", "guardrail"):
            assert nearest(row, by_id, "agent")["agent"], row["name"]

    # Every model activity in the history ⇄ one generation span per attempt, inside
    # the Temporal attempt span of the same activity, under the agent that called it.
    history = await handle.fetch_history()
    summaries = {
        e.event_id: e.user_metadata.summary.data.decode().strip('"')
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    calls = await model_calls(handle)
    assert calls, "the run made no model call"
    scheduled_agents = [
        summaries[e.event_id]
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "invoke_model_activity"
    ]
    for call, agent_name in zip(calls, scheduled_agents, strict=True):
        last_attempt = call.attempts[-1] if call.attempts else 1
        for attempt in range(1, last_attempt + 1):
            generations = [
                r
                for r in rows
                if r["kind"] == "generation"
                and r["activity_id"] == call.activity_id
                and r["attempt"] == attempt
            ]
            assert len(generations) == 1, (call.activity_id, attempt)
            generation = generations[0]
            assert nearest(generation, by_id, "agent")["agent"] == agent_name
            attempt_spans = [
                r
                for r in rows
                if r["name"] == "RunActivity:invoke_model_activity"
                and r["activity_id"] == call.activity_id
                and r["attempt"] == attempt
            ]
            assert len(attempt_spans) == 1
            window = attempt_spans[0]
            assert (
                window["start_ns"]
                <= generation["start_ns"]
                <= generation["end_ns"]
                <= window["end_ns"]
            )
            failed = attempt < last_attempt or call.outcome == "failed"
            assert (generation["status_code"] == 2) == failed

    # The correlation sees every model call of the history matched with its spans.
    story = correlate(list(history.events), rows)
    assert [c.activity_id for c in story.model_calls] == [c.activity_id for c in calls]
    assert all(c.matched for c in story.model_calls)

    # Token totals: the store, its run summary and the demo model agree.
    reported = [
        row
        for row in traced_worker.invocations()
        if row["workflow_id"] == workflow_id and row["outcome"] == "ok"
    ]
    tokens_in = sum(int(str(r["input_tokens"])) for r in reported)
    tokens_out = sum(int(str(r["output_tokens"])) for r in reported)
    assert tokens_in > 0
    assert sum(r["tokens_in"] or 0 for r in rows if r["kind"] == "generation") == tokens_in
    assert sum(r["tokens_out"] or 0 for r in rows if r["kind"] == "generation") == tokens_out
    assert handle.result_run_id is not None
    run = await summary(workflow_id, handle.result_run_id)
    assert (run.tokens_in, run.tokens_out) == (tokens_in, tokens_out)
    assert run.model_calls == len(calls)
    assert run.attempts == sum(c.attempts[-1] if c.attempts else 1 for c in calls)


async def test_secrets_never_reach_the_store(
    temporal_client: Client, traced_worker: WorkerProcess
) -> None:
    secret = "sk-proj-" + "Zy9" * 12
    handle = await temporal_client.start_workflow(
        "resilient",
        AgentRunInput(f"Is my key {secret} still valid?", faults=[]),
        id=f"test-pipeline-secret-{uuid.uuid4().hex[:6]}",
        task_queue=traced_worker.task_queue,
    )
    await handle.result()
    rows = await wait_for_root(handle, "resilient")
    generation = next(r for r in rows if r["kind"] == "generation")
    assert "[REDACTED]" in generation["attributes"]["gen_ai.input.messages"]
    dump = await sync_to_async(lambda: str(list(Span.objects.values_list("data", flat=True))))()
    assert secret not in dump


async def test_stock_instrumented_app_is_correlated(
    temporal_server: TemporalServer, live_server: Any
) -> None:
    """TracingInterceptor + OpenInference only: spans still tie to the run and its model calls."""
    workflow_id = f"test-stock-{uuid.uuid4().hex[:6]}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.tracing.stock_app",
        temporal_server.address,
        f"{live_server.url}/v1/traces",
        workflow_id,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, output.decode()

    client = await Client.connect(temporal_server.address)
    handle = client.get_workflow_handle(workflow_id)
    run_id = (await handle.describe()).run_id
    rows = await stored(workflow_id, run_id)
    by_kind = Counter(r["kind"] for r in rows)
    # OpenInference's spans carry no Temporal ids; they are tied to the run through ancestors.
    # OpenInference labels the trace root an AGENT and a handoff a TOOL: they are read as
    # the trace root and a handoff.
    assert by_kind["agent"] == 2 and by_kind["generation"] == 4 and by_kind["function"] == 2
    assert by_kind["handoff"] == 1 and by_kind["trace"] == 1
    assert all(r["service_name"] == "stock-app" for r in rows)
    history = await handle.fetch_history()
    story = correlate(list(history.events), rows)
    assert [c.activity_id for c in story.model_calls] == ["1", "2", "3", "4"]
    assert all(c.matched for c in story.model_calls)
    assert all((c.tokens_in or 0) > 0 for c in story.model_calls)
    assert [c.agent for c in story.model_calls] == [
        "Triage agent",
        "Billing specialist",
        "Billing specialist",
        "Billing specialist",
    ]
