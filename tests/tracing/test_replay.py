"""Replay never duplicates telemetry: a run's spans are one set, however its workflow was run."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Replayer

from tests.conftest import WorkerFactory, WorkerProcess
from tests.tracing.collector import CollectedSpan, Collector, running_collector
from worker.inputs import (
    AgentRunInput,
    AgentRunResult,
    ApprovalInput,
    ApprovalResult,
    ApprovalStatus,
    Decision,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def collector() -> Iterator[Collector]:
    with running_collector() as running:
        yield running


def traced(worker_factory: WorkerFactory, collector: Collector, **settings: str) -> WorkerProcess:
    return worker_factory(
        LOOMVIEW_TRACING="on",
        LOOMVIEW_OTLP_ENDPOINT=collector.url,
        OTEL_BSP_SCHEDULE_DELAY="100",
        **settings,
    )


def shape(spans: list[CollectedSpan]) -> Counter[tuple[str, str, str]]:
    """What a run's spans are, independent of ids and timing: (name, kind, parent name)."""
    by_id = {s.span_id: s for s in spans}
    return Counter(
        (s.name, s.kind, by_id[s.parent_span_id].name if s.parent_span_id in by_id else "∅")
        for s in spans
    )


def assert_no_duplicates(spans: list[CollectedSpan]) -> None:
    ids = Counter((s.trace_id, s.span_id) for s in spans)
    duplicated = {key: n for key, n in ids.items() if n > 1}
    assert not duplicated, f"spans delivered more than once: {duplicated}"


async def run_triage(
    client: Client, worker: WorkerProcess, collector: Collector
) -> tuple[str, list[CollectedSpan]]:
    workflow_id = f"test-replay-{uuid.uuid4().hex[:8]}"
    result = await client.execute_workflow(
        "triage",
        AgentRunInput("Our sync is stuck and the app shows errors."),
        id=workflow_id,
        task_queue=worker.task_queue,
        result_type=AgentRunResult,
    )
    assert result.answered_by == "Technical support"
    await asyncio.to_thread(
        collector.wait_until,
        lambda: any(s.name == "RunWorkflow:triage" for s in collector.for_workflow(workflow_id)),
    )
    return workflow_id, collector.for_workflow(workflow_id)


async def test_cached_and_uncached_workers_emit_the_same_spans_once(
    temporal_client: Client, worker_factory: WorkerFactory, collector: Collector
) -> None:
    cached = traced(worker_factory, collector)
    _, reference = await run_triage(temporal_client, cached, collector)
    cached.stop()
    uncached = traced(worker_factory, collector, LOOMVIEW_MAX_CACHED_WORKFLOWS="0")
    _, replayed = await run_triage(temporal_client, uncached, collector)

    assert_no_duplicates(reference)
    assert_no_duplicates(replayed)
    # 4 model calls, each an attempt span + generation; agents, tools, handoff, trace root.
    assert len(reference) >= 30
    assert len(replayed) == len(reference)
    assert shape(replayed) == shape(reference)


async def test_replaying_a_history_emits_nothing(
    temporal_client: Client, worker_factory: WorkerFactory, collector: Collector
) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from temporalio.openai_agents import OpenAIAgentsPlugin

    from telemetry.otel import configure_tracing
    from worker.workflows import WORKFLOWS

    worker = traced(worker_factory, collector)
    workflow_id, spans = await run_triage(temporal_client, worker, collector)
    assert spans
    history = await temporal_client.get_workflow_handle(workflow_id).fetch_history()

    memory = InMemorySpanExporter()
    tracing = configure_tracing(exporters=[memory], schedule_delay_ms=10)
    replayer = Replayer(workflows=WORKFLOWS, plugins=[*tracing.plugins, OpenAIAgentsPlugin()])
    await replayer.replay_workflow(history)
    tracing.processor.force_flush()
    agent_spans = [
        s for s in memory.get_finished_spans() if "agents.span.type" in (s.attributes or {})
    ]
    assert agent_spans == []


async def _wait_waiting(handle: WorkflowHandle) -> None:
    for _ in range(400):
        if (await handle.query("status", result_type=ApprovalStatus)).state == "waiting":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the approval never started waiting")


async def _approval_run(
    client: Client, factory: WorkerFactory, collector: Collector, kill_while_waiting: bool
) -> list[CollectedSpan]:
    worker = traced(factory, collector)
    workflow_id = f"test-replay-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        "approval",
        ApprovalInput("Rotate the database credentials."),
        id=workflow_id,
        task_queue=worker.task_queue,
        result_type=ApprovalResult,
    )
    await _wait_waiting(handle)
    if kill_while_waiting:
        # What the worker emitted before it died has reached the collector; then SIGKILL.
        await asyncio.to_thread(
            collector.wait_until,
            lambda: sum(s.kind == "generation" for s in collector.for_workflow(workflow_id)) == 2,
        )
        worker.kill()
        traced(factory, collector, LOOMVIEW_TASK_QUEUE=worker.task_queue)
    await handle.signal("approve", Decision(comment="go", by="ops"))
    assert (await handle.result()).outcome == "approved"
    await asyncio.to_thread(
        collector.wait_until,
        lambda: any(s.name == "RunWorkflow:approval" for s in collector.for_workflow(workflow_id)),
    )
    # The test's own status polling makes a varying number of query spans: leave them out.
    return [s for s in collector.for_workflow(workflow_id) if not s.name.startswith("HandleQuery:")]


async def test_a_run_resumed_after_sigkill_emits_each_span_once(
    temporal_client: Client, worker_factory: WorkerFactory, collector: Collector
) -> None:
    reference = await _approval_run(
        temporal_client, worker_factory, collector, kill_while_waiting=False
    )
    resumed = await _approval_run(
        temporal_client, worker_factory, collector, kill_while_waiting=True
    )
    assert_no_duplicates(reference)
    assert_no_duplicates(resumed)
    assert len(resumed) == len(reference)
    assert shape(resumed) == shape(reference)
    # Spans came from both workers, and the trace root was ended by the second one.
    assert {s.name for s in resumed} >= {"Change approval", "invoke_agent Operations executor"}
