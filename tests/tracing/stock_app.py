"""An app instrumented only with stock parts: Temporal's TracingInterceptor and OpenInference.

Nothing of Loomview's ``tracing`` package is used, as a user's own app would not.
``python -m tests.tracing.stock_app ADDRESS ENDPOINT WORKFLOW_ID`` runs one
triage workflow with a worker in the same process, exports its spans over
OTLP/HTTP to ENDPOINT and exits.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.openai_agents import ModelActivityParameters, OpenAIAgentsPlugin
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from agents import Runner, trace

    from worker import agents as team


@workflow.defn(name="stock_triage")
class StockTriageWorkflow:
    @workflow.run
    async def run(self, prompt: str) -> str:
        with trace("Stock triage"):
            result = await Runner.run(team.triage_agents(), prompt)
        return str(result.final_output)


async def main(address: str, endpoint: str, workflow_id: str) -> None:
    from openinference.instrumentation.openai_agents import OpenAIAgentsInstrumentor
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from worker.providers import DemoModelProvider, InvocationLog

    provider = TracerProvider(resource=Resource.create({"service.name": "stock-app"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    OpenAIAgentsInstrumentor().instrument(tracer_provider=provider)
    agents_plugin = OpenAIAgentsPlugin(
        model_params=ModelActivityParameters(start_to_close_timeout=timedelta(seconds=30)),
        model_provider=DemoModelProvider(10, InvocationLog(None)),
    )
    client = await Client.connect(
        address,
        interceptors=[TracingInterceptor(provider.get_tracer("stock-app"))],
        plugins=[agents_plugin],
    )
    task_queue = f"stock-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=task_queue, workflows=[StockTriageWorkflow]):
        await client.execute_workflow(
            StockTriageWorkflow.run,
            "I was charged twice on invoice INV-4410, please refund it.",
            id=workflow_id,
            task_queue=task_queue,
        )
    provider.force_flush()
    provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
