"""Runs two small workflows under Temporal's OpenTelemetry plugin, stock or lean,
and prints their spans, normalized (see test_temporal_interceptor.py).

``python -m tests.telemetry.interceptor_app stock|lean ADDRESS``
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from datetime import timedelta
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.contrib.opentelemetry import OpenTelemetryPlugin
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from telemetry.run_ids import run_scoped_tracer_provider
from telemetry.temporal_interceptor import LeanOpenTelemetryPlugin


@activity.defn
async def shout(text: str) -> str:
    return text.upper()


@activity.defn
async def refuse(text: str) -> str:
    raise ApplicationError(f"no {text}", non_retryable=True)


@workflow.defn
class Calls:
    @workflow.run
    async def run(self, text: str) -> str:
        loud = await workflow.execute_activity(
            shout, text, start_to_close_timeout=timedelta(seconds=10)
        )
        with contextlib.suppress(ActivityError):
            await workflow.execute_activity(
                refuse,
                text,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        return loud


@workflow.defn
class Fails:
    @workflow.run
    async def run(self, text: str) -> str:
        raise ApplicationError(f"failed on {text}", non_retryable=True)


def normalized(spans: Any, ids: dict[str, str]) -> list[dict[str, Any]]:
    names = {span.context.span_id: span.name for span in spans}

    def plain(value: Any) -> Any:
        return ids.get(value, value) if isinstance(value, str) else value

    return sorted(
        (
            {
                "name": span.name,
                "kind": span.kind.name,
                "scope": span.instrumentation_scope.name,
                "parent": names.get(span.parent.span_id) if span.parent else None,
                "remote_parent": bool(span.parent and span.parent.is_remote),
                "attributes": {k: plain(v) for k, v in sorted(span.attributes.items())},
                "status": [span.status.status_code.name, span.status.description],
                "events": [
                    [event.name, sorted(k for k in event.attributes)] for event in span.events
                ],
            }
            for span in spans
        ),
        key=json.dumps,
    )


async def main(mode: str, address: str) -> None:
    memory = InMemorySpanExporter()
    provider = run_scoped_tracer_provider(Resource.create({"service.name": "interceptor"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    plugin = (
        LeanOpenTelemetryPlugin(add_temporal_spans=True)
        if mode == "lean"
        else OpenTelemetryPlugin(add_temporal_spans=True)
    )
    client = await Client.connect(address, plugins=[plugin])
    queue = f"interceptor-{mode}-{uuid.uuid4().hex[:6]}"
    ids: dict[str, str] = {}
    async with Worker(
        client,
        task_queue=queue,
        workflows=[Calls, Fails],
        activities=[shout, refuse],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        calls = await client.start_workflow(Calls.run, "hi", id=f"{queue}-calls", task_queue=queue)
        assert await calls.result() == "HI"
        fails = await client.start_workflow(Fails.run, "x", id=f"{queue}-fails", task_queue=queue)
        with contextlib.suppress(WorkflowFailureError):
            await fails.result()
        for handle, label in ((calls, "calls"), (fails, "fails")):
            ids[handle.id] = f"<{label} id>"
            ids[handle.result_run_id or ""] = f"<{label} run>"
    for span in memory.get_finished_spans():
        activity_id = (span.attributes or {}).get("temporalActivityID")
        if isinstance(activity_id, str):
            ids.setdefault(activity_id, f"<activity {len(ids)}>")
    print(json.dumps(normalized(memory.get_finished_spans(), ids)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
    sys.stdout.flush()
    # Temporal's core runtime can abort while the interpreter tears its threads down.
    os._exit(0)
