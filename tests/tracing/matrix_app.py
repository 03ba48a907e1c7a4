"""A third-party agent app for the instrumentation matrix: stock packages only.

It imports nothing of Loomview (``tests/tracing/test_matrix.py`` checks), as a
user's own app would not. One workflow, ``matrix_support``, has everything a
real agent app has: a triage agent that calls a function tool, an activity
offered through ``activity_as_tool`` and an agent used as a tool (all three in
one turn), then hands off to a specialist whose first model call fails once
and is retried by Temporal; an update (``ask``) runs a second turn, and a
signal (``finish``) ends the run. The model is scripted and offline, with a
fixed usage per call, so the test knows every token the spans must report.

``python -m tests.tracing.matrix_app ROW ADDRESS ENDPOINT PREFIX`` runs the
workflow twice (with the SDK's default workflow cache and with
``max_cached_workflows=0``) on in-process workers, exports every span with the
real OTLP/HTTP exporter to ENDPOINT, and prints one JSON line per run:
``{"cache": ..., "workflow_id": ..., "run_id": ...}``.

Rows (each is one process: tracer providers and instrumentors are global):

- ``native``: ``OpenAIAgentsPlugin(use_otel_instrumentation=True)`` with the
  global provider from ``create_tracer_provider()``;
- ``native-quiet``: the same with ``add_temporal_spans=False``;
- ``native+otel``: ``native`` plus ``OpenTelemetryPlugin(add_temporal_spans=True)``;
- ``interceptor+openinference``: ``TracingInterceptor`` and OpenInference's
  ``OpenAIAgentsInstrumentor``;
- ``otel+openllmetry``: ``OpenTelemetryPlugin(add_temporal_spans=True)`` and
  OpenLLMetry's ``opentelemetry-instrumentation-openai-agents``;
- ``otel+genai``: the same with ``opentelemetry-instrumentation-openai-agents-v2``
  (GenAI semantic conventions; it shares its import name with OpenLLMetry's,
  so it lives apart and the caller puts it first on PYTHONPATH).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client, Plugin
from temporalio.common import RetryPolicy
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from agents import (
        Agent,
        AgentOutputSchemaBase,
        Handoff,
        Model,
        ModelProvider,
        ModelResponse,
        ModelSettings,
        ModelTracing,
        Runner,
        Tool,
        TResponseInputItem,
        Usage,
        function_tool,
    )
    from agents.items import TResponseStreamEvent
    from agents.tracing import response_span
    from openai.types.responses import (
        Response,
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
        ResponseUsage,
    )
    from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
    from temporalio.openai_agents import (
        ModelActivityParameters,
        OpenAIAgentsPlugin,
    )
    from temporalio.openai_agents import workflow as agents_workflow

ROWS = (
    "native",
    "native-quiet",
    "native+otel",
    "interceptor+openinference",
    "otel+openllmetry",
    "otel+genai",
)
WORKFLOW_TYPE = "matrix_support"
PROMPT = "Order A-1042 arrived broken; can I get a replacement?"
QUESTION = "And how long will the replacement take?"

# The script: which model calls a run makes, and the usage each reports.
# "specialist" fails on its first attempt once; the failed attempt reports no usage.
USAGE: dict[str, tuple[int, int]] = {
    "triage-tools": (120, 31),
    "researcher": (90, 22),
    "triage-handoff": (160, 9),
    "specialist": (210, 45),
    "specialist-update": (70, 18),
}
TRIAGE, SPECIALIST, RESEARCHER = "Triage agent", "Replacement specialist", "Research agent"
AGENTS = (TRIAGE, SPECIALIST, RESEARCHER)
TOOLS = ("lookup_order", "check_stock", "ask_research")
HANDOFF_TOOL = "transfer_to_replacement_specialist"


def _get(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


class ScriptedModel(Model):
    """An offline model that plays the script above for the agent it serves."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _turn(self, input: str | list[TResponseInputItem]) -> tuple[str, Any]:
        items: list[Any] = [] if isinstance(input, str) else list(input)
        called = {_get(i, "name") for i in items if _get(i, "type") == "function_call"}
        if self.name == "scripted-triage":
            if "lookup_order" not in called:
                calls = [
                    ("lookup_order", {"order_id": "A-1042"}),
                    ("check_stock", {"sku": "KETTLE-2"}),
                    ("ask_research", {"input": "replacement lead time for KETTLE-2"}),
                ]
                return "triage-tools", [
                    ResponseFunctionToolCall(
                        arguments=json.dumps(args),
                        call_id=f"call_{name}",
                        name=name,
                        type="function_call",
                        id=f"fc_{name}",
                        status="completed",
                    )
                    for name, args in calls
                ]
            return "triage-handoff", [
                ResponseFunctionToolCall(
                    arguments="{}",
                    call_id="call_handoff",
                    name=HANDOFF_TOOL,
                    type="function_call",
                    id="fc_handoff",
                    status="completed",
                )
            ]
        if self.name == "scripted-researcher":
            return "researcher", [_message("Lead time for KETTLE-2 is 3 days.")]
        if HANDOFF_TOOL not in called:
            return "specialist-update", [_message("The replacement ships in 3 days.")]
        return "specialist", [_message("A replacement for A-1042 is on its way.")]

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        **kwargs: Any,
    ) -> ModelResponse:
        # As the SDK's own OpenAIResponsesModel does: one response span per call,
        # carrying the API's Response object (its usage is what instrumentations read).
        step, output = self._turn(input)
        usage_in, usage_out = USAGE[step]
        with response_span(disabled=tracing.is_disabled()) as span:
            if tracing.include_data():
                span.span_data.input = input
            if step == "specialist" and activity.info().attempt == 1:
                raise RuntimeError("503 Service Unavailable: the model is overloaded")
            usage = ResponseUsage(
                input_tokens=usage_in,
                output_tokens=usage_out,
                total_tokens=usage_in + usage_out,
                input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
                output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
            )
            response = Response(
                id=f"resp_{step}",
                created_at=0,
                model=self.name,
                object="response",
                output=output,
                parallel_tool_calls=True,
                tool_choice="auto",
                tools=[],
                status="completed",
                usage=usage,
            )
            span.span_data.response = response
        return ModelResponse(
            output=output,
            usage=Usage(
                requests=1,
                input_tokens=usage_in,
                output_tokens=usage_out,
                total_tokens=usage_in + usage_out,
            ),
            response_id=response.id,
        )

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError


def _message(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id=f"msg_{abs(hash(text)) % 10**8}",
        content=[ResponseOutputText(text=text, annotations=[], type="output_text")],
        role="assistant",
        status="completed",
        type="message",
    )


class ScriptedProvider(ModelProvider):
    def get_model(self, model_name: str | None) -> Model:
        return ScriptedModel(model_name or "scripted-triage")


@function_tool
async def lookup_order(order_id: str) -> str:
    """Look up an order by its id."""
    return f"{order_id}: kettle KETTLE-2, delivered broken"


@activity.defn
async def check_stock(sku: str) -> str:
    """How many units of a product are in stock."""
    return f"{sku}: 14 in stock"


def specialist() -> Agent:
    return Agent(
        name=SPECIALIST,
        instructions="You arrange replacements for broken orders.",
        handoff_description="Arranges replacements for broken or missing orders.",
        model="scripted-specialist",
    )


def triage() -> Agent:
    researcher = Agent(
        name=RESEARCHER, instructions="You research lead times.", model="scripted-researcher"
    )
    return Agent(
        name=TRIAGE,
        instructions="You triage support requests.",
        model="scripted-triage",
        tools=[
            lookup_order,
            agents_workflow.activity_as_tool(
                check_stock, start_to_close_timeout=timedelta(seconds=10)
            ),
            researcher.as_tool(tool_name="ask_research", tool_description="Ask the researcher."),
        ],
        handoffs=[specialist()],
    )


@workflow.defn(name=WORKFLOW_TYPE)
class MatrixWorkflow:
    def __init__(self) -> None:
        self.answer: str | None = None
        self.note = ""

    @workflow.run
    async def run(self, prompt: str) -> str:
        result = await Runner.run(triage(), prompt)
        self.answer = str(result.final_output)
        await workflow.wait_condition(lambda: bool(self.note))
        return f"{self.answer} ({self.note})"

    @workflow.update
    async def ask(self, question: str) -> str:
        await workflow.wait_condition(lambda: self.answer is not None)
        result = await Runner.run(specialist(), question)
        return str(result.final_output)

    @workflow.signal
    def finish(self, note: str) -> None:
        self.note = note


def _model_params() -> ModelActivityParameters:
    return ModelActivityParameters(
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=RetryPolicy(
            initial_interval=timedelta(milliseconds=100), backoff_coefficient=1.0
        ),
    )


def setup(row: str, endpoint: str) -> tuple[Any, list[Plugin], list[Any]]:
    """The tracer provider, client plugins and client interceptors of a row."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from temporalio.contrib.opentelemetry import (
        OpenTelemetryPlugin,
        TracingInterceptor,
        create_tracer_provider,
    )

    resource = Resource.create({"service.name": f"matrix-{row}"})
    # TracingInterceptor works with any provider; the plugins want a replay-safe one.
    provider: Any = (
        TracerProvider(resource=resource)
        if row == "interceptor+openinference"
        else create_tracer_provider(resource=resource)
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=100)
    )
    trace.set_tracer_provider(provider)
    plugins: list[Plugin] = []
    interceptors: list[Any] = []
    native = row.startswith("native")
    if row == "native+otel" or row.startswith("otel+"):
        plugins.append(OpenTelemetryPlugin(add_temporal_spans=True))
    if row == "interceptor+openinference":
        from openinference.instrumentation.openai_agents import OpenAIAgentsInstrumentor

        OpenAIAgentsInstrumentor().instrument(tracer_provider=provider)
        interceptors.append(TracingInterceptor(provider.get_tracer("matrix-app")))
    elif row.startswith("otel+"):
        from opentelemetry.instrumentation.openai_agents import (
            OpenAIAgentsInstrumentor as GenAIInstrumentor,
        )

        GenAIInstrumentor().instrument(tracer_provider=provider)
    plugins.append(
        OpenAIAgentsPlugin(
            model_params=_model_params(),
            model_provider=ScriptedProvider(),
            use_otel_instrumentation=native,
            add_temporal_spans=row != "native-quiet",
        )
    )
    return provider, plugins, interceptors


async def run_once(client: Client, prefix: str, cache: str) -> dict[str, str]:
    task_queue = f"matrix-{uuid.uuid4().hex[:8]}"
    workflow_id = f"{prefix}-{cache}"
    options: dict[str, Any] = {"max_cached_workflows": 0} if cache == "nocache" else {}
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[MatrixWorkflow],
        activities=[check_stock],
        **options,
    ):
        handle = await client.start_workflow(
            MatrixWorkflow.run, PROMPT, id=workflow_id, task_queue=task_queue
        )
        await handle.execute_update(MatrixWorkflow.ask, QUESTION)
        await handle.signal(MatrixWorkflow.finish, "thanks")
        await handle.result()
    return {"cache": cache, "workflow_id": workflow_id, "run_id": handle.result_run_id or ""}


async def main(row: str, address: str, endpoint: str, prefix: str) -> None:
    if row not in ROWS:
        raise SystemExit(f"unknown row {row!r}; one of {', '.join(ROWS)}")
    provider, plugins, interceptors = setup(row, endpoint)
    client = await Client.connect(address, plugins=plugins, interceptors=interceptors)
    for cache in ("cached", "nocache"):
        print(json.dumps(await run_once(client, prefix, cache)), flush=True)
    provider.force_flush()
    provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
    sys.stdout.flush()
    # Everything is flushed; skip interpreter finalization, where the Temporal
    # core's threads sometimes abort the process (PyGILState_Release).
    os._exit(0)
